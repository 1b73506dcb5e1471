from __future__ import annotations

import aiohttp
import pytest
from _bentoml_impl.client.proxy2 import RemoteProxy
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from whisperx_service.errors import InvalidAudio, StageFailed, map_stage_error


def test_error_body_is_openai_envelope() -> None:
    body = InvalidAudio("nope", param="audio_file").to_body()
    assert body == {"error": {"message": "nope", "type": "invalid_request_error", "param": "audio_file", "code": "invalid_audio"}}


@pytest.mark.parametrize(
    "exc, status",
    [(TimeoutError(), 504), (ServiceUnavailable("busy"), 503), (BentoMLException("boom"), 502), (RuntimeError("x"), 502)],
)
def test_runner_failures_name_the_stage(exc: BaseException, status: int) -> None:
    mapped = map_stage_error("diarize", exc)
    assert isinstance(mapped, StageFailed)
    assert mapped.status_code == status
    assert mapped.to_body()["error"]["code"] == "diarize_failed"
    assert mapped.message.startswith("diarize stage failed")


def test_our_errors_pass_through_and_unknown_ones_are_not_swallowed() -> None:
    err = InvalidAudio("bad")
    assert map_stage_error("asr", err) is err
    with pytest.raises(KeyError):
        map_stage_error("asr", KeyError("programming error"))


def test_a_runner_connection_still_dead_after_the_retries_is_a_502_not_a_crash() -> None:
    mapped = map_stage_error("asr", aiohttp.ServerDisconnectedError())
    assert isinstance(mapped, StageFailed)
    assert mapped.status_code == 502
    assert "connection lost" in mapped.message


def test_the_gateway_never_recycles_a_runner_session_under_calls_in_flight() -> None:
    """BentoML's default closes its session to a runner every 100 calls, cutting those in flight.

    Read back from the client BentoML builds for each dependency, so a renamed option fails here.
    """
    import service

    service.Gateway.inject_config()
    for runner in (service.ASR, service.Aligner, service.Diarizer):
        sessions = RemoteProxy("http://127.0.0.1:9", service=runner)._async._session_manager
        assert sessions.max_requests >= 10**12, runner.name
        assert sessions.max_age >= 10**9, runner.name
