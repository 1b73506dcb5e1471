"""The HTTP layer in process (the app behind its guard, a fake gateway, no models, no server):
every error leaves in OpenAI's envelope with the request id, and every answer carries the id."""

from __future__ import annotations

import asyncio
from typing import Any

import bentoml
import httpx
import numpy as np
import pytest

from tests.data import JFK_FLAC
from whisperx_service.config import Settings
from whisperx_service.guard import GatewayGuard
from whisperx_service.http import build_app
from whisperx_service.jobs import JobBoard
from whisperx_service.lifecycle import AudioBudget, Lifecycle
from whisperx_service.metrics import GatewayMetrics
from whisperx_service.schema import AlignmentInfo, DiarizationInfo, TranscriptionResponse, WordTimestampMethod


class FakePipeline:
    def __init__(self, failure: BaseException | None = None) -> None:
        self.failure = failure

    async def run(self, audio: np.ndarray, params: Any, *, request_id: str, clock: Any = None,
                  progress: Any = None, known_speakers: Any = (), on_text: Any = None) -> TranscriptionResponse:
        if self.failure is not None:
            raise self.failure
        return TranscriptionResponse(
            segments=[], word_segments=[], language="en", duration=round(audio.shape[0] / 16000, 3),
            alignment=AlignmentInfo(method=WordTimestampMethod.none), diarization=DiarizationInfo(enabled=False),
            request_id=request_id)


class FakeGateway:
    def __init__(self, pipeline: FakePipeline) -> None:
        self.settings = Settings()
        self.pipeline = pipeline
        self.metrics = GatewayMetrics()
        self.lifecycle = Lifecycle(max_in_flight=4, retry_after_s=1, grace_s=1)
        self.audio_budget = AudioBudget(600, retry_after_s=1)
        self.job_board = JobBoard(60)


def _client(pipeline: FakePipeline) -> httpx.AsyncClient:
    gateway = FakeGateway(pipeline)
    app = build_app()
    app.dependency_overrides[bentoml.get_current_service] = lambda: gateway
    guarded = GatewayGuard(app, settings=gateway.settings, gateway=lambda: gateway)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://test")


def _request(pipeline: FakePipeline, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with _client(pipeline) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def _assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and "/work/" not in response.text and ".py" not in response.text
    if code is not None:
        assert error["code"] == code
    return dict(error)


AUDIO = {"audio_file": ("jfk.flac", JFK_FLAC.read_bytes(), "audio/flac")}
OPENAI_AUDIO = {"file": ("jfk.flac", JFK_FLAC.read_bytes(), "audio/flac")}


@pytest.mark.parametrize("method, path, kwargs, status, param", [
    ("POST", "/transcribe", {"files": AUDIO, "data": {"min_speakers": "abc"}}, 422, "min_speakers"),
    ("POST", "/transcribe?max_speakers=0", {"files": AUDIO}, 422, "max_speakers"),
    ("POST", "/transcribe", {"data": {"language": "en"}}, 400, "audio_file"),
    ("POST", "/v1/audio/transcriptions", {"files": OPENAI_AUDIO, "data": {"response_format": "xml"}}, 400,
     "response_format"),
    ("POST", "/v1/audio/translations", {"files": OPENAI_AUDIO, "data": {"temperature": "hot"}}, 400, "temperature"),
    ("POST", "/v1/audio/transcriptions", {"files": OPENAI_AUDIO, "data": {"model": "gpt-9"}}, 404, "model"),
    ("POST", "/detect-language", {"files": AUDIO, "data": {"top_k": "abc"}}, 422, "top_k"),
    ("POST", "/detect-language", {"files": AUDIO, "data": {"top_k": "99"}}, 422, "top_k"),
    ("GET", "/v1/models/nope", {}, 404, "model"),
    ("GET", "/jobs/no-such-task", {}, 404, "task_id"),
    ("GET", "/no/such/route", {}, 404, None),
])
def test_every_route_answers_bad_input_in_the_envelope(
    method: str, path: str, kwargs: dict[str, Any], status: int, param: str | None
) -> None:
    error = _assert_envelope(_request(FakePipeline(), method, path, **kwargs), status)
    assert error["param"] == param


def test_an_unforeseen_exception_is_a_500_envelope_without_details() -> None:
    response = _request(FakePipeline(KeyError("/secret/path.py")), "POST", "/transcribe", files=AUDIO)
    error = _assert_envelope(response, 500, "internal_error")
    assert "secret" not in response.text and error["type"] == "server_error"


def test_a_client_request_id_is_kept_and_every_answer_carries_one() -> None:
    given = _request(FakePipeline(), "POST", "/transcribe", files=AUDIO, headers={"x-request-id": "abc123"})
    assert given.status_code == 200 and given.headers["x-request-id"] == "abc123"
    assert given.json()["request_id"] == "abc123"
    srt = _request(FakePipeline(), "POST", "/transcribe?output_format=srt", files=AUDIO)
    assert srt.status_code == 200 and len(srt.headers["x-request-id"]) == 16
    for path in ("/v1/models", "/healthz-not-there"):
        assert _request(FakePipeline(), "GET", path).headers["x-request-id"]
