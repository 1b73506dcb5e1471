"""What every import of a user's model directory shares: its refusal, its checks, its copy."""

from __future__ import annotations

import shutil
from pathlib import Path


class ImportRefused(ValueError):
    """A directory that cannot be imported as it is: the message names the missing piece."""


def copy_tree(src: Path, dest: Path) -> None:
    """Copy `src` into `dest`, following symlinks (a Hugging Face cache snapshot is symlinks to blobs)."""
    shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git*", ".cache"))


def require(src: Path, what: str, *groups: tuple[str, ...]) -> None:
    """Each group of file names needs one present in `src`, else `ImportRefused` naming them."""
    if not src.is_dir():
        raise ImportRefused(f"{what}: {src} is not a directory")
    missing = [" or ".join(group) for group in groups if not any((src / name).is_file() for name in group)]
    if missing:
        raise ImportRefused(f"{what}: {src} lacks {', '.join(missing)}")
