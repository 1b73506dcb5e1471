"""Bad input through the served graph: the intended 4xx JSON error for each case, never a 5xx,
no temp file left, and the service still answers a good request afterwards.

The session server runs with WXS_MAX_UPLOAD_MB=64 and WXS_MAX_AUDIO_SECONDS=1800 (conftest).
"""

from __future__ import annotations

import os
import re
import subprocess
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.data import JFK_FLAC, JFK_REFERENCE, PYANNOTE_SAMPLE, truncated_mp3, word_error_rate
from tests.served.conftest import MAX_UPLOAD_MB, Served

pytestmark = pytest.mark.served


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    files: dict[str, Path] = {}
    files["empty"] = root / "empty.wav"
    files["empty"].write_bytes(b"")
    files["text"] = root / "notes.txt"
    files["text"].write_text("these are meeting notes, not audio\n" * 50)
    files["png"] = root / "picture.png"
    files["png"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    files["truncated_mp3"] = truncated_mp3(root)
    good_wav = PYANNOTE_SAMPLE.read_bytes()
    files["corrupt_wav_header"] = root / "corrupt.wav"
    files["corrupt_wav_header"].write_bytes(b"RIFF\xff\xff\xff\xffWAVEjunk" + b"\x00" * 28 + good_wav[44:20000])
    files["truncated_wav"] = root / "truncated.wav"
    files["truncated_wav"].write_bytes(good_wav[: len(good_wav) // 4])
    files["zero_length_wav"] = root / "zero.wav"
    files["silence"] = root / "silence.wav"
    for key, seconds in (("zero_length_wav", 0), ("silence", 5)):
        with wave.open(str(files[key]), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes(np.zeros(16000 * seconds, dtype="<i2").tobytes())
    # One hour of silence: 1.3 MB as Opus, twice the served duration limit.
    files["hour_of_silence"] = root / "hour.ogg"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "anullsrc=r=8000:cl=mono", "-t", "3600", "-c:a", "libopus", "-b:a", "6k",
                    str(files["hour_of_silence"])], check=True)
    files["oversize"] = root / "oversize.wav"
    files["oversize"].write_bytes(os.urandom((MAX_UPLOAD_MB + 1) * 2**20))
    return files


@dataclass(frozen=True)
class Case:
    status: int
    code: str | None  # the error code of the JSON body
    send: Callable[[httpx.Client, dict[str, Path]], httpx.Response]


def _upload(key: str, content_type: str | None = None, data: dict[str, str] | None = None,
            route: str = "/transcribe", field: str = "audio_file") -> Callable[..., httpx.Response]:
    def send(client: httpx.Client, files: dict[str, Path]) -> httpx.Response:
        path = files[key]
        part = (path.name, path.read_bytes()) if content_type is None else (path.name, path.read_bytes(), content_type)
        return client.post(route, files={field: part}, data=data or {})
    return send


def _sample(data: dict[str, str], query: str = "", route: str = "/transcribe",
            field: str = "audio_file") -> Callable[..., httpx.Response]:
    def send(client: httpx.Client, files: dict[str, Path]) -> httpx.Response:
        return client.post(f"{route}{query}", files={field: ("a.wav", PYANNOTE_SAMPLE.read_bytes())}, data=data)
    return send


def _chunked_oversize(client: httpx.Client, files: dict[str, Path]) -> httpx.Response:
    """A multipart body with no Content-Length (chunked), larger than the limit."""
    boundary = "wxs-test-boundary"

    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio_file\"; filename=\"big.wav\"\r\n"
               "Content-Type: audio/wav\r\n\r\n").encode()
        with files["oversize"].open("rb") as fh:
            while block := fh.read(1 << 20):
                yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    return client.post("/transcribe", content=body(),
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})


