"""The gateway's front door and lifecycle on a stand-in ASGI app (no models, no server)."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import pytest

from whisperx_service.config import Settings
from whisperx_service.errors import Unavailable
from whisperx_service.guard import GatewayGuard
from whisperx_service.lifecycle import AudioBudget, Lifecycle


class _Metric:
    def labels(self, **_: str) -> _Metric:
        return self

    def inc(self, *_: float) -> None:
        pass


class _Metrics:
    rejected = _Metric()
    requests = _Metric()


class _Gateway:
    def __init__(self, max_in_flight: int = 2) -> None:
        self.lifecycle = Lifecycle(max_in_flight=max_in_flight, retry_after_s=7, grace_s=5)
        self.metrics = _Metrics()
        self.job_board: Any = None


async def _reading_app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body, then answers 200 with its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


async def _call(guard: GatewayGuard, method: str = "POST", path: str = "/transcribe",
                headers: dict[str, str] | None = None, chunks: list[bytes] | None = None) -> tuple[int, dict[str, str], Any]:
    scope = {"type": "http", "method": method, "path": path, "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    pending = list(chunks or [b""])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await guard(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    response_headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = body.decode()
    return start["status"], response_headers, parsed


FORM = {"content-type": "multipart/form-data; boundary=x"}


def _guard(gateway: _Gateway, **settings: Any) -> GatewayGuard:
    return GatewayGuard(_reading_app, settings=Settings(**settings), gateway=lambda: gateway)


def test_api_keys_are_required_when_configured() -> None:
    guard = _guard(_Gateway(), api_keys="k1,k2")
    assert asyncio.run(_call(guard, headers=FORM))[0] == 401
    status, headers, body = asyncio.run(_call(guard, headers={**FORM, "authorization": "Bearer nope"}))
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert body["error"]["code"] == "invalid_api_key"
    assert asyncio.run(_call(guard, headers={**FORM, "authorization": "Bearer k2"}))[0] == 200
    assert asyncio.run(_call(guard, method="GET", path="/healthz"))[0] == 200  # probes stay open


def test_upload_limits_by_header_and_while_streaming() -> None:
    guard = _guard(_Gateway(), max_upload_mb=1)
    status, _, body = asyncio.run(_call(guard, headers={**FORM, "content-length": str(2 << 20)}))
    assert status == 413 and body["error"]["code"] == "upload_too_large"
    chunked = [b"x" * (256 << 10)] * 5  # 1.25 MiB with no Content-Length
    status, headers, body = asyncio.run(_call(guard, headers=FORM, chunks=chunked))
    assert status == 413 and body["error"]["code"] == "upload_too_large"
    status, headers, body = asyncio.run(_call(guard, headers=FORM, chunks=[b"x" * 1000] * 3))
    assert (status, body) == (200, 3000) and set(headers) == {"x-request-id"}  # the app's answer, untouched


@pytest.mark.parametrize("content_type, status", [
    ("application/json", 415), ("text/plain", 415), ("multipart/form-data", 400),
    ("application/x-www-form-urlencoded", 200), ("multipart/form-data; boundary=abc", 200),
])
def test_post_bodies_must_be_forms(content_type: str, status: int) -> None:
    assert asyncio.run(_call(_guard(_Gateway()), headers={"content-type": content_type}))[0] == status


def test_over_the_limit_is_503_with_retry_after_and_the_slot_is_released() -> None:
    gateway = _Gateway(max_in_flight=1)
    guard = _guard(gateway)
    with gateway.lifecycle.hold():
        status, headers, body = asyncio.run(_call(guard, headers=FORM))
        assert status == 503 and headers["retry-after"] == "7" and body["error"]["code"] == "overloaded"
    assert asyncio.run(_call(guard, headers=FORM))[0] == 200
    assert gateway.lifecycle.in_flight == 0


def test_an_overloaded_upload_is_read_to_its_end_before_the_503_and_the_connection_kept() -> None:
    """Answering first and closing left the upload unread: the kernel reset the connection and the
    client got the reset instead of the 503."""
    gateway = _Gateway(max_in_flight=1)
    guard = _guard(gateway)
    pending = [b"x" * 1000] * 4
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        assert not pending, "answered before the upload was read"
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/transcribe", "query_string": b"",
             "headers": [(b"content-type", FORM["content-type"].encode())]}
    with gateway.lifecycle.hold():
        asyncio.run(guard(scope, receive, send))
    start = sent[0]
    assert start["status"] == 503
    assert b"connection" not in dict(start["headers"])


class _FakeUvicorn:
    def __init__(self) -> None:
        self.config = type("Config", (), {"timeout_graceful_shutdown": None})()
        self.exits: list[int] = []

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.exits.append(sig)


def test_drain_waits_for_accepted_work_then_hands_over_to_uvicorn() -> None:
    async def scenario() -> tuple[list[int], list[int], bool]:
        lifecycle = Lifecycle(max_in_flight=4, retry_after_s=3, grace_s=10)
        server = _FakeUvicorn()
        hold = lifecycle.hold()
        hold.__enter__()
        lifecycle._begin_drain(server)
        with pytest.raises(Unavailable):  # new work is refused while draining
            lifecycle.check_admission()
        await asyncio.sleep(0.3)
        before = list(server.exits)  # still draining: one request in flight
        hold.__exit__(None, None, None)
        await asyncio.sleep(0.3)
        return before, server.exits, server.config.timeout_graceful_shutdown is not None

    before, after, bounded = asyncio.run(scenario())
    assert before == [] and after == [signal.SIGTERM] and bounded


def test_audio_budget_refuses_a_request_at_once_and_lets_a_job_wait_its_turn() -> None:
    async def scenario() -> tuple[str, list[str], float]:
        rejected: list[str] = []
        budget = AudioBudget(600, retry_after_s=3, on_reject=rejected.append)
        order: list[str] = []
        first_done = asyncio.Event()

        async def first() -> None:
            async with budget.hold(400, wait=False):
                order.append("first")
                await first_done.wait()
            order.append("first released")

        async def job() -> None:
            async with budget.hold(300, wait=True):  # 400 + 300 > 600: waits for the first
                order.append("job")

        runner = asyncio.create_task(first())
        await asyncio.sleep(0)
        waiting = asyncio.create_task(job())
        await asyncio.sleep(0.05)
        with pytest.raises(Unavailable) as caught:  # a sync request that does not fit: 503 at once
            async with budget.hold(300, wait=False):
                pass
        assert caught.value.code == "overloaded" and caught.value.headers() == {"Retry-After": "3"}
        assert order == ["first"]
        first_done.set()
        await asyncio.wait_for(asyncio.gather(runner, waiting), timeout=2)
        async with budget.hold(5000, wait=False):  # longer than the whole budget: runs alone
            alone = budget.in_flight_s
        return ",".join(order), rejected, alone + budget.in_flight_s

    order, rejected, held = asyncio.run(scenario())
    assert order == "first,first released,job"
    assert rejected == ["overloaded"]
    assert held == 5000
