"""Every answer of the served gateway carries its request id, and every error, BentoML's own routes
included, is OpenAI's envelope with that id and nothing of our internals."""

from __future__ import annotations

from typing import Any

import pytest

from tests.data import JFK_FLAC
from tests.served.conftest import Served

pytestmark = pytest.mark.served


def _assert_envelope(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    for leak in ("Traceback", ".py", "/work", "/tmp", "site-packages"):
        assert leak not in response.text
    return dict(error)


@pytest.mark.parametrize("method, path, kwargs, status", [
    ("GET", "/jobs/transcribe/status", {}, 400),                              # BentoML's task route, no id
    ("GET", "/jobs/transcribe/status?task_id=no-such-task", {}, 404),
    ("GET", "/jobs/transcribe/get?task_id=no-such-task", {}, 404),
    ("POST", "/jobs/transcribe/submit", {"json": {"audio_file": "x"}}, 415),  # not a form
    ("POST", "/detect-language", {"data": {"top_k": "abc"}}, 422),             # FastAPI's validation
    ("GET", "/v1/nothing-here", {}, 404),
])
def test_errors_of_every_kind_of_route_are_enveloped(
    served: Served, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    with served.client(timeout=60) as http:
        _assert_envelope(http.request(method, path, **kwargs), status)


def test_a_client_request_id_comes_back_on_every_format(served: Served) -> None:
    with served.client() as http, JFK_FLAC.open("rb") as fh:
        body = fh.read()
        for fmt in ("json", "srt"):
            response = http.post(f"/transcribe?output_format={fmt}&diarize=false",
                                 files={"audio_file": ("jfk.flac", body)}, headers={"x-request-id": f"mine-{fmt}"})
            assert response.status_code == 200 and response.headers["x-request-id"] == f"mine-{fmt}"
        response = http.post("/v1/audio/transcriptions", data={"model": "whisper-1", "response_format": "text"},
                             files={"file": ("jfk.flac", body)})
        assert response.status_code == 200 and len(response.headers["x-request-id"]) == 16
        assert http.get("/v1/models").headers["x-request-id"]
        assert f"req={response.headers['x-request-id']}" in served.log()  # the id names its log lines
