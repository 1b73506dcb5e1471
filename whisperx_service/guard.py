"""The gateway's front door: one ASGI middleware in front of every route, BentoML's own included.

Every request gets an id (the client's ``x-request-id``, or a new one), every response carries
it, and every error body is OpenAI's envelope with it: BentoML's own routes answer errors in other
shapes, and an exception nothing else caught becomes a 500 envelope with no trace or path.

In order, for each HTTP request:
1. ``/healthz``, ``/livez``, ``/metrics`` pass untouched; ``/readyz`` answers 503 while draining
   and is cut off after a few seconds (BentoML's probe of the runners can otherwise hang).
2. API key (when keys are configured): ``Authorization: Bearer <key>``, compared in constant
   time against every key; 401 otherwise. Keys and headers are never logged. The web page, its
   assets and the Swagger page (GET) need no key.
3. Upload size: 413 on a Content-Length over the limit; a chunked body is counted as it streams
   and answered 413 as soon as it crosses the limit.
4. POST bodies must be forms, ``multipart/form-data`` to carry a file (415 otherwise).
5. Result routes of async jobs (local job store): 404 for an unknown id, 422 for a job whose form
   BentoML could not read (BentoML itself answers both with a 500). With a shared (Redis) job store
   the job routes are answered by `whisperx_service.http.shared_jobs`, and ``/readyz`` also needs
   that store to answer.
6. Admission: a POST (model work) is admitted by the gateway's `Lifecycle`, or answered 503 with
   Retry-After at once (overloaded, or shutting down).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from .config import Settings
from .errors import (
    InvalidRequest,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    from_http_exception,
    internal_error,
)
from .http.page import is_page_path
from .jobs import TASK_RESULT_PATHS, task_result_error
from .logs import bind_request_id, new_request_id

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})
# Read without a key: the web page and Swagger UI hold no secret (their API calls send the key).
OPEN_GET_PREFIXES = ("/static_content/",)
OPEN_GET_PATHS = frozenset({"/docs.json"})
READYZ_TIMEOUT_S = 8.0
# Form bodies: a urlencoded form carries no file, but gets the clearer "missing file" 400 downstream.
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class _BodyTooLarge(Exception):
    """Raised into the app from `receive` when a streamed body crosses the limit."""


REQUEST_ID_HEADER = b"x-request-id"
logger = logging.getLogger("whisperx_service.gateway")


async def send_error(send: Send, error: ServiceError, extra_headers: dict[str, str] | None = None) -> None:
    """Answer with `error` in the envelope (the request id is added by `_enveloping`'s send)."""
    body = json.dumps(error.to_body()).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body)),
               **error.headers(), **(extra_headers or {})}
    await send({"type": "http.response.start", "status": error.status_code,
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})
    await send({"type": "http.response.body", "body": body})


