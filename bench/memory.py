"""Memory per second of audio in flight: the constant behind the audio-seconds admission budget.

    .venv/bin/python bench/memory.py [--lengths 120,600] [--asr-model whisper-base]

Serves the graph, warms it with one short request, then sends recordings of each length (the
shared clips repeated, with the diarization a real meeting needs) one at a time, sampling the
whole tree's RSS. The cost of an audio second is the slope of (peak - idle) over the lengths; the
service's default budget (`WXS_MAX_AUDIO_IN_FLIGHT_S` unset) divides half the free memory by it.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from common import serve_graph, stop_tree  # bench/ is on sys.path when run as a script

from tests.data import AMI_DIR, JFK_FLAC, PYANNOTE_SAMPLE

log = logging.getLogger("bench.memory")


def recording(directory: Path, seconds: float) -> Path:
    """The 30-s shared clips, one after another, until `seconds` (16-kHz PCM WAV)."""
    clips = [sf.read(str(p), dtype="float32")[0] for p in (PYANNOTE_SAMPLE, AMI_DIR / "dev00.wav",
                                                            AMI_DIR / "dev01.wav")]
    pieces, total, i = [], 0, 0
    while total < seconds * 16000:
        clip = clips[i % len(clips)]
        pieces.append(0.5 * clip / float(np.max(np.abs(clip))))
        total += clip.shape[0]
        i += 1
    path = directory / f"rec-{int(seconds)}.wav"
    sf.write(str(path), np.concatenate(pieces)[: int(seconds * 16000)], 16000, subtype="PCM_16")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="120,600")
    parser.add_argument("--asr-model", default="whisper-base")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lengths = [float(x) for x in args.lengths.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    proc, url, ready_s, memory = serve_graph({"WXS_ASR_MODEL": args.asr_model,
                                              "WXS_MAX_AUDIO_SECONDS": str(max(lengths) + 60)})
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=3600) as http:
            with JFK_FLAC.open("rb") as fh:  # warm every runner once
                http.post("/transcribe", files={"audio_file": ("jfk.flac", fh)}).raise_for_status()
            time.sleep(2)
            idle = memory.peak_mib = memory.current_mib()
            for seconds in lengths:
                path = recording(workdir, seconds)
                memory.peak_mib = memory.current_mib()
                started = time.monotonic()
                with path.open("rb") as fh:
                    http.post("/transcribe", files={"audio_file": (path.name, fh)}).raise_for_status()
                rows.append({"seconds": seconds, "peak_mib": round(memory.peak_mib, 1),
                             "over_idle_mib": round(memory.peak_mib - idle, 1),
                             "wall_s": round(time.monotonic() - started, 1)})
                log.info("%6.0f s of audio: peak %.0f MiB (idle %.0f), %.1f s", seconds, memory.peak_mib, idle,
                         rows[-1]["wall_s"])
    finally:
        memory.stop_event.set()
        stop_tree(proc)
    if len(rows) >= 2:
        slope = (rows[-1]["over_idle_mib"] - rows[0]["over_idle_mib"]) / (rows[-1]["seconds"] - rows[0]["seconds"])
    else:
        slope = rows[0]["over_idle_mib"] / rows[0]["seconds"]
    log.info("idle %.0f MiB; cost per audio second %.3f MiB (%d bytes)", idle, slope, int(slope * 2**20))
    print(json.dumps({"idle_mib": round(idle, 1), "rows": rows, "mib_per_audio_second": round(slope, 4),
                      "bytes_per_audio_second": int(slope * 2**20), "ready_s": round(ready_s, 1)}))


if __name__ == "__main__":
    main()
