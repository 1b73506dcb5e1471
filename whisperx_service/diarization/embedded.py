"""The embedded default pipeline directory's format: what `models.diarization_dir` writes into
``pipeline.yaml`` and `pyannote_backend` reads back (the hyper-parameters are also its fallbacks)."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class LongRecordings:
    """How the embedded pipeline diarizes a recording longer than `above_s`: a coarser step (half
    the segmentation windows and embedding rows), a min_cluster_size scaled with it (a cluster
    still needs as many seconds of a speaker) and a clustering threshold chosen with them on the
    composed meetings (bench/meeting_der.py). Below `above_s` too few windows are left for
    clustering at the coarser step (a 30-s clip's two speakers merged)."""

    above_s: float = 120.0
    segmentation_step: float = 0.2
    min_cluster_size: int = 4
    threshold: float = 0.65

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LongRecordings | None:
        """The `long_recordings` entry of pipeline.yaml (absent: these defaults; null: none)."""
        if "long_recordings" not in config:
            return cls()
        entry = config["long_recordings"]
        return None if entry is None else cls(**entry)