class GatewayGuard:
    """See the module doc. `gateway` gives the running gateway instance (its `lifecycle`, `metrics`)."""

    def __init__(self, app: ASGIApp, settings: Settings, gateway: Callable[[], Any]) -> None:
        self.app = app
        self.keys = settings.accepted_keys()
        self.max_bytes = settings.max_upload_mb * 1024 * 1024
        self.max_mb = settings.max_upload_mb
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _ensure_request_id(scope)
        enveloped = _Enveloping(send, request_id)
        with bind_request_id(request_id):
            try:
                await self._guarded(scope, receive, enveloped.send)
            except Exception:  # noqa: BLE001 - the boundary: whatever escaped is logged, answered 500
                if enveloped.started:  # answered already (the app's own handler logged it)
                    return
                logger.exception("unhandled failure")
                await send_error(enveloped.send, internal_error())

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path in OPEN_PATHS:
            if path == "/readyz":
                await self._readyz(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        gateway = self.gateway()
        try:
            if not (scope["method"] in ("GET", "HEAD") and _is_open_get(path)):
                self._authorize(headers)
            self._check_declared_body(scope["method"], headers)
        except ServiceError as error:
            self._rejected(gateway, error)
            await send_error(send, error)
            return
        if (gateway is not None and scope["method"] == "GET" and path in TASK_RESULT_PATHS
                and getattr(gateway, "shared_jobs", None) is None):  # the local job store
            task_id = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("task_id", [""])[0]
            answer = await task_result_error(gateway.job_board, task_id) if task_id else None
            if answer is not None:
                await send_error(send, answer)
                return
        if scope["method"] != "POST" or gateway is None:
            await self.app(scope, receive, send)
            return
        lifecycle = gateway.lifecycle
        try:
            lifecycle.check_admission()
        except Unavailable as error:
            self._rejected(gateway, error)
            # Read the upload before answering. Answering at once and closing left its bytes unread,
            # so the kernel reset the connection and the client often got the reset, not the 503
            # (measured: 1 of ~1,500 rejections under 32 clients; most of 48 at 64 concurrent uploads).
            whole = await self._discard_body(receive)
            await send_error(send, error, None if whole else {"connection": "close"})
            return
        with lifecycle.hold():
            await self._call_with_body_limit(gateway, scope, receive, send)

    def _authorize(self, headers: dict[str, str]) -> None:
        if not self.keys:
            return
        scheme, _, presented = headers.get("authorization", "").partition(" ")
        token = presented.strip().encode()
        # Compare against every key, always: no early exit, nothing timing-dependent on which matched.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(token, key)
        if scheme.lower() != "bearer" or not token or not matched:
            raise Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>'")

    def _check_declared_body(self, method: str, headers: dict[str, str]) -> None:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise self._too_large()
        content_type = headers.get("content-type", "").lower()
        if method != "POST" or not content_type:
            return
        if not content_type.startswith(FORM_TYPES):
            raise UnsupportedMediaType(
                f"send multipart/form-data with the recording as a file field, not {content_type[:80]!r}"
            )
        if content_type.startswith("multipart/") and "boundary=" not in content_type:
            raise InvalidRequest("the multipart/form-data content type has no boundary parameter")

    async def _call_with_body_limit(self, gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, answering 413 (and dropping the app's own answer) once the body is too big."""
        received = 0
        too_large = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large:
                return  # the app's answer to a body it could not read: ours goes out instead
            if message["type"] == "http.response.start":
                started = True
                gateway.metrics.requests.labels(status=str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:  # noqa: BLE001 - only what our abort of the body caused is swallowed
            if not too_large:
                raise
        if too_large and not started:
            error = self._too_large()
            self._rejected(gateway, error)
            await send_error(send, error, {"connection": "close"})

    async def _discard_body(self, receive: Receive) -> bool:
        """Read the request body to its end and drop it; False if the client left or it is too big."""
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                return False
            if not message.get("more_body", False):
                return True

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"upload is larger than {self.max_mb} MiB", param="audio_file")

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway()
        if gateway is not None and gateway.lifecycle.draining:
            await send_error(send, Unavailable("shutting down", retry_after_s=gateway.lifecycle.retry_after_s,
                                               code="shutting_down"))
            return
        shared = getattr(gateway, "shared_jobs", None)
        if shared is not None and not await shared.ready():
            await send_error(send, Unavailable("the shared job store (WXS_JOB_STORE) does not answer",
                                               retry_after_s=5, code="not_ready"))
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), READYZ_TIMEOUT_S)
        except TimeoutError:
            if not started:
                await send_error(send, Unavailable("runners did not answer the readiness probe in time",
                                                   retry_after_s=5, code="not_ready"))

    @staticmethod
    def _rejected(gateway: Any, error: ServiceError) -> None:
        if gateway is not None:
            gateway.metrics.rejected.labels(reason=error.code).inc()


def _is_open_get(path: str) -> bool:
    return is_page_path(path) or path in OPEN_GET_PATHS or path.startswith(OPEN_GET_PREFIXES)


def _ensure_request_id(scope: Scope) -> str:
    """The client's ``x-request-id`` (bounded), or a new one put on the request for the routes."""
    headers: list[tuple[bytes, bytes]] = list(scope["headers"])
    for name, value in headers:
        if name.lower() == REQUEST_ID_HEADER:
            given = value.decode("latin-1").strip()[:64]
            if given and given.isprintable():
                return given
    request_id = new_request_id()
    scope["headers"] = [(n, v) for n, v in headers if n.lower() != REQUEST_ID_HEADER] + [
        (REQUEST_ID_HEADER, request_id.encode())]
    return request_id


class _Enveloping:
    """A `send` that puts the request id on every response and any non-envelope error body into
    OpenAI's envelope (BentoML's own routes answer some errors as ``{"error": "..."}`` or text)."""

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self.request_id = request_id
        self.started = False
        self._held: Message | None = None  # an error's start message, until its body is seen
        self._body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = [(n, v) for n, v in message.get("headers", []) if n.lower() != REQUEST_ID_HEADER]
            message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, self.request_id.encode())]}
            if int(message["status"]) >= 400:
                self._held = message
                return
            await self._send(message)
            return
        if message["type"] == "http.response.body" and self._held is not None:
            self._body += message.get("body", b"")
            if message.get("more_body", False):
                return
            start, self._held = self._held, None
            await self._send_error_body(start, self._body)
            return
        await self._send(message)

    async def _send_error_body(self, start: Message, body: bytes) -> None:
        status = int(start["status"])
        try:
            parsed = json.loads(body or b"null")
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            parsed["error"]["request_id"] = self.request_id
        else:
            detail = parsed.get("error") or parsed.get("detail") if isinstance(parsed, dict) else None
            if status >= 500:  # BentoML's text may carry a trace: keep ours
                detail = internal_error().message
            error = from_http_exception(status, detail or body.decode("utf-8", "replace")[:200] or "refused")
            parsed = error.to_body(self.request_id)
        out = json.dumps(parsed).encode()
        headers = [(n, v) for n, v in start.get("headers", [])
                   if n.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": out})
