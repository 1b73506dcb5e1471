"""Uploads are untrusted: only real media decodes, nothing an upload names is ever opened.

Before the demuxer allowlist, an HLS playlist listing `/some/dir/recording.mp3` (or a relative
name, a `file:` URL, a nested playlist) and an `ffconcat` list naming a neighbouring upload all
decoded the file they named: the service transcribed a server-side file for the client. Each case
here is such an upload, decoded through `decode_audio` as the gateway does; each must be refused
with 415 `unsupported_media` before any file it names is read.
"""

from __future__ import annotations

import asyncio
import io
import math
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from starlette.datastructures import Headers, UploadFile

from tests.data import JFK_FLAC
from whisperx_service.audio import (
    ALLOWED_DEMUXERS,
    SAMPLE_RATE,
    DecodeLimits,
    decode_audio,
    probe_duration,
)
from whisperx_service.config import Settings
from whisperx_service.errors import DecodeLimitExceeded, DecoderFailed, UnsupportedMedia
from whisperx_service.uploads import decode_upload, discard_spool, spool_upload

GENEROUS = DecodeLimits(timeout_s=120.0, cpu_s=120, memory_mb=2048)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def decode(path: Path, limits: DecodeLimits = GENEROUS, max_seconds: float = 7200.0) -> np.ndarray:
    return asyncio.run(decode_audio(path, max_seconds=max_seconds, limits=limits))


