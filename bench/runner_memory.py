"""Does a long-running graph grow? Each runner's memory over rounds of concurrent requests.

    .venv/bin/python bench/runner_memory.py                 # 8 rounds of 8 concurrent clips
    .venv/bin/python bench/runner_memory.py --device cuda   # also each process's GPU memory

Serves the graph on a fresh model store (faster-whisper base, the base-size random English aligner
and the default diarizer, as bench/throughput.py), sends one warm-up round, then `--rounds` rounds
of `--concurrency` diarized requests (the three shared 30-s clips and JFK, cycled). After each
round, once the graph is idle, it reads each process's resident memory and, on CUDA, the GPU
memory nvidia-smi reports for it. A runner that keeps per-request buffers grows round after round;
one that frees them stays flat after the first rounds (allocator caches fill once). Prints a table,
the growth per round over the second half of the rounds, and a JSON line.
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

import numpy as np
from common import by_role, cpu_by_role, rss_by_role, serve_graph, stop_tree
from throughput import CLIPS, Arms, fire, prepare_store

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--store-from", type=Path, action="append", default=[],
                        help="copy the default models from this BentoML home instead of their wheels")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    home = Path(tempfile.mkdtemp(prefix="bench-runner-memory-")) / "bentoml"
    log.info("preparing a fresh model store in %s", home)
    prepare_store(home, args.store_from)
    arms = Arms(device=args.device)
    proc, url, _, memory = serve_graph(arms.served_env(home, args.concurrency))
    paths = [RECORDINGS[i % len(RECORDINGS)] for i in range(args.concurrency)]
    rows: list[dict[str, dict[str, float]]] = []
    try:
        asyncio.run(fire(url, paths, None))  # warm-up: every model loaded, allocators primed
        wait_idle(proc.pid)
        rows.append({"rss": rss_by_role(proc.pid), "gpu": gpu_by_role(proc.pid)})
        for number in range(1, args.rounds + 1):
            _, wall = asyncio.run(fire(url, paths, None))
            wait_idle(proc.pid)
            rows.append({"rss": rss_by_role(proc.pid), "gpu": gpu_by_role(proc.pid)})
            log.info("round %d: %.1f s; RSS %s", number, wall,
                     ", ".join(f"{r} {m:.0f}" for r, m in sorted(rows[-1]["rss"].items())))
    finally:
        memory.stop_event.set()
        stop_tree(proc)

    roles = sorted(set().union(*(row["rss"] for row in rows)))
    half = rows[len(rows) // 2:]
    summary: dict[str, dict[str, dict[str, float]]] = {"rss": {}, "gpu": {}}
    log.info("%-10s %12s %12s %12s %18s", "process", "after warm-up", "last round", "peak", "MiB/round (2nd half)")
    for kind in ("rss", "gpu"):
        for role in roles:
            series = [row[kind].get(role, 0.0) for row in rows]
            if not any(series):
                continue
            late = [row[kind].get(role, 0.0) for row in half]
            summary[kind][role] = {"after_warm_up": round(series[0]), "last": round(series[-1]),
                                   "peak": round(max(series)), "mib_per_round_late": round(slope(late), 2)}
            log.info("%-10s %12.0f %12.0f %12.0f %18.2f", f"{role} {kind}", series[0], series[-1], max(series),
                     slope(late))
    sys.stdout.write(json.dumps({"rounds": args.rounds, "concurrency": args.concurrency, "device": args.device,
                                 "requests": args.rounds * args.concurrency, **summary}) + "\n")


if __name__ == "__main__":
    main()
