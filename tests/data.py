"""Where the shared real recordings live, and how to score results against their references."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import jiwer

PROJECT = Path(__file__).resolve().parents[1]
# The shared recordings beside the project; WXS_SHARED_DATA: a copy elsewhere (bench/gpu.sh carries one).
SHARED_DATA = Path(os.environ.get("WXS_SHARED_DATA", PROJECT.parent / "shared" / "data"))
JFK_FLAC = SHARED_DATA / "en_jfk" / "jfk.flac"
JFK_REFERENCE = SHARED_DATA / "en_jfk" / "reference.txt"
AISHELL_DIR = SHARED_DATA / "zh_aishell1_test_S0764"
PYANNOTE_SAMPLE = SHARED_DATA / "multi_pyannote_sample" / "sample.wav"
PYANNOTE_SAMPLE_RTTM = SHARED_DATA / "multi_pyannote_sample" / "sample.rttm"
AMI_DIR = SHARED_DATA / "multi_ami_dev"
AMI_RTTM = AMI_DIR / "debug.development.rttm"
AMI_UEM = AMI_DIR / "debug.development.uem"


def normalize_words(text: str) -> str:
    text = text.lower().replace("—", " ")
    text = re.sub(r"[^\w\s']", " ", text)
    return " ".join(text.split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalize_words(reference), normalize_words(hypothesis)))


def character_error_rate(reference: str, hypothesis: str) -> float:
    strip = re.compile(r"[\s\W_]+", re.UNICODE)
    return float(jiwer.cer(strip.sub("", reference), strip.sub("", hypothesis)))


def aishell_references() -> dict[str, str]:
    """utterance id -> transcript (reference.txt lines: `<id> <text>`)."""
    refs: dict[str, str] = {}
    for line in (AISHELL_DIR / "reference.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            utt, text = line.split(maxsplit=1)
            refs[utt] = text.replace(" ", "")
    return refs


def load_rttm(path: Path, file_id: str | None = None) -> list[tuple[float, float, str]]:
    turns = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[0] == "SPEAKER" and (file_id is None or parts[1] == file_id):
            start, dur = float(parts[3]), float(parts[4])
            turns.append((start, start + dur, parts[7]))
    return turns


def load_uem(path: Path, file_id: str) -> tuple[float, float] | None:
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == file_id:
            return float(parts[2]), float(parts[3])
    return None


def diarization_error_rate(
    reference: list[tuple[float, float, str]],
    hypothesis: list[tuple[float, float, str]],
    uem: tuple[float, float] | None = None,
) -> float:
    """pyannote.metrics DER, collar 0.25 s, optimal speaker mapping."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = Annotation(), Annotation()
    for i, (s, e, spk) in enumerate(reference):
        ref[Segment(s, e), i] = spk
    for i, (s, e, spk) in enumerate(hypothesis):
        hyp[Segment(s, e), i] = spk
    metric = DiarizationErrorRate(collar=0.25)
    kwargs = {"uem": Timeline([Segment(*uem)])} if uem else {}
    return float(metric(ref, hyp, **kwargs))


def truncated_mp3(directory: Path) -> Path:
    """JFK encoded as MP3 by ffmpeg, cut to its first third: a broken upload of real audio."""
    mp3 = directory / "jfk.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(JFK_FLAC), str(mp3)], check=True)
    truncated = directory / "truncated.mp3"
    truncated.write_bytes(mp3.read_bytes()[: mp3.stat().st_size // 3])
    return truncated
