"""A user's pyannote.audio pipeline directory made self-contained for the model store.

``speaker-diarization-3.1``'s config.yaml names its sub-models by hub id
(``pyannote/segmentation-3.0``, ``pyannote/wespeaker-voxceleb-resnet34-LM``), each its own
snapshot; ``community-1`` holds them as ``$model/segmentation`` sub-folders. The stored directory
keeps config.yaml as published and holds every sub-model under the path the serving side looks
for first (``<org>/<name>/`` for a hub id, see `whisperx_service.diarization.pyannote_backend`).
Every sub-model is checked for the files and the architecture its slot needs, then the whole
pipeline is loaded once: an import that fails says which piece is missing or wrong.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .dirs import ImportRefused, copy_tree, require

# slot in the pipeline's params -> (files needed, pyannote.audio module the checkpoint's class is from)
_SLOTS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "segmentation": (("pytorch_model.bin",), "pyannote.audio.models.segmentation"),
    "embedding": (("pytorch_model.bin",), "pyannote.audio.models.embedding"),
    "plda": (("xvec_transform.npz", "plda.npz"), None),
}


def _is_hub_id(value: str) -> bool:
    return re.fullmatch(r"[\w-]+/[\w.-]+", value) is not None


def _candidates(src: Path, value: str) -> list[Path]:
    """Where a sub-model named `value` (hub id or relative path) may be, inside or beside `src`."""
    name = Path(value).name
    return list(dict.fromkeys([src / value, src / name, src.parent / name, src.parent / value]))


def _architecture(checkpoint: Path) -> tuple[str, str]:
    import torch

    try:
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=False)
        arch = loaded["pyannote.audio"]["architecture"]
        return str(arch["module"]), str(arch["class"])
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise ImportRefused(f"{checkpoint} is not a pyannote.audio checkpoint: {exc}") from exc


def _check_slot(slot: str, folder: Path, label: str) -> None:
    files, module = _SLOTS[slot]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise ImportRefused(f"pyannote pipeline: the {slot} model {label} ({folder}) lacks {', '.join(missing)}")
    if module is not None:
        found_module, found_class = _architecture(folder / "pytorch_model.bin")
        if not found_module.startswith(module):
            raise ImportRefused(
                f"pyannote pipeline: the {slot} model {label} is a {found_module}.{found_class}, "
                f"not a model for its {slot} slot ({module}.*)")


def assemble_pipeline_dir(src: Path, dest: Path, find_model: Callable[[str], Path | None] | None = None) -> None:
    """Copy the pipeline at `src` into `dest` with every sub-model it names, checked and loaded once."""
    require(src, "pyannote pipeline", ("config.yaml",))
    config = yaml.safe_load((src / "config.yaml").read_text(encoding="utf-8")) or {}
    params: dict[str, Any] = (config.get("pipeline") or {}).get("params") or {}
    if not params:
        raise ImportRefused(f"pyannote pipeline: {src}/config.yaml has no pipeline.params")
    copy_tree(src, dest)
    for slot in _SLOTS:
        value = params.get(slot)
        if value is None:
            if slot == "plda" and params.get("clustering", "VBxClustering") == "VBxClustering":
                raise ImportRefused(f"pyannote pipeline: {src}/config.yaml uses VBxClustering but names no plda")
            if slot != "plda":
                raise ImportRefused(f"pyannote pipeline: {src}/config.yaml names no {slot} model")
            continue
        if not isinstance(value, str):
            raise ImportRefused(f"pyannote pipeline: {src}/config.yaml: {slot} is {value!r}, not a name")
        if value.startswith("$model/"):
            _check_slot(slot, dest / value.removeprefix("$model/"), value)
            continue
        local = [p for p in _candidates(src, value) if p.is_dir()]
        if not local and find_model is not None and _is_hub_id(value):
            found = find_model(value)
            local = [found] if found is not None else []
        if not local:
            where = ", ".join(str(p) for p in _candidates(src, value))
            raise ImportRefused(
                f"pyannote pipeline: {src}/config.yaml names the {slot} model {value!r} but no local copy "
                f"of it was found (looked in {where}" + (", and the Hugging Face cache" if find_model else "")
                + "); copy its snapshot beside the pipeline directory, nothing is downloaded")
        _check_slot(slot, local[0], repr(value))
        target = dest / value
        if local[0].resolve() != target.resolve():
            shutil.rmtree(target, ignore_errors=True)
            copy_tree(local[0], target)
    _load_once(dest)


def _load_once(dest: Path) -> None:
    """The serving side's own loader on the assembled directory: what it cannot load is refused."""
    from whisperx_service.diarization.pyannote_backend import load_pyannote_pipeline

    try:
        load_pyannote_pipeline(dest)
    except Exception as exc:  # any loader failure (pyannote, torch, yaml) refuses the import
        raise ImportRefused(f"pyannote pipeline: pyannote.audio cannot load it: {type(exc).__name__}: {exc}") from exc