@dataclass
class Listener:
    """A plain TCP server thread that records every connection it gets (none is allowed)."""

    port: int = 0
    connections: list[bytes] = field(default_factory=list)


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    seen = Listener(port=int(server.getsockname()[1]))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    seen.connections.append(conn.recv(4096))
                except OSError:
                    seen.connections.append(b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield seen
    stop.set()
    thread.join(timeout=5)
    server.close()


@dataclass
class Secrets:
    """Server-side files an attacker's playlist points at (JFK's speech, so a leak is audible)."""

    mp3: Path
    ts: Path
    spool: Path  # where uploads live; holds another request's upload, `neighbour.mp3`


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    root = tmp_path_factory.mktemp("server-side")
    mp3, ts = root / "secret-meeting.mp3", root / "secret-meeting.ts"
    ffmpeg("-i", str(JFK_FLAC), str(mp3))
    ffmpeg("-i", str(JFK_FLAC), "-c:a", "aac", "-f", "mpegts", str(ts))
    spool = root / "spool"
    spool.mkdir()
    (spool / "neighbour.mp3").write_bytes(mp3.read_bytes())
    return Secrets(mp3, ts, spool)


def hls(target: str) -> str:
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:12\n#EXTINF:11.0,\n{target}\n#EXT-X-ENDLIST\n"


def attacks(secrets: Secrets, port: int) -> dict[str, str]:
    """Upload text per attack: each would make ffmpeg open a file or URL named inside it."""
    inner = secrets.spool.parent / "inner.m3u8"
    inner.write_text(hls(str(secrets.ts)))
    return {
        "hls_absolute_mp3": hls(str(secrets.mp3)),
        "hls_absolute_ts": hls(str(secrets.ts)),
        "hls_relative": hls("neighbour.mp3"),
        "hls_file_url": hls(f"file:{secrets.ts}"),
        "hls_http": hls(f"http://127.0.0.1:{port}/x.mp3"),
        "concat_relative": "ffconcat version 1.0\nfile 'neighbour.mp3'\n",
        "concat_absolute": f"ffconcat version 1.0\nfile '{secrets.mp3}'\n",
        "hls_nested": f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=64000\n{inner}\n",
    }


ATTACKS = ["hls_absolute_mp3", "hls_absolute_ts", "hls_relative", "hls_file_url", "hls_http",
           "concat_relative", "concat_absolute", "hls_nested"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_playlist_or_concat_list_is_refused_and_opens_nothing(
    attack: str, secrets: Secrets, listener: Listener
) -> None:
    upload = secrets.spool / f"wxs-upload-{attack}"  # beside another upload, as the old spool was
    upload.write_text(attacks(secrets, listener.port)[attack])
    with pytest.raises(UnsupportedMedia) as refused:
        decode(upload)
    assert refused.value.status_code == 415 and refused.value.code == "unsupported_media"
    message = refused.value.message
    for leak in (str(secrets.spool.parent), "neighbour", "secret-meeting", "EXTM3U", "ffconcat", "127.0.0.1"):
        assert leak not in message
    time.sleep(0.2)  # a connection would have arrived by now
    assert listener.connections == [], "the decoder connected to a URL named in the upload"


def test_probe_duration_refuses_a_playlist_too(secrets: Secrets) -> None:
    upload = secrets.spool / "wxs-upload-probe"
    upload.write_text(hls(str(secrets.mp3)))
    with pytest.raises(UnsupportedMedia):
        asyncio.run(probe_duration(upload, GENEROUS))


@pytest.fixture(scope="module")
def reference_envelope() -> np.ndarray:
    return envelope(decode(JFK_FLAC))


def envelope(audio: np.ndarray) -> np.ndarray:
    """RMS per 20 ms: compares lossy encodings of one recording (shifted by their codec delay)."""
    hop = SAMPLE_RATE // 50
    frames = audio[: audio.shape[0] // hop * hop].reshape(-1, hop)
    return np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))


# name -> ffmpeg output arguments. Each is a container on the allowlist.
REAL_FORMATS: dict[str, list[str]] = {
    "flac": ["-c:a", "flac", "-f", "flac"],
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
    "mp3": ["-c:a", "libmp3lame", "-f", "mp3"],
    "ogg_opus": ["-c:a", "libopus", "-f", "ogg"],
    "ogg_vorbis": ["-c:a", "libvorbis", "-f", "ogg"],
    "m4a_aac": ["-c:a", "aac", "-f", "ipod"],
    "adts_aac": ["-c:a", "aac", "-f", "adts"],
    "webm_opus": ["-c:a", "libopus", "-f", "webm"],
    "mkv_flac": ["-c:a", "flac", "-f", "matroska"],
    "mpegts_aac": ["-c:a", "aac", "-f", "mpegts"],
    "aiff": ["-c:a", "pcm_s16be", "-f", "aiff"],
    "au": ["-c:a", "pcm_s16be", "-f", "au"],
    "caf_alac": ["-c:a", "alac", "-f", "caf"],
    "w64": ["-c:a", "pcm_s16le", "-f", "w64"],
    "wma": ["-c:a", "wmav2", "-f", "asf"],
    "avi_mp3": ["-c:a", "libmp3lame", "-f", "avi"],
    "ac3": ["-c:a", "ac3", "-f", "ac3"],
    "wavpack": ["-c:a", "wavpack", "-f", "wv"],
    "mpeg_ps_mp2": ["-c:a", "mp2", "-f", "mpeg"],
}


@pytest.mark.parametrize("name", sorted(REAL_FORMATS))
def test_real_audio_formats_still_decode(name: str, tmp_path: Path, reference_envelope: np.ndarray) -> None:
    encoded = tmp_path / "upload"  # no extension, as spooled
    ffmpeg("-i", str(JFK_FLAC), *REAL_FORMATS[name], str(encoded))
    check_is_jfk(decode(encoded), reference_envelope)


@pytest.mark.parametrize("container", ["mp4", "webm", "mov", "flv"])
def test_video_with_audio_still_decodes(container: str, tmp_path: Path, reference_envelope: np.ndarray) -> None:
    codecs = {"mp4": ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"],
              "mov": ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"],
              "flv": ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"],
              "webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-c:a", "libopus"]}
    video = tmp_path / "upload"
    ffmpeg("-i", str(JFK_FLAC), "-f", "lavfi", "-t", "11", "-i", "testsrc=size=160x120:rate=10",
           *codecs[container], "-f", container, str(video))
    check_is_jfk(decode(video), reference_envelope)


def check_is_jfk(audio: np.ndarray, reference: np.ndarray) -> None:
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.shape[0] / SAMPLE_RATE - 11.0) < 0.25
    got = envelope(audio)
    n = min(got.shape[0], reference.shape[0])
    best = max(float(np.corrcoef(got[max(0, s): n + min(0, s)], reference[max(0, -s): n - max(0, s)])[0, 1])
               for s in range(-10, 11))  # codec delays up to 200 ms (measured: <= 50 ms)
    assert best > 0.97


def test_the_allowlist_holds_no_demuxer_that_opens_other_files() -> None:
    names = {part for name in ALLOWED_DEMUXERS for part in name.split(",")} | set(ALLOWED_DEMUXERS.values())
    never = {"hls", "applehttp", "dash", "concat", "ffconcat", "image2", "image2pipe", "imf", "vobsub",
             "sdp", "rtp", "rtsp", "lavfi", "tee", "data", "webm_dash_manifest", "tty", "ffmetadata",
             "mpjpeg", "sap", "libcdio", "alsa", "pulse", "video4linux2", "v4l2", "x11grab", "fbdev"}
    assert not names & never


# --- limits on the decoder processes ----------------------------------------------------------


