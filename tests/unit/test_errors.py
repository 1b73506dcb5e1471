from __future__ import annotations

import pytest
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