CASES: dict[str, Case] = {
    "empty body": Case(400, "missing_file", lambda c, f: c.post("/transcribe")),
    "no file field": Case(400, "missing_file", lambda c, f: c.post("/transcribe", data={"min_speakers": "2"})),
    "json body": Case(415, "unsupported_media_type", lambda c, f: c.post("/transcribe", json={"audio": "x"})),
    "empty file": Case(400, "empty_file", _upload("empty")),
    "text file": Case(415, "unsupported_media_type", _upload("text")),
    "png": Case(415, "unsupported_media_type", _upload("png")),
    # A real container, but not one of the audio/video demuxers the decoder allows (issue 15).
    "png sent as octet-stream": Case(415, "unsupported_media", _upload("png", "application/octet-stream")),
    "truncated mp3": Case(400, "invalid_audio", _upload("truncated_mp3")),
    "corrupt wav header": Case(400, "invalid_audio", _upload("corrupt_wav_header")),
    "truncated wav": Case(400, "invalid_audio", _upload("truncated_wav")),
    "1 h of silence over the duration limit": Case(413, "audio_too_long", _upload("hour_of_silence")),
    "oversize upload (Content-Length)": Case(413, "upload_too_large", _upload("oversize")),
    "oversize upload (chunked)": Case(413, "upload_too_large", _chunked_oversize),
    "min_speakers > max_speakers (query)": Case(422, "invalid_parameter", _sample({}, "?min_speakers=3&max_speakers=2")),
    "min_speakers > max_speakers (form)": Case(422, "invalid_parameter", _sample({"min_speakers": "4", "max_speakers": "2"})),
    "negative count": Case(422, "invalid_parameter", _sample({}, "?min_speakers=-1")),
    "zero max_speakers": Case(422, "invalid_parameter", _sample({}, "?max_speakers=0")),
    "float count": Case(422, "invalid_parameter", _sample({}, "?num_speakers=2.5")),
    "string count": Case(422, "invalid_parameter", _sample({"max_speakers": "two"})),
    "count over the limit": Case(422, "invalid_parameter", _sample({}, "?num_speakers=1000")),
    "unknown language": Case(422, "invalid_parameter", _sample({}, "?language=klingon")),
    "unknown zh_script": Case(422, "invalid_parameter", _sample({"zh_script": "cyrillic"})),
    "unknown diarize flag": Case(422, "invalid_parameter", _sample({"diarize": "maybe"})),
    "unknown output_format": Case(422, "invalid_parameter", _sample({"output_format": "docx"})),
    "unknown response_format (OpenAI)": Case(400, "invalid_value", _sample(
        {"response_format": "docx"}, route="/v1/audio/transcriptions", field="file")),
    "huge form field": Case(400, "invalid_form", _sample({"language": "x" * 2_000_000})),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_its_4xx(served: Served, bad_files: dict[str, Path], name: str) -> None:
    case = CASES[name]
    with served.client() as client:
        response = case.send(client, bad_files)
    assert response.status_code == case.status, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == case.code and error["message"]
    assert str(bad_files["empty"].parent) not in error["message"]  # no server paths in messages


@pytest.mark.parametrize("file_key", ["zero_length_wav", "silence"])
def test_no_speech_is_200_with_empty_segments(served: Served, bad_files: dict[str, Path], file_key: str) -> None:
    path = bad_files[file_key]
    with served.client() as client:
        response = client.post("/transcribe", files={"audio_file": (path.name, path.read_bytes())})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["segments"] == [] and body["word_segments"] == []


def test_path_like_filename_is_only_a_name(served: Served) -> None:
    passwd = Path("/etc/passwd")
    before = (passwd.stat().st_mtime_ns, passwd.stat().st_size) if passwd.exists() else None
    with served.client() as client:
        response = client.post("/transcribe", files={"audio_file": ("../../etc/passwd", JFK_FLAC.read_bytes())},
                               data={"diarize": "false"})
    assert response.status_code == 200, response.text
    text = " ".join(s["text"] for s in response.json()["segments"])
    assert word_error_rate(JFK_REFERENCE.read_text(), text) <= 0.15
    after = (passwd.stat().st_mtime_ns, passwd.stat().st_size) if passwd.exists() else None
    assert after == before
    assert list(served.tmp_dir.iterdir()) == []


def test_no_5xx_no_temporary_file_left_and_service_still_answers(served: Served) -> None:
    assert list(served.tmp_dir.iterdir()) == []
    with served.client() as client:
        response = client.post(
            "/transcribe", files={"audio_file": ("jfk.flac", JFK_FLAC.read_bytes())}, data={"diarize": "false"}
        )
    assert response.status_code == 200
    text = " ".join(s["text"] for s in response.json()["segments"])
    assert word_error_rate(JFK_REFERENCE.read_text(), text) <= 0.15
    assert list(served.tmp_dir.iterdir()) == []
    server_errors = re.findall(r"\[entry_service:[^]]*\].*\(status=5\d\d", served.log())
    assert server_errors == []
