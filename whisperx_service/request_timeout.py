"""BentoML's per-request timeout, with its timer cancelled when the request ends.

BentoML 1.4's ``TimeoutMiddleware`` (every service: the gateway and each runner) schedules one
``loop.call_later(timeout, ...)`` per HTTP call and never cancels it. The timer keeps a copy of the
call's context (its tracing span, and through it the request's ASGI objects) until it fires, so a
process kept every call's objects for the whole timeout (an hour here): memory that grows with the
request rate, not with the work in flight. `RequestTimeout` behaves as BentoML's (a 504 when no
answer has started within the timeout) and cancels its timer once the call is over.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse


class RequestTimeout(traffic.TimeoutMiddleware):  # type: ignore[misc]
    """504 when a call's answer has not started within `timeout` s; nothing kept after the call."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, started)

        async def first_send(message: Any) -> None:
            if not started.done():
                started.set_result(None)
            await send(message)

        call = asyncio.ensure_future(self.app(scope, receive, first_send))
        try:
            await started
        except TimeoutError:
            if call.cancel():
                answer = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                      status_code=504)
                await answer(scope, receive, send)
        else:
            await call
        finally:
            timer.cancel()


def cancel_request_timers() -> None:
    """Make every BentoML app built in this process use `RequestTimeout` (BentoML looks the
    middleware up in its module when it builds an app, after the service module is imported)."""
    traffic.TimeoutMiddleware = RequestTimeout  # type: ignore[misc]
