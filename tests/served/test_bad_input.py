"""Bad input through the served graph: exact status codes, JSON errors, no temp file left."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.data import JFK_FLAC, PYANNOTE_SAMPLE
from tests.served.conftest import Served

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
    mp3 = root / "jfk.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(JFK_FLAC), str(mp3)], check=True)
    files["truncated_mp3"] = root / "truncated.mp3"
    files["truncated_mp3"].write_bytes(mp3.read_bytes()[: mp3.stat().st_size // 3])
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
    return files


@pytest.mark.parametrize(
    "file_key, expected_code",
    [
        ("empty", "empty_file"),
        ("text", "invalid_audio"),
        ("png", "invalid_audio"),
        ("truncated_mp3", "invalid_audio"),
        ("corrupt_wav_header", "invalid_audio"),
        ("truncated_wav", "invalid_audio"),
    ],
)
def test_undecodable_uploads_are_400(served: Served, bad_files: dict[str, Path], file_key: str, expected_code: str) -> None:
    path = bad_files[file_key]
    with served.client() as client:
        response = client.post("/transcribe", files={"audio_file": (path.name, path.read_bytes())})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == expected_code and error["message"]
    assert str(path.parent) not in error["message"]


@pytest.mark.parametrize("file_key", ["zero_length_wav", "silence"])
def test_no_speech_is_200_with_empty_segments(served: Served, bad_files: dict[str, Path], file_key: str) -> None:
    path = bad_files[file_key]
    with served.client() as client:
        response = client.post("/transcribe", files={"audio_file": (path.name, path.read_bytes())})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["segments"] == [] and body["word_segments"] == []


@pytest.mark.parametrize(
    "query, form, param",
    [
        ("?min_speakers=3&max_speakers=2", {}, "min_speakers"),
        ("", {"min_speakers": "4", "max_speakers": "2"}, "min_speakers"),
        ("?min_speakers=-1", {}, "min_speakers"),
        ("?max_speakers=0", {}, "max_speakers"),
        ("?num_speakers=2.5", {}, "num_speakers"),
        ("", {"max_speakers": "two"}, "max_speakers"),
        ("?num_speakers=1000", {}, "num_speakers"),
        ("?language=klingon", {}, "language"),
        ("", {"zh_script": "cyrillic"}, "zh_script"),
        ("", {"diarize": "maybe"}, "diarize"),
    ],
)
def test_bad_parameters_are_422(served: Served, query: str, form: dict[str, str], param: str) -> None:
    with served.client() as client:
        response = client.post(
            f"/transcribe{query}", files={"audio_file": ("a.wav", PYANNOTE_SAMPLE.read_bytes())}, data=form
        )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_missing_file_is_400(served: Served) -> None:
    with served.client() as client:
        response = client.post("/transcribe", data={"min_speakers": "2"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "missing_file"


def test_no_temporary_file_left_and_service_still_answers(served: Served, bad_files: dict[str, Path]) -> None:
    assert list(served.tmp_dir.iterdir()) == []
    with served.client() as client:
        response = client.post(
            "/transcribe", files={"audio_file": ("jfk.flac", JFK_FLAC.read_bytes())}, data={"diarize": "false"}
        )
    assert response.status_code == 200
    assert "country" in " ".join(s["text"] for s in response.json()["segments"]).lower()
    assert list(served.tmp_dir.iterdir()) == []
