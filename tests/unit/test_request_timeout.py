"""BentoML's per-call timeout as every process of the graph serves it: a call whose answer does not
start in time gets 504, and a finished call leaves no timer (nor the context it holds) behind."""

from __future__ import annotations

import asyncio
from typing import Any

from whisperx_service.request_timeout import RequestTimeout, cancel_request_timers


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _never_answers(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.sleep(3600)


async def _call(app: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app({"type": "http", "method": "POST", "path": "/decode", "headers": []}, receive, send)
    return sent


def _live_timers(loop: asyncio.AbstractEventLoop) -> int:
    """The middleware's timers still scheduled (asyncio's timer heap)."""
    scheduled: list[asyncio.TimerHandle] = getattr(loop, "_scheduled")  # noqa: B009
    return sum(1 for handle in scheduled
               if not handle.cancelled() and getattr(handle, "_callback", None).__name__ == "_set_timer_out")


def test_finished_calls_leave_no_timer() -> None:
    async def scenario() -> tuple[int, list[list[dict[str, Any]]]]:
        middleware = RequestTimeout(_answer, timeout=3600)
        answers = await asyncio.gather(*(_call(middleware) for _ in range(300)))
        return _live_timers(asyncio.get_running_loop()), answers

    live, answers = asyncio.run(scenario())
    assert live == 0
    assert all(a[0]["status"] == 200 and a[1]["body"] == b"ok" for a in answers)


def test_a_call_without_an_answer_in_time_gets_504() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], int]:
        sent = await _call(RequestTimeout(_never_answers, timeout=0.05))
        return sent, _live_timers(asyncio.get_running_loop())

    sent, live = asyncio.run(scenario())
    assert sent[0]["status"] == 504
    assert b"0.05 seconds" in sent[1]["body"]
    assert live == 0


def test_bentoml_builds_its_apps_with_it() -> None:
    from bentoml._internal.server.base_app import BaseAppFactory

    cancel_request_timers()

    class App(BaseAppFactory):  # type: ignore[misc]
        name = "probe"

    assert [m.cls for m in App(timeout=30.0).middlewares] == [RequestTimeout]
