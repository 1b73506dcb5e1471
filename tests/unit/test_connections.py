"""Runner connections' bounded life: the call that reaches a connection's bound is answered in full
with ``Connection: close``; earlier calls and other connections keep theirs alive."""

from __future__ import annotations

import asyncio
from typing import Any

from whisperx_service.connections import ConnectionRecycler


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"decoded"})


def _call(recycler: ConnectionRecycler, peer: tuple[str, int]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    asyncio.run(recycler({"type": "http", "client": peer, "headers": []}, receive, send))
    return sent


def _closes(sent: list[dict[str, Any]]) -> bool:
    return (b"connection", b"close") in sent[0]["headers"]


def test_closed_after_max_requests_with_the_answer_whole() -> None:
    recycler = ConnectionRecycler(_app, max_requests=3, max_age_s=1e9)
    first = ("10.0.0.1", 40000)
    answers = [_call(recycler, first) for _ in range(3)]
    assert [_closes(a) for a in answers] == [False, False, True]
    assert all(a[1]["body"] == b"decoded" and a[0]["status"] == 200 for a in answers)  # nothing cut
    assert not _closes(_call(recycler, ("10.0.0.1", 40001)))  # another connection: its own count
    assert not _closes(_call(recycler, first))  # the port reused by a new connection: counted anew


def test_closed_after_max_age() -> None:
    now = [0.0]
    recycler = ConnectionRecycler(_app, max_requests=10**6, max_age_s=30, clock=lambda: now[0])
    peer = ("10.0.0.2", 50000)
    assert not _closes(_call(recycler, peer))
    now[0] = 29.0
    assert not _closes(_call(recycler, peer))
    now[0] = 30.5
    assert _closes(_call(recycler, peer))


def test_connections_the_client_closed_are_forgotten() -> None:
    now = [0.0]
    recycler = ConnectionRecycler(_app, max_requests=10**6, max_age_s=30, clock=lambda: now[0])
    for port in range(300):
        _call(recycler, ("10.0.0.3", port))
    now[0] = 1000.0
    for port in range(300, 600):
        _call(recycler, ("10.0.0.3", port))
    assert len(recycler.seen) <= 300