def looped_mp3(directory: Path, source: Path, minutes: int) -> Path:
    """JFK's MP3 looped to about `minutes` (packets copied, not encoded: made in well under a second)."""
    looped = directory / f"{minutes}min.mp3"
    ffmpeg("-stream_loop", str(minutes * 60 // 11), "-i", str(source), "-c", "copy", str(looped))
    return looped


@pytest.fixture(scope="module")
def long_mp3(tmp_path_factory: pytest.TempPathFactory, secrets: Secrets) -> Path:
    """An hour of MP3: several seconds of one core's decoding on any CPU, far past the tiny limits below."""
    return looped_mp3(tmp_path_factory.mktemp("long"), secrets.mp3, 60)


def test_a_decoder_past_its_wall_clock_is_killed(long_mp3: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DecodeLimitExceeded) as stopped:
        decode(long_mp3, DecodeLimits(timeout_s=1.0, cpu_s=120, memory_mb=2048))
    assert time.monotonic() - started < 5.0
    assert stopped.value.status_code == 422 and stopped.value.code == "decode_timeout"


def test_a_decoder_past_its_cpu_time_is_killed(long_mp3: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DecodeLimitExceeded) as stopped:
        decode(long_mp3, DecodeLimits(timeout_s=120.0, cpu_s=1, memory_mb=2048))
    assert time.monotonic() - started < 6.0
    assert stopped.value.status_code == 422 and stopped.value.code == "decode_timeout"
    assert "CPU" in stopped.value.message


def test_limits_reach_the_child_process() -> None:
    limits = DecodeLimits(timeout_s=10.0, cpu_s=7, memory_mb=1500)
    out = subprocess.run(["sh", "-c", "ulimit -t; ulimit -v; ulimit -c"], capture_output=True, text=True,
                         check=True, preexec_fn=limits.preexec()).stdout.split()
    assert out == ["7", str(1500 * 1024), "0"]


def test_a_memory_limit_too_small_to_start_is_our_error_not_the_clients() -> None:
    with pytest.raises(DecoderFailed) as failed:
        decode(JFK_FLAC, DecodeLimits(timeout_s=30.0, cpu_s=30, memory_mb=64))
    assert failed.value.status_code == 500 and "/" not in failed.value.message


def test_the_default_limits_leave_room_for_a_four_hour_recording(tmp_path: Path, secrets: Secrets) -> None:
    """Decoding time grows with the length and memory does not (ffmpeg streams), so 10 minutes
    must decode within 10/240 of the default time budgets and the full memory one."""
    defaults = DecodeLimits.from_settings(Settings())
    share = 10 / 240
    scaled = DecodeLimits(timeout_s=defaults.timeout_s * share, cpu_s=math.ceil(defaults.cpu_s * share),
                          memory_mb=defaults.memory_mb)
    audio = decode(looped_mp3(tmp_path, secrets.mp3, 10), scaled)
    assert audio.shape[0] / SAMPLE_RATE > 590


# --- the spool: one private directory per upload --------------------------------------------


def upload_of(data: bytes, content_type: str = "audio/mpeg") -> UploadFile:
    return UploadFile(io.BytesIO(data), filename="../../x.mp3", headers=Headers({"content-type": content_type}))


def test_each_upload_is_spooled_alone_in_a_private_directory(tmp_path: Path) -> None:
    settings = Settings(tmp_dir=tmp_path)
    first = asyncio.run(spool_upload(upload_of(b"one"), settings))
    second = asyncio.run(spool_upload(upload_of(b"two"), settings))
    try:
        assert first.parent != second.parent
        for path in (first, second):
            assert path.parent.parent == tmp_path
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert list(path.parent.iterdir()) == [path]
        assert first.read_bytes() == b"one"
    finally:
        discard_spool(first)
        discard_spool(second)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content_type", ["audio/mpeg", "application/octet-stream"])
def test_decode_upload_refuses_a_playlist_and_leaves_nothing(
    content_type: str, tmp_path: Path, secrets: Secrets
) -> None:
    settings = Settings(tmp_dir=tmp_path)
    with pytest.raises(UnsupportedMedia):
        asyncio.run(decode_upload(upload_of(hls(str(secrets.mp3)).encode(), content_type), settings))
    assert list(tmp_path.iterdir()) == []
    audio = asyncio.run(decode_upload(upload_of(secrets.mp3.read_bytes(), content_type), settings))
    assert abs(audio.shape[0] / SAMPLE_RATE - 11.0) < 0.25
    assert list(tmp_path.iterdir()) == []
