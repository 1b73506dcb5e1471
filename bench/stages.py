"""Per-stage real-time factors and quality (WER/CER/DER) of the served graph, its time to ready
and its peak memory.

    .venv/bin/python bench/stages.py [--asr-model whisper-base] [--repeat 2]

Starts `bentoml serve service:Gateway` on a free port, sends each shared recording (and the
composed meeting) one at a time, and reads the stage timings the response carries. Prints a
table and one JSON line. RTF here = stage seconds / audio seconds (lower is faster).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import serve_graph, stop_tree  # bench/ is on sys.path when run as a script

from tests.composed import compose_meeting
from tests.data import (
    AISHELL_DIR,
    AMI_DIR,
    AMI_RTTM,
    AMI_UEM,
    JFK_FLAC,
    JFK_REFERENCE,
    PYANNOTE_SAMPLE,
    PYANNOTE_SAMPLE_RTTM,
    aishell_references,
    character_error_rate,
    diarization_error_rate,
    load_rttm,
    load_uem,
    word_error_rate,
)

log = logging.getLogger("bench.stages")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--asr-model", default="whisper-base")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    meeting_dir = Path(tempfile.mkdtemp(prefix="bench-meeting-"))
    meeting, meeting_rttm = compose_meeting(meeting_dir)
    zh_refs = aishell_references()
    files = [JFK_FLAC, *(AISHELL_DIR / f"{utt}.wav" for utt in zh_refs), PYANNOTE_SAMPLE,
             AMI_DIR / "dev00.wav", AMI_DIR / "dev01.wav", meeting]

    def quality(path: Path, body: dict[str, Any]) -> dict[str, float]:
        """WER / CER / DER of one response against the recording's reference."""
        turns = [(t["start"], t["end"], t["speaker"]) for t in body["diarization"]["speaker_turns"]]
        if path == JFK_FLAC:
            return {"wer": word_error_rate(JFK_REFERENCE.read_text(), " ".join(x["text"] for x in body["segments"]))}
        if path.stem in zh_refs:
            return {"cer": character_error_rate(zh_refs[path.stem], "".join(x["text"] for x in body["segments"]))}
        if path == PYANNOTE_SAMPLE:
            return {"der": diarization_error_rate(load_rttm(PYANNOTE_SAMPLE_RTTM), turns)}
        if path == meeting:
            return {"der": diarization_error_rate(load_rttm(meeting_rttm), turns)}
        return {"der": diarization_error_rate(load_rttm(AMI_RTTM, path.stem), turns, load_uem(AMI_UEM, path.stem))}

    proc, url, ready_s, memory = serve_graph({"WXS_ASR_MODEL": args.asr_model})
    try:
        rows = []
        with httpx.Client(base_url=url, timeout=1800) as client:
            t0 = time.monotonic()  # the first request after ready: is anything still cold?
            client.post("/transcribe", files={"audio_file": (JFK_FLAC.name, JFK_FLAC.read_bytes())}).raise_for_status()
            first_s = time.monotonic() - t0
            for _ in range(args.repeat):
                for path in files:
                    t0 = time.monotonic()
                    with path.open("rb") as fh:
                        r = client.post("/transcribe", files={"audio_file": (path.name, fh)})
                    wall = time.monotonic() - t0
                    r.raise_for_status()
                    body = r.json()
                    dur = body["duration"]
                    stage = {k: v["end"] - v["start"] for k, v in body["timings"].items()}
                    scores = {k: round(v, 3) for k, v in quality(path, body).items()}
                    rows.append({"file": path.name, "audio_s": dur, "wall_s": round(wall, 2), **scores,
                                 "speakers": body["diarization"]["num_speakers"],
                                 "rtf_total": round(wall / dur, 3),
                                 **{f"rtf_{k}": round(v / dur, 3) for k, v in stage.items()}})
    finally:
        memory.stop_event.set()
        stop_tree(proc)

    keys = ["file", "audio_s", "wall_s", "rtf_total", "rtf_decode", "rtf_asr", "rtf_diarize", "rtf_align",
            "wer", "cer", "der", "speakers"]
    log.info(" | ".join(keys))
    for row in rows:
        log.info(" | ".join(str(row.get(k, "-")) for k in keys))
    total_audio = sum(r["audio_s"] for r in rows)
    total_wall = sum(r["wall_s"] for r in rows)
    asr_x_realtime = total_audio / sum(r["rtf_asr"] * r["audio_s"] for r in rows)
    warm_first = next(r["wall_s"] for r in rows if r["file"] == JFK_FLAC.name)
    summary = {"asr_model": args.asr_model, "ready_s": round(ready_s, 1),
               "first_request_s": round(first_s, 2), "same_request_warm_s": warm_first,
               "peak_rss_mib": round(memory.peak_mib),
               "peak_rss_by_process_mib": {k: round(v) for k, v in sorted(memory.peak_by_process_mib.items())},
               "audio_s": round(total_audio, 1), "wall_s": round(total_wall, 1),
               "x_realtime": round(total_audio / total_wall, 2), "asr_x_realtime": round(asr_x_realtime, 2),
               "rows": rows}
    log.info("ready in %.1f s; first request (JFK) %.2f s, the same warm %.2f s; peak RSS %.0f MiB (%s)",
             ready_s, first_s, warm_first, memory.peak_mib, ", ".join(
                 f"{k} {v:.0f}" for k, v in sorted(memory.peak_by_process_mib.items())))
    log.info("%.1fx realtime overall, ASR %.1fx realtime over all files", total_audio / total_wall, asr_x_realtime)
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
