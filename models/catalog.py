"""Model locations: the names and labels under which weights live in the BentoML model store.

Every model the service uses is a BentoML model whose labels say its role (and, for alignment,
its language) and whose metadata records its source, licence and the sha256 of every file.
`python -m models` writes them; the runners read them through `whisperx_service.model_store`,
whose names this module re-exports.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The names the serving side reads live with it; re-exported here for the preparation code.
from whisperx_service.model_store import (  # noqa: F401
    DIARIZATION_DEFAULT,
    LANGUAGE,
    NLTK_MODEL,
    ROLE,
    ROLE_ALIGNMENT,
    ROLE_ASR,
    ROLE_DIARIZATION,
    ROLE_NLTK,
    WHISPER_BASE,
    WHISPER_TINY_EN,
    alignment_languages,
    alignment_model_name,
    newest_models,
)


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


def manifest() -> list[ModelRecord]:
    """Newest version of every model in the store, as the manifest records it."""
    return [_record(m) for m in newest_models()]

