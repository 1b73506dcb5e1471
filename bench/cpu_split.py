"""Where the CPU goes under a burst of concurrent requests, per served process, side by side.

    .venv/bin/python bench/cpu_split.py                            # the graph as configured
    .venv/bin/python bench/cpu_split.py --arm spin= --arm passive=OMP_WAIT_POLICY=PASSIVE

Each arm serves the graph (its extra environment as NAME=VALUE pairs, comma-separated), warms it
with one clip, then sends `--concurrency` 30-s clips (sample, dev00, dev01 cycled) at once and
reads each process's CPU seconds (user + system) over the burst. Arms alternate over `--rounds`
and each keeps its fastest burst. Prints CPU seconds per process and per audio second, the wall
time, and a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import httpx
import soundfile
from common import cpu_by_role, serve_graph, stop_tree
from throughput import CLIPS

log = logging.getLogger("bench.cpu_split")


def measure(env: dict[str, str], paths: list[Path]) -> dict[str, float]:
    proc, url, _, memory = serve_graph(env)
    try:
        before: dict[str, float] = {}

        async def run() -> float:
            nonlocal before
            async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
                r = await client.post("/transcribe", files={"audio_file": (CLIPS[0].name, CLIPS[0].read_bytes())})
                r.raise_for_status()
            before = cpu_by_role(proc.pid)
            started = time.perf_counter()
            async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
                async def one(path: Path) -> None:
                    resp = await client.post("/transcribe", files={"audio_file": (path.name, path.read_bytes())})
                    resp.raise_for_status()
                await asyncio.gather(*(one(p) for p in paths))
            return time.perf_counter() - started

        wall = asyncio.run(run())
        after = cpu_by_role(proc.pid)
    finally:
        memory.stop_event.set()
        stop_tree(proc)
    got = {role: round(after[role] - before.get(role, 0.0), 2) for role in after if role not in ("gone", "?")}
    got["wall_s"] = round(wall, 2)
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", action="append", default=[],
                        help="NAME=VAR=VALUE[,VAR=VALUE]: an arm and its extra environment (default: one arm)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    arms: dict[str, dict[str, str]] = {}
    for spec in args.arm or ["graph="]:
        name, _, pairs = spec.partition("=")
        arms[name] = dict(p.split("=", 1) for p in pairs.split(",") if p)
    paths = [CLIPS[i % len(CLIPS)] for i in range(args.concurrency)]
    audio = sum(soundfile.info(str(p)).duration for p in paths)
    best: dict[str, dict[str, float]] = {}
    for round_ in range(args.rounds):
        for name, env in arms.items():
            got = measure(env, paths)
            log.info("round %d %s: %s", round_ + 1, name, got)
            if name not in best or got["wall_s"] < best[name]["wall_s"]:
                best[name] = got
    roles = sorted({r for got in best.values() for r in got if r != "wall_s"})
    log.info("%-16s" + " %12s" * len(best), "CPU-s per burst", *best)
    for role in [*roles, "wall_s"]:
        log.info("%-16s" + " %12.2f" * len(best), role, *(best[a].get(role, 0.0) for a in best))
    log.info("%-16s" + " %12.2f" * len(best), "x realtime", *(audio / best[a]["wall_s"] for a in best))
    sys.stdout.write(json.dumps({"audio_s": audio, "arms": best}) + "\n")


if __name__ == "__main__":
    main()
