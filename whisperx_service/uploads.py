"""Uploads: a multipart file part spooled to disk, decoded once, and always removed.

The gateway's routes and async jobs hand their upload here; nothing else touches the spool.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from starlette.datastructures import UploadFile

from .audio import check_upload_type, decode_audio
from .config import Settings

_BLOCK = 1 << 20


async def spool_upload(upload: UploadFile, settings: Settings) -> Path:
    """Copy the upload to our own temp file in 1 MiB blocks (never whole into memory).

    Its size was bounded while the body streamed in (`GatewayGuard`), before this runs.
    """
    check_upload_type(upload.content_type, settings.accepted_upload_types)
    handle = tempfile.NamedTemporaryFile(prefix="wxs-upload-", dir=settings.tmp_dir, delete=False)
    path = Path(handle.name)
    try:
        with handle:
            while block := await upload.read(_BLOCK):
                handle.write(block)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


async def decode_upload(upload: UploadFile, settings: Settings) -> np.ndarray:
    """Spool the upload to disk, decode it once with ffmpeg, always remove the temp file."""
    path = await spool_upload(upload, settings)
    try:
        return await decode_audio(path, max_seconds=settings.max_audio_seconds)
    finally:
        path.unlink(missing_ok=True)
