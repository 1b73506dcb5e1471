"""Streamed answers: OpenAI's Server-Sent Events through the official client and a raw parser,
/transcribe's newline-delimited JSON, refused formats, and a client that leaves mid-stream."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile

from tests.data import AMI_DIR, PYANNOTE_SAMPLE, normalize_words
from tests.served.conftest import Served

pytestmark = pytest.mark.served


@pytest.fixture(scope="module")
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=900)


def sse_events(body: str) -> list[dict[str, object]]:
    """A raw SSE parser: every event is one `data: <json>` line followed by a blank line."""
    assert body.endswith("\n\n")
    events = []
    for block in body.split("\n\n")[:-1]:
        assert block.startswith("data: "), block[:80]
        events.append(json.loads(block[len("data: "):]))
    return events


def test_openai_client_streams_deltas_then_the_same_text(client: openai.OpenAI) -> None:
    with PYANNOTE_SAMPLE.open("rb") as fh:
        whole = client.audio.transcriptions.create(file=fh, model="whisper-1")
    with PYANNOTE_SAMPLE.open("rb") as fh:
        events = list(client.audio.transcriptions.create(file=fh, model="whisper-1", stream=True))
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and set(kinds[:-1]) == {"transcript.text.delta"}, kinds
    done = events[-1]
    assert done.text == whole.text
    deltas = "".join(e.delta for e in events[:-1])  # type: ignore[union-attr]
    assert normalize_words(deltas) and normalize_words(deltas).split()[:3] == normalize_words(done.text).split()[:3]


def test_diarized_stream_sends_segments_with_speakers(served: Served) -> None:
    with served.client() as http, (AMI_DIR / "dev00.wav").open("rb") as fh:
        response = http.post("/v1/audio/transcriptions", files={"file": ("dev00.wav", fh, "audio/wav")},
                             data={"model": "whisper-1", "response_format": "diarized_json", "stream": "true"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert re.fullmatch(r"[0-9a-f]{16,}", response.headers["x-request-id"])
    events = sse_events(response.text)
    kinds = [e["type"] for e in events]
    first_segment = kinds.index("transcript.text.segment")
    assert set(kinds[:first_segment]) == {"transcript.text.delta"}
    assert set(kinds[first_segment:-1]) == {"transcript.text.segment"} and kinds[-1] == "transcript.text.done"
    segments = [e for e in events if e["type"] == "transcript.text.segment"]
    assert len({s["speaker"] for s in segments}) >= 2
    assert all(float(s["start"]) <= float(s["end"]) for s in segments)  # type: ignore[arg-type]


def test_transcribe_streams_ndjson_segments_then_the_result(served: Served) -> None:
    with served.client() as http, PYANNOTE_SAMPLE.open("rb") as fh:
        response = http.post("/transcribe", files={"audio_file": ("sample.wav", fh, "audio/wav")},
                             data={"stream": "true", "diarize": "false"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [x["type"] for x in lines[:-1]] == ["segment"] * (len(lines) - 1) and lines[-1]["type"] == "result"
    result = lines[-1]["result"]
    assert result["segments"] and result["duration"] == pytest.approx(30.0, abs=0.1)
    streamed = " ".join(x["text"] for x in lines[:-1])
    whole = " ".join(s["text"] for s in result["segments"])
    assert normalize_words(streamed).split()[:5] == normalize_words(whole).split()[:5]


@pytest.mark.parametrize(("path", "fields", "status"), [
    ("/v1/audio/transcriptions", {"model": "whisper-1", "response_format": "verbose_json", "stream": "true"}, 400),
    ("/v1/audio/transcriptions", {"model": "whisper-1", "response_format": "srt", "stream": "true"}, 400),
    ("/transcribe", {"output_format": "srt", "stream": "true"}, 422),
])
def test_formats_that_cannot_stream_are_refused(served: Served, path: str, fields: dict[str, str], status: int) -> None:
    name = "file" if path.startswith("/v1") else "audio_file"
    with served.client() as http, PYANNOTE_SAMPLE.open("rb") as fh:
        response = http.post(path, files={name: ("sample.wav", fh, "audio/wav")}, data=fields)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == "stream"


def metric(served: Served, name: str) -> float:
    with served.client(timeout=30) as http:
        text = http.get("/metrics").text
    values = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)]
    return sum(values)


def test_a_client_that_leaves_mid_stream_frees_its_work(served: Served, tmp_path: Path) -> None:
    # Four minutes, so that plenty of work is left when the first delta arrives, even on a slow machine.
    clips = [soundfile.read(str(p), dtype="float32")[0] for p in (AMI_DIR / "dev00.wav", AMI_DIR / "dev01.wav",
                                                                  PYANNOTE_SAMPLE, AMI_DIR / "dev00.wav")] * 2
    buffer = io.BytesIO()
    soundfile.write(buffer, np.concatenate(clips), 16_000, format="WAV", subtype="PCM_16")
    with served.client() as http:
        with http.stream("POST", "/v1/audio/transcriptions",
                         files={"file": ("long.wav", buffer.getvalue(), "audio/wav")},
                         data={"model": "whisper-1", "response_format": "diarized_json", "stream": "true"}) as response:
            assert response.status_code == 200
            first = next(response.iter_lines())
            assert json.loads(first[len("data: "):])["type"] == "transcript.text.delta"
        # Leaving: the connection is closed with the answer unread.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        busy = metric(served, "wxs_requests_in_flight") + metric(served, "wxs_audio_seconds_in_flight")
        spooled = [p for p in served.tmp_dir.iterdir() if p.name.startswith("wxs-upload-")]
        if busy == 0 and not spooled:
            break
        time.sleep(0.5)
    assert busy == 0 and not spooled, (busy, spooled)
    assert "stream closed before its result" in served.log()
