"""Decoding uploads: real audio/video containers -> mono float32 at 16 kHz, once per request.

ffmpeg runs as an asyncio subprocess so the gateway's event loop stays free while it works.

Uploads are untrusted, and ffmpeg opens a file with every demuxer it has. Some of those read
further files or URLs named inside the upload: an HLS playlist (`#EXTM3U` + `/srv/x.mp3`) made the
service open and transcribe a server-side file; a concat list (`ffconcat version 1.0`) read
files beside the spool file. So, for ffprobe and ffmpeg alike:

- `-format_whitelist` holds only the demuxers of `ALLOWED_DEMUXERS` (each reads the one file it
  is given). ffmpeg checks it right after probing, before the demuxer reads its header, so a
  playlist is refused before it opens anything. ffprobe names the container first; ffmpeg then
  decodes with that demuxer forced (`-f`), never one it picks itself.
- `-protocol_whitelist file`: no network, `data:`, `subfile:`, `concat:` or `crypto:` input.
- Each process runs under a wall-clock timeout and RLIMIT_CPU / RLIMIT_AS limits (`DecodeLimits`),
  so a hostile file cannot hold a core or the memory for long.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import resource
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from .config import Settings, get_settings
from .errors import (
    AudioTooLong,
    DecodeLimitExceeded,
    DecoderFailed,
    EmptyUpload,
    InvalidAudio,
    UnsupportedMedia,
    UnsupportedMediaType,
)

SAMPLE_RATE = 16_000
_BYTES_PER_SAMPLE = 2  # ffmpeg writes s16le; halves the pipe traffic of f32le
_READ_CHUNK = 1 << 20
# One decoder thread: audio decoding gains little from more (1 h of MP3 or Opus: the same time;
# FLAC: 7.1 s against 6.3 s on two cores), and every thread costs address space (8 MiB of stack
# and a malloc arena each), which would make RLIMIT_AS depend on the machine's core count.
_DECODER_THREADS = "1"

# The demuxers we decode with: ffprobe's `format_name` -> the name forced with `-f`. Each reads
# exactly the one file it is given. Never here: demuxers that open further files or URLs named in
# the input or compose inputs (hls, dash, concat/ffconcat, imf, image2, vobsub, sdp, rtp, rtsp,
# lavfi, webm_dash_manifest, ...), capture devices (alsa, pulse, v4l2, x11grab, fbdev, ...), and
# text/subtitle/metadata formats (tty, ffmetadata, srt, ...): none of them is a recording.
# mov's external references ("drefs", "alias" atoms) are off by default and switched off again
# explicitly below. mpegts and mpeg (program streams) are plain packet streams of one file.
ALLOWED_DEMUXERS: dict[str, str] = {
    "wav": "wav",  # also RF64 and BW64
    "w64": "w64",
    "aiff": "aiff",
    "au": "au",
    "caf": "caf",
    "flac": "flac",
    "mp3": "mp3",  # MPEG audio layers 1-3
    "aac": "aac",  # ADTS
    "ac3": "ac3",
    "eac3": "eac3",
    "wv": "wv",  # WavPack
    "amr": "amr",
    "amrnb": "amrnb",
    "amrwb": "amrwb",
    "ogg": "ogg",  # Vorbis, Opus, FLAC
    "matroska,webm": "matroska",
    "mov,mp4,m4a,3gp,3g2,mj2": "mov",  # MP4, M4A, MOV, 3GP
    "asf": "asf",  # WMA, WMV
    "avi": "avi",
    "flv": "flv",
    "mpegts": "mpegts",
    "mpeg": "mpeg",  # MPEG program stream (VOB, MPG)
}
_FORMAT_WHITELIST = ",".join(sorted(set(ALLOWED_DEMUXERS.values())))
# Demuxer-private options forced alongside `-f` (ffmpeg refuses options the demuxer lacks).
_DEMUXER_OPTIONS: dict[str, list[str]] = {"mov": ["-enable_drefs", "0", "-use_absolute_path", "0"]}
_INPUT_SAFETY = ["-protocol_whitelist", "file", "-format_whitelist", _FORMAT_WHITELIST]
_REFUSED_FORMAT = re.compile(r"\[([\w,]+) @ 0x[0-9a-f]+\] Format not on whitelist")

logger = logging.getLogger(__name__)


def check_upload_type(content_type: str | None, accepted: list[str]) -> None:
    """415 for a file part that declares a type we do not decode (text/plain, image/png...).

    A part that declares nothing passes: ffmpeg decides. Patterns are exact or `type/*`.
    """
    if not content_type:
        return
    declared = content_type.split(";")[0].strip().lower()
    for pattern in accepted:
        pattern = pattern.lower()
        if declared == pattern or (pattern.endswith("/*") and declared.startswith(pattern[:-1])):
            return
    raise UnsupportedMediaType(
        f"the uploaded file is declared as {declared[:80]!r}; send audio or video "
        f"(accepted: {', '.join(accepted)})", param="audio_file",
    )


def ffmpeg_binary() -> str:
    return _binary("ffmpeg")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (Debian: apt-get install ffmpeg)")
    return path


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on each ffprobe/ffmpeg process that reads an upload."""

    timeout_s: float  # wall clock; the process is killed past it
    cpu_s: int  # RLIMIT_CPU: the kernel kills the process (SIGKILL) past it
    memory_mb: int  # RLIMIT_AS: allocations past it fail

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        return cls(settings.decode_timeout_s, settings.decode_cpu_s, settings.decode_memory_mb)

    def preexec(self) -> Callable[[], None]:
        """What the forked child runs before exec: set the limits (never above our own hard ones)."""
        limits = [
            (resource.RLIMIT_CPU, _capped(resource.RLIMIT_CPU, self.cpu_s)),
            (resource.RLIMIT_AS, _capped(resource.RLIMIT_AS, self.memory_mb * 2**20)),
            (resource.RLIMIT_CORE, 0),  # a killed decoder leaves no core file behind
        ]

        def apply() -> None:
            # soft == hard: past the CPU limit the kernel sends SIGKILL (a SIGXCPU soft limit would
            # let ffmpeg catch it and exit like any failure).
            for kind, value in limits:
                resource.setrlimit(kind, (value, value))

        return apply


