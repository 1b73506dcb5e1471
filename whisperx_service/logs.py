"""Logging with request ids: every line a request causes, in the gateway or a runner, names it."""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


@contextmanager
def bind_request_id(request_id: str | None) -> Iterator[None]:
    token = _request_id.set(request_id or "-")
    try:
        yield
    finally:
        _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


_FORMAT = "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s] %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Attach the request-id filter and format to our loggers (idempotent)."""
    logger = logging.getLogger("whisperx_service")
    if any(isinstance(f, RequestIdFilter) for h in logger.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
