"""How soon a streamed answer starts: time to the first text delta against time to the whole
result, on the >= 5-min recording of bench/throughput.py, through the served graph.

    .venv/bin/python bench/streaming.py

One warm-up clip, then the recording sent with stream=true (diarized_json: deltas, segments,
done). Prints the seconds to the first delta, to the last delta, to done, and the ratio
first/done, and a JSON line.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import httpx
import soundfile
from common import serve_graph, stop_tree
from throughput import CLIPS, long_recording

log = logging.getLogger("bench.streaming")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = long_recording(Path(tempfile.mkdtemp(prefix="bench-streaming-")))
    proc, url, _, memory = serve_graph({})
    try:
        with httpx.Client(base_url=url, timeout=3600) as client:
            client.post("/transcribe", files={"audio_file": (CLIPS[0].name, CLIPS[0].read_bytes())}).raise_for_status()
            marks: dict[str, float] = {}
            started = time.perf_counter()
            with client.stream("POST", "/v1/audio/transcriptions",
                               files={"file": (path.name, path.read_bytes(), "audio/wav")},
                               data={"model": "whisper-1", "response_format": "diarized_json", "stream": "true"},
                               ) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    kind = json.loads(line[len("data: "):])["type"]
                    now = time.perf_counter() - started
                    marks.setdefault(f"first {kind}", now)
                    marks[f"last {kind}"] = now
    finally:
        memory.stop_event.set()
        stop_tree(proc)
    seconds = soundfile.info(str(path)).duration
    first, done = marks["first transcript.text.delta"], marks["last transcript.text.done"]
    for name, value in sorted(marks.items(), key=lambda kv: kv[1]):
        log.info("%-36s %7.2f s", name, value)
    log.info("recording %.1f s: first delta after %.2f s, whole result after %.2f s (ratio %.3f)",
             seconds, first, done, first / done)
    sys.stdout.write(json.dumps({"recording_s": seconds, "marks": marks, "first_over_done": round(first / done, 3)}) + "\n")


if __name__ == "__main__":
    main()