def _capped(kind: int, value: int) -> int:
    hard = resource.getrlimit(kind)[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


async def _spawn(args: list[str], limits: DecodeLimits) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=limits.preexec(),
    )


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def _check_exit(tool: str, returncode: int, stderr: bytes, limits: DecodeLimits) -> None:
    """Raise ours for an exit that says a limit was hit or the tool could not start at all."""
    text = stderr.decode("utf-8", "replace")
    if returncode == -signal.SIGKILL:  # we kill only on the wall clock, handled before this
        raise DecodeLimitExceeded(
            f"decoding the upload used more than the {limits.cpu_s} s of CPU time allowed; "
            "the decoder was stopped", param="audio_file", code="decode_timeout",
        )
    if "error while loading shared libraries" in text:
        logger.error("%s could not start under %d MiB of address space (WXS_DECODE_MEMORY_MB): %s",
                     tool, limits.memory_mb, text.strip()[-300:])
        raise DecoderFailed(f"{tool} could not start; see the service log")
    if returncode != 0 and "Cannot allocate memory" in text:
        raise DecodeLimitExceeded(
            f"decoding the upload needed more than the {limits.memory_mb} MiB of memory allowed",
            param="audio_file", code="decode_memory_exceeded",
        )


def _timed_out(tool: str, limits: DecodeLimits) -> DecodeLimitExceeded:
    logger.warning("%s ran past %.0f s on an upload; killed", tool, limits.timeout_s)
    return DecodeLimitExceeded(
        f"decoding the upload took longer than {limits.timeout_s:.0f} s; the decoder was stopped",
        param="audio_file", code="decode_timeout",
    )


@dataclass(frozen=True)
class MediaProbe:
    demuxer: str  # the name forced with `-f` (an `ALLOWED_DEMUXERS` value)
    duration: float | None  # container-declared, seconds; None when it does not say


