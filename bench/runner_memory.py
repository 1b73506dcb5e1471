"""Does a long-running graph grow? Each runner's memory over rounds of concurrent requests.

    .venv/bin/python bench/runner_memory.py                 # 8 rounds of 8 concurrent clips
    .venv/bin/python bench/runner_memory.py --device cuda   # also each process's GPU memory
    .venv/bin/python bench/runner_memory.py --light --rounds 5 --per-round 300 --before 6ad29b4

Serves the graph on a fresh model store (faster-whisper base, the base-size random English aligner
and the default diarizer, as bench/throughput.py), sends one warm-up round, then `--rounds` rounds
of `--per-round` diarized requests, `--concurrency` at a time (the three shared 30-s clips and JFK,
cycled). After each round, once the graph is idle, it reads each process's resident memory and, on
CUDA, the GPU memory nvidia-smi reports for it. A runner that keeps per-request buffers grows round
after round; one that frees them stays flat after the first rounds (allocator caches fill once).

--light: tiny.en on JFK without diarization, so that thousands of calls fit in minutes and what the
serving layer keeps per call shows. --before REF: the same run first on that commit's tree (`git
archive`), then on this one. Prints a table per arm, the growth per round and per request over the
second half of the rounds, and a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from before_after import checkout
from common import PROJECT, by_role, cpu_by_role, rss_by_role, serve_graph, stop_tree
from throughput import CLIPS, Arms, prepare_store

from tests.data import JFK_FLAC

log = logging.getLogger("bench.runner_memory")
RECORDINGS = [*CLIPS, JFK_FLAC]


def gpu_by_role(root: int) -> dict[str, float]:
    """GPU MiB nvidia-smi reports for each process of the tree (empty without nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    listed = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                            capture_output=True, text=True, check=False).stdout
    used = {int(pid): float(mib) for pid, mib in (line.split(",") for line in listed.splitlines() if "," in line)}
    return {role: mib for role, mib in by_role(root, lambda proc: used.get(proc.pid, 0.0)).items() if mib > 0}


def wait_idle(root: int, deadline_s: float = 30.0) -> None:
    """Until the tree uses under 5% of a core over half a second (a round's tail finishes)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        before = sum(cpu_by_role(root).values())
        time.sleep(0.5)
        if sum(cpu_by_role(root).values()) - before < 0.025:
            return


def slope(values: list[float]) -> float:
    """Least-squares MiB per round."""
    if len(values) < 2:
        return 0.0
    return float(np.polyfit(np.arange(len(values)), values, 1)[0])


async def burst(url: str, paths: list[Path], concurrency: int, form: dict[str, str]) -> float:
    """Send every recording of `paths`, `concurrency` at a time; the wall time of the whole round."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        async def one(path: Path) -> None:
            async with limit:
                r = await client.post("/transcribe", files={"audio_file": (path.name, path.read_bytes())}, data=form)
                r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(p) for p in paths))
        return time.perf_counter() - started


def run_arm(project: Path, env: dict[str, str], paths: list[Path], rounds: int, concurrency: int,
            form: dict[str, str]) -> list[dict[str, dict[str, float]]]:
    """Serve `project`'s graph; memory per process after the warm-up round and after each round."""
    proc, url, _, memory = serve_graph(env, cwd=project)
    rows: list[dict[str, dict[str, float]]] = []
    try:
        asyncio.run(burst(url, paths[:concurrency], concurrency, form))  # every model loaded, allocators primed
        wait_idle(proc.pid)
        rows.append({"rss": rss_by_role(proc.pid), "gpu": gpu_by_role(proc.pid)})
        for number in range(1, rounds + 1):
            wall = asyncio.run(burst(url, paths, concurrency, form))
            wait_idle(proc.pid)
            rows.append({"rss": rss_by_role(proc.pid), "gpu": gpu_by_role(proc.pid)})
            log.info("round %d: %.1f s; RSS %s", number, wall,
                     ", ".join(f"{r} {m:.0f}" for r, m in sorted(rows[-1]["rss"].items())))
    finally:
        memory.stop_event.set()
        stop_tree(proc)
    return rows


def summarize(rows: list[dict[str, dict[str, float]]], per_round: int) -> dict[str, dict[str, dict[str, float]]]:
    roles = sorted(set().union(*(row["rss"] for row in rows)))
    half = rows[len(rows) // 2:]
    summary: dict[str, dict[str, dict[str, float]]] = {"rss": {}, "gpu": {}}
    log.info("%-14s %13s %10s %8s %12s %12s", "process", "after warm-up", "last", "peak", "MiB/round", "KiB/request")
    for kind in ("rss", "gpu"):
        for role in roles:
            series = [row[kind].get(role, 0.0) for row in rows]
            if not any(series):
                continue
            late = slope([row[kind].get(role, 0.0) for row in half])
            summary[kind][role] = {"after_warm_up": round(series[0]), "last": round(series[-1]),
                                   "peak": round(max(series)), "mib_per_round_late": round(late, 2),
                                   "kib_per_request_late": round(late * 1024 / per_round, 2)}
            log.info("%-14s %13.0f %10.0f %8.0f %12.2f %12.2f", f"{role} {kind}", series[0], series[-1],
                     max(series), late, late * 1024 / per_round)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--per-round", type=int, help="requests per round (default: --concurrency)")
    parser.add_argument("--light", action="store_true", help="tiny.en on JFK, no diarization")
    parser.add_argument("--before", help="also run this commit's tree first, with the same settings")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--store-from", type=Path, action="append", default=[],
                        help="copy the default models from this BentoML home instead of their wheels")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    per_round = args.per_round or args.concurrency

    scratch = Path(tempfile.mkdtemp(prefix="bench-runner-memory-"))
    home = scratch / "bentoml"
    log.info("preparing a fresh model store in %s", home)
    arms = Arms(device=args.device, whisper="whisper-tiny-en" if args.light else "whisper-base")
    # --light: no aligner (words timed by Whisper), so what is measured is the serving layer
    prepare_store(home, args.store_from, whisper=arms.whisper, aligner=not args.light)
    recordings = [JFK_FLAC] if args.light else RECORDINGS
    paths = [recordings[i % len(recordings)] for i in range(per_round)]
    form = {"diarize": "false"} if args.light else {}
    # Admission wide open: a client refilling its slot may arrive before the gateway freed it.
    env = arms.served_env(home, 4 * args.concurrency)
    trees = {"before": checkout(args.before, scratch / "before")} if args.before else {}
    trees["this tree"] = PROJECT
    result: dict[str, object] = {"rounds": args.rounds, "per_round": per_round, "concurrency": args.concurrency,
                                 "light": args.light, "device": args.device, "before": args.before}
    for arm, project in trees.items():
        log.info("== %s (%s)", arm, project)
        rows = run_arm(project, env, paths, args.rounds, args.concurrency, form)
        result[arm] = summarize(rows, per_round)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
