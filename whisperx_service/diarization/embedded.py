"""The embedded default pipeline directory's format: what `models.diarization_dir` writes into
``pipeline.yaml`` and `pyannote_backend` reads back (the hyper-parameters are also its fallbacks)."""

from __future__ import annotations

from typing import Any

PIPELINE_YAML = "pipeline.yaml"
EMBEDDED_KIND = "whisperx-service/pyannote-seg3-campplus"

# Hyper-parameters of the embedded default, chosen on DER of the shared clips and the composed
# meetings (bench/diarization_der.py, bench/meeting_der.py): pyannote's 1-s step (a coarser one
# merged two speakers under a count hint); overlapped speech kept out of the embeddings; a small
# min_cluster_size, so that a speaker with little speech keeps a cluster of their own.
DEFAULT_PIPELINE_INIT: dict[str, Any] = {
    "segmentation_step": 0.1,
    "embedding_exclude_overlap": True,
    "embedding_batch_size": 24,
    "segmentation_batch_size": 16,
}
# Each chunk's local speakers are different people: assign them to different clusters.
DEFAULT_CONSTRAINED_ASSIGNMENT = True
DEFAULT_PIPELINE_PARAMS: dict[str, Any] = {
    "segmentation": {"min_duration_off": 0.0},
    "clustering": {"method": "centroid", "threshold": 0.7, "min_cluster_size": 8},
}
