"""Decoding uploads: any format ffmpeg reads -> mono float32 at 16 kHz, once per request.

ffmpeg runs as an asyncio subprocess so the gateway's event loop stays free while it works.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from .errors import AudioTooLong, EmptyUpload, InvalidAudio, UnsupportedMediaType

SAMPLE_RATE = 16_000
_BYTES_PER_SAMPLE = 2  # ffmpeg writes s16le; halves the pipe traffic of f32le
_READ_CHUNK = 1 << 20

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
    path = shutil.which("ffmpeg")
    if path is None:
        raise RuntimeError("ffmpeg is not installed (Debian: apt-get install ffmpeg)")
    return path


async def probe_duration(path: Path) -> float | None:
    """Container-declared duration in seconds, or None when the container does not say."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    proc = await asyncio.create_subprocess_exec(
        ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise InvalidAudio(_ffmpeg_reason(err, "the file is not audio that ffmpeg can read"))
    try:
        value = json.loads(out or b"{}").get("format", {}).get("duration")
        return float(value) if value not in (None, "N/A") else None
    except (ValueError, TypeError):
        return None


def _ffmpeg_reason(stderr: bytes, fallback: str) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    # ffmpeg's last line names the problem; the path in it is ours, not the client's: drop it.
    if not lines:
        return fallback
    last = lines[-1]
    if ": " in last and "/" in last.split(": ", 1)[0]:
        last = last.split(": ", 1)[1]
    return f"{fallback} ({last})"


async def decode_audio(path: Path, *, max_seconds: float) -> np.ndarray:
    """Decode `path` to mono float32 16 kHz samples.

    Raises EmptyUpload for a 0-byte file, InvalidAudio when ffmpeg cannot decode it or it ends
    well before the length its container declares (a truncated file), AudioTooLong past
    `max_seconds` (stops reading at the limit instead of decoding everything first).
    """
    if path.stat().st_size == 0:
        raise EmptyUpload("the uploaded file is empty", param="audio_file")
    declared = await probe_duration(path)
    if declared is not None and declared > max_seconds + 1.0:
        raise AudioTooLong(
            f"audio is {declared:.0f} s long; this service accepts at most {max_seconds:.0f} s",
            param="audio_file",
        )
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-xerror",
        "-threads", "0", "-i", str(path), "-vn", "-map", "0:a:0",
        "-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    limit_bytes = int((max_seconds + 1.0) * SAMPLE_RATE * _BYTES_PER_SAMPLE)
    stderr_task = asyncio.create_task(proc.stderr.read())
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await proc.stdout.read(_READ_CHUNK):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit_bytes:
                raise AudioTooLong(
                    f"audio is longer than the {max_seconds:.0f} s this service accepts",
                    param="audio_file",
                )
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = await stderr_task
    if proc.returncode != 0:
        raise InvalidAudio(_ffmpeg_reason(stderr, "could not decode the upload as audio"))
    pcm = b"".join(chunks)
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    decoded = samples.shape[0] / SAMPLE_RATE
    if declared is not None and declared > 2.0 and decoded < 0.9 * declared - 1.0:
        raise InvalidAudio(
            f"the file is truncated: it declares {declared:.1f} s of audio but holds {decoded:.1f} s",
            param="audio_file",
        )
    return samples
