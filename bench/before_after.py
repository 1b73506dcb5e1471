"""This tree's served graph against an earlier commit's, side by side, in one run.

    .venv/bin/python bench/before_after.py --before 2bc38b5

Both arms serve the embedded defaults from the same model store ($BENTOML_HOME) with the same
virtual environment; the "before" arm is `git archive` of the given commit in a temp dir. Each
arm is warmed with one clip, then measured on:
- the long recording: a composed six-speaker meeting plus the three shared 30-s clips (>= 5 min,
  bench/throughput.py's), end to end, and the diarize stage's own span (`timings`);
- 8 concurrent 30-s clips (sample, dev00, dev01 cycled): aggregate x-realtime.
Arms alternate (before, after, before, after) and each keeps its faster round, so a slow spell of
the machine does not land on one arm only. Ends with a JSON line of both arms and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import soundfile
from common import PROJECT, serve_graph, stop_tree
from throughput import CLIPS, long_recording

log = logging.getLogger("bench.before_after")


def checkout(ref: str, dest: Path) -> Path:
    """The tree of commit `ref`, unpacked at `dest`."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=PROJECT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


async def transcribe(client: httpx.AsyncClient, path: Path) -> dict[str, Any]:
    response = await client.post("/transcribe", files={"audio_file": (path.name, path.read_bytes())})
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def measure(url: str, long_path: Path) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        await transcribe(client, CLIPS[0])  # warm-up
        started = time.perf_counter()
        result = await transcribe(client, long_path)
        long_s = time.perf_counter() - started
        diarize = result["timings"]["diarize"]
        burst = [CLIPS[i % len(CLIPS)] for i in range(8)]
        started = time.perf_counter()
        await asyncio.gather(*(transcribe(client, p) for p in burst))
        burst_s = time.perf_counter() - started
    audio = sum(soundfile.info(str(p)).duration for p in burst)
    seconds = soundfile.info(str(long_path)).duration
    return {"long_s": round(long_s, 2), "long_diarize_s": round(diarize["end"] - diarize["start"], 2),
            "long_diarize_rtf": round((diarize["end"] - diarize["start"]) / seconds, 3),
            "long_speakers": result["diarization"]["num_speakers"],
            "c8_x_rt": round(audio / burst_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(tempfile.mkdtemp(prefix="bench-before-after-"))
    trees = {"before": checkout(args.before, work / "before"), "after": PROJECT}
    long_path = long_recording(work)
    best: dict[str, dict[str, float]] = {}
    for round_ in range(args.rounds):
        for arm, tree in trees.items():
            proc, url, _, memory = serve_graph({}, cwd=tree)
            try:
                got = asyncio.run(measure(url, long_path))
            finally:
                memory.stop_event.set()
                stop_tree(proc)
            log.info("round %d %s: %s", round_ + 1, arm, got)
            kept = best.get(arm)
            best[arm] = got if kept is None else {
                k: (max(v, got[k]) if k == "c8_x_rt" else v if k == "long_speakers" else min(v, got[k]))
                for k, v in kept.items()}
    before, after = best["before"], best["after"]
    ratios = {"long_e2e": round(after["long_s"] / before["long_s"], 3),
              "long_diarize": round(after["long_diarize_s"] / before["long_diarize_s"], 3),
              "c8_throughput": round(after["c8_x_rt"] / before["c8_x_rt"], 3)}
    log.info("%-22s %10s %10s %8s", "", "before", "after", "ratio")
    for key, ratio_key in (("long_s", "long_e2e"), ("long_diarize_s", "long_diarize"), ("c8_x_rt", "c8_throughput")):
        log.info("%-22s %10.2f %10.2f %8.3f", key, before[key], after[key], ratios[ratio_key])
    sys.stdout.write(json.dumps({"before": args.before, "arms": best, "ratios": ratios}) + "\n")


if __name__ == "__main__":
    main()