async def probe_media(path: Path, limits: DecodeLimits | None = None) -> MediaProbe:
    """Name the upload's container and its declared duration; refuse containers not on the allowlist.

    Raises UnsupportedMedia for a format that is not an allowed demuxer (a playlist, a concat
    list...), before that demuxer reads anything; InvalidAudio when ffprobe finds no format at all.
    """
    limits = limits or DecodeLimits.from_settings(get_settings())
    proc = await _spawn([
        _binary("ffprobe"), "-v", "error", "-hide_banner", "-threads", _DECODER_THREADS, *_INPUT_SAFETY,
        "-show_entries", "format=format_name,duration", "-of", "json", "-i", os.path.abspath(path),
    ], limits)
    try:
        async with asyncio.timeout(limits.timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        raise _timed_out("ffprobe", limits) from None
    finally:
        await _reap(proc)
    assert proc.returncode is not None
    _check_exit("ffprobe", proc.returncode, err, limits)
    refused = _REFUSED_FORMAT.search(err.decode("utf-8", "replace"))
    if refused is not None:
        _refuse(refused.group(1))
    if proc.returncode != 0:
        raise InvalidAudio(_ffmpeg_reason(err, "the file is not audio that ffmpeg can read"))
    try:
        entries = json.loads(out or b"{}").get("format", {})
    except ValueError:
        entries = {}
    format_name = str(entries.get("format_name") or "")
    demuxer = ALLOWED_DEMUXERS.get(format_name)
    if demuxer is None:  # a second lock: the whitelist matches names by any comma-separated part
        _refuse(format_name)
    value = entries.get("duration")
    try:
        duration = float(value) if value not in (None, "N/A") else None
    except (ValueError, TypeError):
        duration = None
    return MediaProbe(demuxer, duration)


def _refuse(format_name: str) -> NoReturn:
    # The format name is ffmpeg's (a demuxer name), never the upload's text: safe to log. The
    # client's message names no path and nothing of the file.
    logger.warning("refused an upload in container %r: not on the demuxer allowlist", format_name[:60])
    raise UnsupportedMedia(
        "the upload is not a recording in a supported container (playlists, concat lists and other "
        "formats that refer to further files or URLs are refused); send WAV, FLAC, MP3, Ogg/Opus, "
        "M4A/MP4, WebM/MKV or another common audio or video file", param="audio_file",
    )


async def probe_duration(path: Path, limits: DecodeLimits | None = None) -> float | None:
    """Container-declared duration in seconds, or None when the container does not say.

    Refuses (UnsupportedMedia) a container that is not on the demuxer allowlist, as `probe_media`.
    """
    return (await probe_media(path, limits)).duration


def _ffmpeg_reason(stderr: bytes, fallback: str) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    # ffmpeg's last line names the problem; the path in it is ours, not the client's: drop it.
    if not lines:
        return fallback
    last = lines[-1]
    if ": " in last and "/" in last.split(": ", 1)[0]:
        last = last.split(": ", 1)[1]
    return f"{fallback} ({last[:200]})"


def pcm_to_float(samples: np.ndarray) -> np.ndarray:
    """16-bit PCM (what crosses services: half the bytes of float32) as float32 in [-1, 1).

    Float input passes through as float32, so runners take either."""
    if samples.dtype == np.int16:
        out = samples.astype(np.float32)
        out *= 1.0 / 32768.0
        return out
    return np.asarray(samples, dtype=np.float32)


async def decode_audio(path: Path, *, max_seconds: float, limits: DecodeLimits | None = None) -> np.ndarray:
    """Decode `path` to mono float32 16 kHz samples (`decode_pcm`, as floats)."""
    return pcm_to_float(await decode_pcm(path, max_seconds=max_seconds, limits=limits))


async def decode_pcm(path: Path, *, max_seconds: float, limits: DecodeLimits | None = None) -> np.ndarray:
    """Decode `path` to mono 16-bit 16 kHz samples (int16, read-only).

    Raises EmptyUpload for a 0-byte file, UnsupportedMedia for a container not on the demuxer
    allowlist, InvalidAudio when ffmpeg cannot decode it or it ends well before the length its
    container declares (a truncated file), AudioTooLong past `max_seconds` (stops reading at the
    limit instead of decoding everything first), DecodeLimitExceeded when ffprobe or ffmpeg runs
    past `limits` (the settings' WXS_DECODE_* when None).
    """
    limits = limits or DecodeLimits.from_settings(get_settings())
    if path.stat().st_size == 0:
        raise EmptyUpload("the uploaded file is empty", param="audio_file")
    media = await probe_media(path, limits)
    declared = media.duration
    if declared is not None and declared > max_seconds + 1.0:
        raise AudioTooLong(
            f"audio is {declared:.0f} s long; this service accepts at most {max_seconds:.0f} s",
            param="audio_file",
        )
    proc = await _spawn([
        ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-xerror",
        "-threads", _DECODER_THREADS, *_INPUT_SAFETY,
        "-f", media.demuxer, *_DEMUXER_OPTIONS.get(media.demuxer, []), "-i", os.path.abspath(path),
        "-vn", "-map", "0:a:0", "-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-",
    ], limits)
    assert proc.stdout is not None and proc.stderr is not None
    limit_bytes = int((max_seconds + 1.0) * SAMPLE_RATE * _BYTES_PER_SAMPLE)
    stderr_task = asyncio.create_task(proc.stderr.read())
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.timeout_s):
            while chunk := await proc.stdout.read(_READ_CHUNK):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit_bytes:
                    raise AudioTooLong(
                        f"audio is longer than the {max_seconds:.0f} s this service accepts",
                        param="audio_file",
                    )
            await proc.wait()
            stderr = await stderr_task
    except TimeoutError:
        raise _timed_out("ffmpeg", limits) from None
    finally:
        await _reap(proc)
        if not stderr_task.done():
            stderr_task.cancel()
    assert proc.returncode is not None
    _check_exit("ffmpeg", proc.returncode, stderr, limits)
    if proc.returncode != 0:
        raise InvalidAudio(_ffmpeg_reason(stderr, "could not decode the upload as audio"))
    pcm = b"".join(chunks)
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.int16, copy=False)
    decoded = samples.shape[0] / SAMPLE_RATE
    if declared is not None and declared > 2.0 and decoded < 0.9 * declared - 1.0:
        raise InvalidAudio(
            f"the file is truncated: it declares {declared:.1f} s of audio but holds {decoded:.1f} s",
            param="audio_file",
        )
    return samples
