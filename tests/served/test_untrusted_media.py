"""Uploads that name other files or URLs, through the served graph: each refused with 415
`unsupported_media`, no answer holds a word of the file it named, no URL it named is contacted.

Before the demuxer allowlist, an HLS playlist listing a server-side recording, sent as
`audio/mpeg` or `application/octet-stream`, was transcribed: the answer held that recording's
words. The server-side "secret" here is JFK's speech, so a leak shows as his words in an answer;
the last test is the positive control (the same words do come back for a real upload).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.data import JFK_FLAC
from tests.served.conftest import Served

pytestmark = pytest.mark.served

JFK_WORDS = "ask not what your country"
CONTENT_TYPES = ["audio/mpeg", "application/octet-stream"]
# route -> (file field, extra form fields)
ROUTES: dict[str, tuple[str, dict[str, str]]] = {
    "/transcribe": ("audio_file", {"diarize": "false"}),
    "/v1/audio/transcriptions": ("file", {"model": "whisper-1"}),
}


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


class Listener:
    """A plain TCP server thread on 127.0.0.1 that records every connection (none is allowed)."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.port = int(self.server.getsockname()[1])
        self.connections: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    self.connections.append(conn.recv(4096))
                except OSError:
                    self.connections.append(b"")


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    listening = Listener()
    listening.thread.start()
    yield listening
    listening.stop.set()
    listening.thread.join(timeout=5)
    listening.server.close()


def hls(target: str) -> str:
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:12\n#EXTINF:11.0,\n{target}\n#EXT-X-ENDLIST\n"


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server-side recording (JFK as MP3) beside its MPEG-TS twin, which no client may read."""
    root = tmp_path_factory.mktemp("server-side")
    mp3 = root / "secret-meeting.mp3"
    ffmpeg("-i", str(JFK_FLAC), str(mp3))
    ffmpeg("-i", str(JFK_FLAC), "-c:a", "aac", "-f", "mpegts", str(mp3.with_suffix(".ts")))
    return mp3


@pytest.fixture(scope="module")
def attacks(secret: Path, listener: Listener) -> dict[str, str]:
    """Upload text per attack: each would make ffmpeg open a file or URL named inside it."""
    mp3, ts = secret, secret.with_suffix(".ts")
    inner = secret.parent / "inner.m3u8"
    inner.write_text(hls(str(ts)))
    return {
        "hls_absolute_mp3": hls(str(mp3)),
        "hls_absolute_ts": hls(str(ts)),
        "hls_relative": hls("neighbour.mp3"),  # another upload in the spool directory
        "hls_file_url": hls(f"file:{ts}"),
        "hls_http": hls(f"http://127.0.0.1:{listener.port}/x.mp3"),
        "concat_relative": "ffconcat version 1.0\nfile 'neighbour.mp3'\n",
        "hls_nested": f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=64000\n{inner}\n",
    }


def post(http: httpx.Client, route: str, name: str, data: bytes | str, content_type: str) -> httpx.Response:
    field, form = ROUTES[route]
    return http.post(route, files={field: (name, data, content_type)}, data=form)


def test_playlists_and_concat_lists_are_refused_on_both_routes(
    served: Served, secret: Path, attacks: dict[str, str], listener: Listener
) -> None:
    # What a relative name reached before each upload had a directory of its own.
    neighbour = served.tmp_dir / "neighbour.mp3"
    neighbour.write_bytes(secret.read_bytes())
    try:
        answers: list[tuple[str, int, str]] = []
        with served.client(timeout=120) as http:
            for name, text in attacks.items():
                for route in ROUTES:
                    for content_type in CONTENT_TYPES:
                        response = post(http, route, f"{name}.mp3", text, content_type)
                        answers.append((f"{name} {route} {content_type}", response.status_code, response.text))
    finally:
        neighbour.unlink()
    assert len(answers) == 7 * 2 * 2
    for case, status, body in answers:
        assert JFK_WORDS not in body.lower(), f"{case} leaked the file it named: {body[:300]}"
        assert status == 415, f"{case}: {status} {body[:300]}"
        error = httpx.Response(status, content=body).json()["error"]
        assert error["code"] == "unsupported_media", case
        for leak in ("secret-meeting", "neighbour", "EXTM3U", "ffconcat", "127.0.0.1", "inner.m3u8"):
            assert leak not in error["message"], case
    time.sleep(0.5)
    assert listener.connections == [], "the service connected to a URL named in an upload"
    assert list(served.tmp_dir.iterdir()) == []


def test_a_playlist_sent_as_an_async_job_fails_the_same_way(served: Served, attacks: dict[str, str]) -> None:
    with served.client(timeout=120) as http:
        submitted = http.post("/jobs/transcribe/submit",
                              files={"audio_file": ("x.mp3", attacks["hls_absolute_mp3"], "audio/mpeg")})
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["task_id"]
        deadline = time.monotonic() + 60
        while (progress := http.get(f"/jobs/{task_id}").json())["state"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, progress
            time.sleep(0.5)
        stored = http.get(f"/jobs/transcribe/get?task_id={task_id}")
    assert progress["state"] == "failed", progress
    assert progress["error"]["error"]["code"] == "unsupported_media"
    assert JFK_WORDS not in stored.text.lower()


def test_the_same_recording_uploaded_itself_is_transcribed(served: Served, secret: Path) -> None:
    """The positive control: the words the tests above look for do come back for real audio."""
    with served.client(timeout=300) as http:
        response = post(http, "/transcribe", "meeting.mp3", secret.read_bytes(), "application/octet-stream")
    assert response.status_code == 200, response.text
    assert JFK_WORDS in response.text.lower()
    assert list(served.tmp_dir.iterdir()) == []
