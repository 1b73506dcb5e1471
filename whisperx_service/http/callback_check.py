"""The submit-time check of a job's callback fields when BentoML reads the form (local job store).

BentoML's ``<route>/submit`` stores the whole request and answers before our code sees a field, so
a refused ``callback_url`` would only fail later, inside the job. `checked_submit` reads the
callback fields off the body as it streams through to BentoML (nothing is buffered: the text fields
are kept, file bytes are only scanned for the part boundary) and holds back the body's last
message until the fields are checked. A refused callback stops the body there, so BentoML never
stores the task, and the client gets the 400 naming the field.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from pydantic import BaseModel, Field
from python_multipart.multipart import MultipartParser, parse_options_header

from ..callbacks import CALLBACK_FIELDS, MAX_AUTH_CHARS, MAX_URL_CHARS, CallbackPolicy
from ..errors import InvalidRequest, ServiceError

logger = logging.getLogger("whisperx_service.callbacks")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
_KEEP = max(MAX_URL_CHARS, MAX_AUTH_CHARS) + 1  # more than any accepted value: the check refuses it


class CallbackFields(BaseModel):
    """The job forms' callback fields (both job APIs, both job stores)."""

    callback_url: str | None = Field(
        None, description="POSTed to (signed JSON: task_id, state, result_url) when the job ends; its host "
        "must be in WXS_CALLBACK_ALLOWED_HOSTS.", examples=["https://hooks.example.com/asr-done"])
    callback_auth_header: str | None = Field(
        None, description="Sent as the callback's Authorization header.", examples=["Bearer s3cret"])


class _Refused(BaseException):  # noqa: N818 - a signal, not an error
    """Raised into BentoML from `receive`: the body stops before BentoML could store the task.
    Not an `Exception`: BentoML's submit logs every Exception as an ERROR with its traceback, and
    this is a client's 400, not a failure of ours."""


class CallbackFieldReader:
    """The callback fields of a form body, fed chunk by chunk (multipart or urlencoded)."""

    def __init__(self, content_type: str) -> None:
        self.fields: dict[str, str] = {}
        self._values: dict[str, bytearray] = {}
        self._urlencoded = bytearray()
        self._parser: MultipartParser | None = None
        media, options = parse_options_header(content_type)
        if media == b"multipart/form-data":
            boundary = options.get(b"boundary")
            if not boundary:
                raise InvalidRequest("the multipart/form-data content type has no boundary parameter")
            self._parser = self._multipart(boundary)

    def _multipart(self, boundary: bytes) -> MultipartParser:
        header_field = bytearray()
        header_value = bytearray()
        current: list[str | None] = [None]

        def on_part_begin() -> None:
            current[0] = None

        def on_header_field(data: bytes, start: int, end: int) -> None:
            header_field.extend(data[start:end])

        def on_header_value(data: bytes, start: int, end: int) -> None:
            header_value.extend(data[start:end])

        def on_header_end() -> None:
            if header_field.lower() == b"content-disposition":
                _, options = parse_options_header(bytes(header_value))
                name = options.get(b"name", b"").decode("latin-1")
                current[0] = name if name in CALLBACK_FIELDS else None
                if current[0] is not None:
                    self._values[name] = bytearray()
            header_field.clear()
            header_value.clear()

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if current[0] is not None:
                value = self._values[current[0]]
                value.extend(data[start:min(end, start + _KEEP - len(value))])

        return MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end, "on_part_data": on_part_data,
        })

    def feed(self, chunk: bytes) -> None:
        if self._parser is not None:
            self._parser.write(chunk)
        elif len(self._urlencoded) < 4 * _KEEP * 8:
            self._urlencoded.extend(chunk)

    def finish(self) -> dict[str, str]:
        if self._parser is not None:
            self._parser.finalize()
            self.fields = {name: value.decode("utf-8", "replace") for name, value in self._values.items()}
        else:
            for name, value in parse_qsl(self._urlencoded.decode("latin-1")):
                if name in CALLBACK_FIELDS:
                    self.fields[name] = value
        return self.fields


async def checked_submit(app: ASGIApp, scope: Scope, receive: Callable[[], Awaitable[Message]],
                         send: Callable[[Message], Awaitable[None]], policy: CallbackPolicy,
                         send_error: Callable[[ServiceError], Awaitable[None]]) -> None:
    """Run BentoML's submit with its callback fields checked before its body ends (module doc)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    try:
        reader = CallbackFieldReader(headers.get("content-type", ""))
    except ServiceError as error:
        await send_error(error)
        return
    except Exception as exc:  # noqa: BLE001 - a boundary python-multipart refuses: BentoML's parse answers it
        logger.debug("callback fields not read (%s)", type(exc).__name__)
        await app(scope, receive, send)
        return
    refused: ServiceError | None = None
    unreadable = False

    async def reading_receive() -> Message:
        nonlocal refused, unreadable
        message = await receive()
        if message["type"] != "http.request" or unreadable:
            return message
        try:
            reader.feed(message.get("body", b""))
            if not message.get("more_body", False):
                fields = reader.finish()
                await policy.check(fields.get("callback_url"), fields.get("callback_auth_header"))
        except ServiceError as error:
            refused = error
            raise _Refused from error
        except Exception as exc:  # noqa: BLE001 - a malformed multipart body: BentoML's own parse answers it
            logger.debug("callback fields not read (%s)", type(exc).__name__)
            unreadable = True
        return message

    async def dropping_send(message: Message) -> None:
        if refused is None:
            await send(message)

    try:
        await app(scope, reading_receive, dropping_send)
    except BaseException:  # only what our stop of the body caused (perhaps in an exception group)
        if refused is None:
            raise
    if refused is not None:
        logger.info("job submit refused: %s", refused.message)
        await send_error(refused)
