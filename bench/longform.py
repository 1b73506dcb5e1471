"""Long composed meetings against the same clips transcribed alone, before and after the
long-form rules (language voted over the recording, short chunks decoded again), side by side.

    .venv/bin/python bench/longform.py [--model whisper-base] [--only noisy_open_en]

The pipeline runs in process over the real Whisper model and whisperx's VAD (no diarization, no
alignment: the embedded defaults time words with Whisper). "before" is the old rule set (the
language Whisper detects on the first speech chunk, for the whole file; no re-decoding), "after"
the defaults, "after/per_segment" with language_mode=per_segment. Prints, per composition: language (and its
probability), word recall of the English clips and character recall of the Mandarin ones against
the same clips transcribed alone, warnings, decode seconds; then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bentoml  # noqa: E402

from tests.longform import Clip, Composition, compositions, hits, placed_recall  # noqa: E402
from whisperx_service.config import Settings  # noqa: E402
from whisperx_service.params import PER_SEGMENT, RECORDING, TranscribeParams  # noqa: E402
from whisperx_service.pipeline import Pipeline, PipelineLimits  # noqa: E402
from whisperx_service.schema import AsrPlan, ChunkJob, TimeSpan, TranscriptionResponse  # noqa: E402
from whisperx_service.whisper import WhisperDecoder  # noqa: E402

RATE = 16_000
log = logging.getLogger("bench.longform")


class LocalASR:
    """The ASR runner's API over a WhisperDecoder in this process (one call at a time)."""

    def __init__(self, decoder: WhisperDecoder) -> None:
        self.decoder = decoder
        self.lock = threading.Lock()

    def _locked(self, fn: Any, *args: Any) -> Any:
        with self.lock:
            return fn(*args)

    async def plan(self, *, audio: np.ndarray, request_id: str | None = None) -> AsrPlan:
        chunks, pieces = await asyncio.to_thread(self._locked, self.decoder.speech_plan, audio)
        return AsrPlan(chunks=chunks, pieces=pieces, multilingual=not self.decoder.english_only,
                       model=self.decoder.model_tag)

    async def decode(self, jobs: list[ChunkJob]) -> Any:
        return await asyncio.to_thread(self._locked, self.decoder.decode, jobs)

    async def detect_language(self, *, audio: np.ndarray, top_k: int = 5) -> Any:
        return await asyncio.to_thread(self._locked, self.decoder.detect_language, audio, top_k)


class NoAligner:
    async def languages(self) -> list[str]:
        return []

    async def align(self, jobs: list[Any]) -> Any:
        raise AssertionError("not used")


class NoDiarizer:
    async def diarize(self, *, audio: np.ndarray, speakers: Any, speech: list[TimeSpan] | None = None,
                      request_id: str | None = None) -> Any:
        raise AssertionError("not used")


def pcm(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


def transcribe(asr: LocalASR, audio: np.ndarray, limits: PipelineLimits, mode: str = RECORDING,
               language: str | None = None) -> tuple[TranscriptionResponse, float]:
    pipeline = Pipeline(asr, NoAligner(), NoDiarizer(), limits)
    started = time.perf_counter()
    params = TranscribeParams(diarize=False, language=language, language_mode=mode)
    response = asyncio.run(pipeline.run(pcm(audio), params, request_id="bench"))
    return response, time.perf_counter() - started


def first_chunk_language(asr: LocalASR, audio: np.ndarray) -> str:
    """The old rule: the language Whisper detects on the first speech chunk, for the whole file."""
    chunks, _ = asr.decoder.speech_plan(pcm(audio))
    first = chunks[0]
    return asr.decoder.detect_language(pcm(audio[int(first.start * RATE):int(first.end * RATE)])).language


def words_of(response: TranscriptionResponse) -> list[tuple[str, float, float]]:
    return [(w.word, w.start or 0.0, w.end or 0.0) for w in response.word_segments]


def alone(asr: LocalASR, clip: Clip) -> tuple[int, int]:
    response, _ = transcribe(asr, clip.audio, PipelineLimits())
    return hits(clip.text or "", " ".join(w for w, _, _ in words_of(response)), clip.language)


def recall_alone(comp: Composition, cache: dict[str, tuple[int, int]], language: str) -> tuple[int, int]:
    found = total = 0
    for p in comp.placed:
        if p.clip.text is not None and p.clip.language == language:
            h, n = cache[p.clip.name]
            found, total = found + h, total + n
    return found, total


def share(pair: tuple[int, int]) -> float | None:
    return round(pair[0] / pair[1], 3) if pair[1] else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--arms", nargs="*", default=None, help="before, after, after/per_segment (default: all)")
    parser.add_argument("--out", default=None, help="write every response as JSON into this folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = Settings(asr_model=args.model)
    stored = bentoml.models.get(settings.asr_model)
    asr = LocalASR(WhisperDecoder(stored.path, str(stored.tag), settings))
    comps = compositions()
    names = args.only or list(comps)
    cache: dict[str, tuple[int, int]] = {}
    for name in names:
        for p in comps[name].placed:
            if p.clip.text is not None and p.clip.name not in cache:
                cache[p.clip.name] = alone(asr, p.clip)
    print(f"clips alone: {json.dumps({k: share(v) for k, v in cache.items()})}")
    arms = {"before": (PipelineLimits(redecode_suspect_chunks=False), RECORDING),
            "after": (PipelineLimits(), RECORDING), "after/per_segment": (PipelineLimits(), PER_SEGMENT)}
    rows = []
    header = f"{'composition':<15} {'min':>4} {'arm':<18} {'lang':<10} {'en recall':>15} {'zh recall':>15} {'warn':>4} {'s':>6}"
    print(header)
    for name in names:
        comp = comps[name]
        en_alone, zh_alone = share(recall_alone(comp, cache, "en")), share(recall_alone(comp, cache, "zh"))
        for arm, (limits, mode) in arms.items():
            if args.arms and arm not in args.arms:
                continue
            given = first_chunk_language(asr, comp.audio) if arm == "before" else None
            response, seconds = transcribe(asr, comp.audio, limits, mode, given)
            words = words_of(response)
            en, zh = share(placed_recall(comp, words, "en")), share(placed_recall(comp, words, "zh"))
            row = {"composition": name, "minutes": round(comp.duration / 60, 2), "arm": arm,
                   "language": response.language, "probability": response.language_probability,
                   "en_recall": en, "en_recall_alone": en_alone, "zh_recall": zh, "zh_recall_alone": zh_alone,
                   "warnings": [(w.start, w.end) for w in response.warnings], "seconds": round(seconds, 1)}
            rows.append(row)
            print(f"{name:<15} {comp.duration / 60:>4.1f} {arm:<18} {response.language:<3}"
                  f"{(response.language_probability or 0):>6.2f} {en!s:>7} /{en_alone!s:>6} {zh!s:>7} /{zh_alone!s:>6}"
                  f" {len(response.warnings):>4} {seconds:>6.1f}", flush=True)
            if args.out:
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{name}.{arm.replace('/', '_')}.json").write_text(response.model_dump_json(indent=1))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
