"""One exception hierarchy, and the one place where foreign errors become ours.

Every error a client can see is a `ServiceError`; the gateway turns it into
``{"error": {"message", "type", "param", "code"}}`` (OpenAI's envelope, so OpenAI clients
read it too) with `status_code`. Runner failures become `StageFailed` naming the stage.
"""

from __future__ import annotations

import asyncio
from typing import Any


class ServiceError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(ServiceError):
    """The client sent something we cannot use; nothing was computed."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class InvalidParameter(InvalidRequest):
    status_code = 422
    code = "invalid_parameter"


class UnsupportedValue(InvalidRequest):
    """An OpenAI-API field has a value the API does not take (OpenAI answers these with 400)."""

    code = "invalid_value"


class ModelNotFound(InvalidRequest):
    """The OpenAI-API `model` names no model this service holds (OpenAI's 404 model_not_found)."""

    status_code = 404
    code = "model_not_found"


class JobNotFound(InvalidRequest):
    status_code = 404
    code = "job_not_found"


class MissingFile(InvalidRequest):
    code = "missing_file"


class EmptyUpload(InvalidRequest):
    code = "empty_file"


class InvalidAudio(InvalidRequest):
    """ffmpeg could not decode the upload (not audio, truncated, corrupt header)."""

    code = "invalid_audio"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    code = "upload_too_large"


class AudioTooLong(InvalidRequest):
    status_code = 413
    code = "audio_too_long"


class StageFailed(ServiceError):
    """A runner (ASR, alignment, diarization) failed: the request fails whole, never partially."""

    status_code = 502
    code = "stage_failed"

    def __init__(self, stage: str, message: str, *, status_code: int | None = None) -> None:
        super().__init__(f"{stage} stage failed: {message}", code=f"{stage}_failed")
        self.stage = stage
        if status_code is not None:
            self.status_code = status_code


def map_stage_error(stage: str, exc: BaseException) -> ServiceError:
    """Turn whatever a runner call raised into one of ours; the only place that knows BentoML's."""
    if isinstance(exc, ServiceError):
        return exc
    from bentoml.exceptions import BentoMLException, ServiceUnavailable

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return StageFailed(stage, "timed out", status_code=504)
    if isinstance(exc, ServiceUnavailable):
        return StageFailed(stage, "runner is overloaded or unavailable", status_code=503)
    if isinstance(exc, BentoMLException):
        return StageFailed(stage, str(exc) or type(exc).__name__)
    if isinstance(exc, (OSError, RuntimeError, ValueError)):
        return StageFailed(stage, f"{type(exc).__name__}: {exc}")
    raise exc
