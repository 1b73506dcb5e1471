"""Uploads: a multipart file part spooled to disk, decoded once, and always removed.

The gateway's routes and async jobs hand their upload here; nothing else touches the spool.

Each upload is spooled into a directory of its own (mode 0700, made by `tempfile.mkdtemp` under
`WXS_TMP_DIR`) that holds nothing but that upload, so no path relative to it can reach another
request's file; the directory goes with the upload. (`whisperx_service.audio` also refuses every
container that would open a second file; this is the second lock.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from starlette.datastructures import UploadFile

from .audio import SAMPLE_RATE, DecodeLimits, check_upload_type, decode_pcm
from .config import Settings
from .errors import InvalidRequest, UnsupportedValue
from .naming import REFERENCE_SECONDS, KnownSpeaker
from .params import SpeakerReference

_BLOCK = 1 << 20
_PREFIX = "wxs-upload-"
_NAME = "upload"  # the spooled file's name; the client's filename is never used on disk


async def spool_upload(upload: UploadFile, settings: Settings) -> Path:
    """Copy the upload into its own private directory in 1 MiB blocks (never whole into memory).

    Returns the spooled file; remove it with `discard_spool` (which removes its directory).
    Its size was bounded while the body streamed in (`GatewayGuard`), before this runs.
    """
    check_upload_type(upload.content_type, settings.accepted_upload_types)
    path = _private_path(settings)
    try:
        with _create(path) as handle:
            while block := await upload.read(_BLOCK):
                handle.write(block)
    except BaseException:
        discard_spool(path)
        raise
    return path


def write_spool(data: bytes, settings: Settings) -> Path:
    """Write an upload already in memory (an async job's, from the shared job store; a voice
    sample) the same way: its own 0700 directory, the file 0600; remove it with `discard_spool`."""
    path = _private_path(settings)
    try:
        with _create(path) as handle:
            handle.write(data)
    except BaseException:
        discard_spool(path)
        raise
    return path


def _private_path(settings: Settings) -> Path:
    """Where one spooled file goes: a new directory of its own (mode 0700)."""
    return Path(tempfile.mkdtemp(prefix=_PREFIX, dir=settings.tmp_dir)) / _NAME


def _create(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb")


def discard_spool(path: Path) -> None:
    """Remove a file `spool_upload` made, with its private directory."""
    directory = path.parent
    if directory.name.startswith(_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)
    else:  # not one of ours: remove only the file
        path.unlink(missing_ok=True)


async def decode_upload(upload: UploadFile, settings: Settings) -> np.ndarray:
    """Spool the upload to disk, decode it once with ffmpeg (16-bit PCM), always remove the spool directory."""
    path = await spool_upload(upload, settings)
    try:
        return await decode_pcm(path, max_seconds=settings.max_audio_seconds,
                                limits=DecodeLimits.from_settings(settings))
    finally:
        discard_spool(path)


async def decode_speaker_references(references: Sequence[SpeakerReference], settings: Settings,
                                    ) -> list[KnownSpeaker]:
    """Each voice sample decoded like an upload (spooled alone, allowlisted demuxers, bounded
    decoder); anything but 2-10 s of audio is a 400 naming `known_speaker_references`."""
    known = []
    for reference in references:
        path = write_spool(reference.data, settings)
        try:
            pcm = await decode_voice_sample(path, settings, label=f"the voice sample of {reference.name[:40]!r}",
                                            param="known_speaker_references")
        finally:
            discard_spool(path)
        known.append(KnownSpeaker(name=reference.name, audio=pcm))
    return known


async def decode_voice_sample(path: Path, settings: Settings, *, label: str, param: str) -> np.ndarray:
    """A spooled voice sample as 16-kHz PCM: anything but 2-10 s of audio is a 400 naming `param`."""
    shortest, longest = REFERENCE_SECONDS
    try:
        pcm = await decode_pcm(path, max_seconds=longest + 1.0, limits=DecodeLimits.from_settings(settings))
    except InvalidRequest as exc:
        raise UnsupportedValue(f"{label}: {exc.message}", param=param) from None
    seconds = pcm.shape[0] / SAMPLE_RATE
    if not shortest <= seconds <= longest:
        raise UnsupportedValue(f"{label} is {seconds:.1f} s long; send {shortest:.0f}-{longest:.0f} s",
                               param=param)
    return pcm
