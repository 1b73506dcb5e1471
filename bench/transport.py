"""What audio costs to move between services: float32 against 16-bit PCM, side by side.

    .venv/bin/python bench/transport.py [--minutes 60] [--repeat 5]

BentoML's client pickles numpy arguments to a runner, and each runner unpickles them; the
gateway sends the whole recording three times (plan, align, diarize) and every speech chunk once
more. For an hour of 16-kHz audio this prints each form's bytes per copy and the time to pickle +
unpickle one copy (median of --repeat), and, for PCM, the runner-side conversion to float32.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whisperx_service.audio import SAMPLE_RATE, pcm_to_float  # noqa: E402

COPIES_PER_REQUEST = 4  # plan, align, diarize, and the chunks (together about one more copy)


def _median_s(work: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(int(args.minutes * 60 * SAMPLE_RATE)) * 3000).clip(-32768, 32767).astype(np.int16)
    floats = pcm_to_float(pcm)
    rows = {}
    for name, array in (("float32", floats), ("int16", pcm)):
        rows[name] = {
            "mb_per_copy": round(array.nbytes / 1e6, 1),
            "pickle_roundtrip_s": round(_median_s(
                lambda a=array: pickle.loads(pickle.dumps(a, protocol=5)), args.repeat), 3),
        }
    rows["int16"]["to_float32_s"] = round(_median_s(lambda: pcm_to_float(pcm), args.repeat), 3)
    per_request = {name: round(COPIES_PER_REQUEST * row["mb_per_copy"], 1) for name, row in rows.items()}
    print(f"{args.minutes:.0f} min of audio   bytes/copy   pickle+unpickle   to float32")
    for name, row in rows.items():
        print(f"  {name:8s}        {row['mb_per_copy']:7.1f} MB   {row['pickle_roundtrip_s']:8.3f} s"
              f"   {row.get('to_float32_s', 0.0):8.3f} s")
    ratio = rows["int16"]["mb_per_copy"] / rows["float32"]["mb_per_copy"]
    print(f"  per request (~{COPIES_PER_REQUEST} copies): {per_request['float32']} MB -> {per_request['int16']} MB "
          f"({ratio:.2f}x the bytes)")
    print(json.dumps({"minutes": args.minutes, "rows": rows, "mb_per_request": per_request, "bytes_ratio": ratio}))


if __name__ == "__main__":
    main()
