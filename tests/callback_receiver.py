"""A real loopback HTTP receiver for job callbacks (aiohttp, in its own thread), and a bare TCP
listener that only counts the connections it accepts (a host callbacks must never reach)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

HOLD_S = 3.0


@dataclass
class Hit:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class Receiver:
    """Answers each POST with the next status of `statuses` (the last one repeats); status 0:
    hold the request for `HOLD_S` (longer than a test's callback timeout), then answer 200."""

    host: str = "127.0.0.1"
    statuses: dict[str, list[int]] = field(default_factory=dict)  # path -> statuses in order
    hits: list[Hit] = field(default_factory=list)
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def answer(self, path: str, *statuses: int) -> str:
        self.statuses[path] = list(statuses)
        return self.url(path)

    def hits_to(self, path: str) -> list[Hit]:
        with self._lock:
            return [hit for hit in self.hits if hit.path == path]

    def wait_for(self, path: str, count: int, timeout_s: float = 120) -> list[Hit]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hits = self.hits_to(path)
            if len(hits) >= count:
                return hits
            time.sleep(0.05)
        raise AssertionError(f"{len(self.hits_to(path))} of {count} callbacks to {path} after {timeout_s} s")

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            self.hits.append(Hit(request.path, {k.lower(): v for k, v in request.headers.items()}, body))
            seen = sum(1 for hit in self.hits if hit.path == request.path)
        statuses = self.statuses.get(request.path, [200])
        status = statuses[min(seen, len(statuses)) - 1]
        if status == 0:
            await asyncio.sleep(HOLD_S)
            status = 200
        if 300 <= status < 400:
            return web.Response(status=status, headers={"Location": self.url("/redirected")})
        return web.Response(status=status, text="ok" if status < 300 else "no")


@contextlib.contextmanager
def receiver(host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """A `Receiver` serving on `host` and a free port until the block ends (TLS with `ssl_context`)."""
    found = Receiver(host=host)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner: dict[str, Any] = {}

    async def start() -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", found._handle)
        runner["r"] = web.AppRunner(app, access_log=None)
        await runner["r"].setup()
        site = web.TCPSite(runner["r"], host, 0, ssl_context=ssl_context)
        await site.start()
        found.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10), "callback receiver did not start"
    try:
        yield found
    finally:
        asyncio.run_coroutine_threadsafe(runner["r"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@dataclass
class Listener:
    port: int
    accepted: int = 0


@contextlib.contextmanager
def counting_listener(host: str) -> Iterator[Listener]:
    """A TCP listener on `host` that counts the connections it accepts (and closes them)."""
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen(16)
    sock.settimeout(0.1)
    listener = Listener(port=int(sock.getsockname()[1]))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            listener.accepted += 1
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(5)
        sock.close()
