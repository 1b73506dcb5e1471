"""Bounded keep-alive connections on the runners, so that added runner replicas get their share.

The gateway reaches each runner through one address (a Kubernetes Service: kube-proxy picks a pod
per TCP connection) and keeps its connections alive; its client sessions are never recycled
(`config.runner_service_config`: BentoML's recycling closed sessions with calls still in flight).
So a replica added later would get no new connection, and no work, from a busy gateway.

`ConnectionRecycler` bounds each connection from the runner's side instead: once a connection
has served `max_requests` calls or lived `max_age_s`, the answer to its current call carries
``Connection: close``. The call is complete when that header is sent (HTTP/1.1 answers one call
per connection at a time), so nothing in flight is cut; the gateway's client opens a new connection
for its next call, which the Service balances over the pods it has now, the new one included.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]
_SWEEP_EVERY = 256  # calls between sweeps of connections the client closed itself


class ConnectionRecycler:
    """ASGI middleware: ``Connection: close`` on the call that ends a connection's bounded life."""

    def __init__(self, app: ASGIApp, max_requests: int, max_age_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.max_requests = max_requests
        self.max_age_s = max_age_s
        self.clock = clock
        self.seen: dict[tuple[str, int], list[float]] = {}  # peer -> [opened, calls, last call]
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        peer = scope.get("client") if scope["type"] == "http" else None
        if not peer:
            await self.app(scope, receive, send)
            return
        key = (str(peer[0]), int(peer[1]))
        now = self.clock()
        state = self.seen.setdefault(key, [now, 0.0, now])
        state[1] += 1
        state[2] = now
        last = state[1] >= self.max_requests or now - state[0] >= self.max_age_s
        self._sweep(now)

        async def closing_send(message: Message) -> None:
            if last and message["type"] == "http.response.start":
                headers = [(n, v) for n, v in message.get("headers", []) if n.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
                self.seen.pop(key, None)
            await send(message)

        await self.app(scope, receive, closing_send if last else send)

    def _sweep(self, now: float) -> None:
        self.calls += 1
        if self.calls % _SWEEP_EVERY:
            return
        horizon = now - self.max_age_s - 120.0  # idle far longer than any client keeps a connection
        for key in [k for k, state in self.seen.items() if state[2] < horizon]:
            del self.seen[key]


def bound_connections(service: Any) -> None:
    """Put `ConnectionRecycler` in front of a runner service, with the settings' bounds."""
    from .config import get_settings

    settings = get_settings()
    service.add_asgi_middleware(ConnectionRecycler, max_requests=settings.runner_connection_max_requests,
                                max_age_s=settings.runner_connection_max_age_s)
