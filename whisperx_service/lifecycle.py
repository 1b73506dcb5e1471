"""Admission and shutdown of the served graph: the in-flight limit, draining on SIGTERM, and
runners that outlive the gateway.

Why this exists (measured on bentoml 1.4.40 / uvicorn 0.54):
- uvicorn waits, with no time limit, for every request task to end before it exits. A request
  that reached the gateway while the graph was still starting (a `/readyz` probe, typically) can
  hang for good, so one early probe was enough for the gateway to ignore SIGTERM forever (and the
  `bentoml serve` arbiter waits on it).
- circus signals every service of the graph at once: idle runners exit in ~0.2 s, and a gateway
  request that needed one of them afterwards failed with 502.

So on SIGTERM the gateway first *drains*: it answers new work with 503 + Retry-After and
`/readyz` with 503, waits (up to `shutdown_grace_s`) for the requests and jobs it accepted, then
hands the signal to uvicorn with a short graceful timeout, so stuck probes cannot hold it. Each
runner, on SIGTERM, keeps serving until the gateway of its graph has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .errors import Unavailable

logger = logging.getLogger("whisperx_service.lifecycle")

GATEWAY_SERVICE_NAME = "whisperx"  # the gateway's BentoML service name (runners look for it)
_STUCK_TASK_TIMEOUT_S = 2  # what uvicorn still waits once our own requests are done


def _uvicorn_server() -> Any | None:
    """The uvicorn `Server` of this worker, found through the SIGTERM handler it installed."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if server is None or not hasattr(server, "handle_exit") or not hasattr(server, "config"):
        return None
    return server


def _install_sigterm(handler: Any) -> Any | None:
    """Put `handler(server)` in front of uvicorn's SIGTERM handling; returns the server, if any."""
    server = _uvicorn_server()
    if server is None:
        logger.debug("no uvicorn server in this process (not served): SIGTERM keeps its handling")
        return None
    loop = asyncio.get_running_loop()

    def on_sigterm(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(handler, server)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: leave uvicorn's handler alone
        return None
    return server


class Lifecycle:
    """In-flight accounting of one gateway worker: admission, overload answers, drain on SIGTERM."""

    def __init__(self, *, max_in_flight: int, retry_after_s: int, grace_s: float,
                 on_change: Callable[[int], None] | None = None) -> None:
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self.grace_s = grace_s
        self.in_flight = 0
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None  # held so the loop does not drop it
        self.on_change = on_change  # called with the in-flight count (a metrics gauge)

    def check_admission(self) -> None:
        """Raise 503 at once when no new model work may start (never queue towards a timeout).

        Check and `hold` run with no await between them, so on the one event loop they are atomic.
        """
        if self.draining:
            raise Unavailable("the service is shutting down; retry on another replica or later",
                              retry_after_s=self.retry_after_s, code="shutting_down")
        if self.in_flight >= self.max_in_flight:
            raise Unavailable(
                f"the service is at its limit of {self.max_in_flight} requests in flight; retry later",
                retry_after_s=self.retry_after_s, code="overloaded",
            )

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Count accepted work: an admitted request, or an async job running after its submit."""
        self._count(+1)
        try:
            yield
        finally:
            self._count(-1)

    def _count(self, delta: int) -> None:
        self.in_flight += delta
        if self.on_change is not None:
            self.on_change(self.in_flight)

    # --- shutdown ---

    def install_drain_on_sigterm(self) -> None:
        """Gateway worker: SIGTERM drains first (see the module doc). Call on the event loop."""
        if _install_sigterm(self._begin_drain) is not None:
            logger.info("SIGTERM drains in-flight requests for up to %.0f s before exit", self.grace_s)

    def _begin_drain(self, server: Any) -> None:
        if self.draining:
            return
        self.draining = True
        self._drain_task = asyncio.ensure_future(self._drain(server))

    async def _drain(self, server: Any) -> None:
        started = time.monotonic()
        logger.info("SIGTERM: draining %d in-flight request(s); new work gets 503", self.in_flight)
        while self.in_flight and time.monotonic() - started < self.grace_s:
            await asyncio.sleep(0.1)
        if self.in_flight:
            logger.warning("grace period of %.0f s over: cancelling %d request(s) still in flight",
                           self.grace_s, self.in_flight)
        else:
            logger.info("drained in %.1f s; exiting", time.monotonic() - started)
        server.config.timeout_graceful_shutdown = _STUCK_TASK_TIMEOUT_S
        server.handle_exit(signal.SIGTERM, None)


class AudioBudget:
    """Seconds of decoded audio in flight at once: admission by size, since memory grows with it.

    A request that does not fit is answered 503 at once; an async job waits its turn instead.
    One recording longer than the whole budget still runs, alone.
    """

    def __init__(self, limit_s: float, retry_after_s: int, on_reject: Callable[[str], None] | None = None,
                 on_change: Callable[[float], None] | None = None) -> None:
        self.limit_s = limit_s
        self.retry_after_s = retry_after_s
        self.on_reject = on_reject  # called with the error code (a metrics counter)
        self.on_change = on_change  # called with the seconds in flight (a metrics gauge)
        self.in_flight_s = 0.0
        self._freed: asyncio.Condition | None = None  # made on the event loop, at first use

    def fits(self, seconds: float) -> bool:
        return self.in_flight_s == 0 or self.in_flight_s + seconds <= self.limit_s

    @contextlib.asynccontextmanager
    async def hold(self, seconds: float, *, wait: bool) -> AsyncIterator[None]:
        if self._freed is None:
            self._freed = asyncio.Condition()
        if not self.fits(seconds):
            if not wait:
                if self.on_reject is not None:
                    self.on_reject("overloaded")
                raise Unavailable(
                    f"the service holds {self.in_flight_s:.0f} s of audio in flight (limit "
                    f"{self.limit_s:.0f} s) and this recording has {seconds:.0f} s; retry later",
                    retry_after_s=self.retry_after_s, code="overloaded")
            async with self._freed:
                await self._freed.wait_for(lambda: self.fits(seconds))
        self._add(seconds)
        try:
            yield
        finally:
            self._add(-seconds)
            async with self._freed:
                self._freed.notify_all()

    def _add(self, seconds: float) -> None:
        self.in_flight_s += seconds
        if self.on_change is not None:
            self.on_change(self.in_flight_s)


def outlive_gateway(grace_s: float) -> None:
    """Runner worker: on SIGTERM, keep serving until this graph's gateway has exited.

    The gateway is a sibling worker under the same `bentoml serve` arbiter. A runner served alone
    (one component per pod) has no such sibling and exits at once, as before. Call on the event loop.
    """

    def on_sigterm(server: Any) -> None:
        asyncio.ensure_future(_exit_after_gateway(server, grace_s + 15))

    _install_sigterm(on_sigterm)


async def _exit_after_gateway(server: Any, limit_s: float) -> None:
    started = time.monotonic()
    while _gateway_sibling_alive() and time.monotonic() - started < limit_s:
        await asyncio.sleep(0.2)
    server.handle_exit(signal.SIGTERM, None)


def _gateway_sibling_alive() -> bool:
    import psutil  # a BentoML dependency

    try:
        siblings = psutil.Process(os.getppid()).children()
    except psutil.Error:
        return False
    for proc in siblings:
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            args = proc.cmdline()
            if "--service-name" in args and args[args.index("--service-name") + 1:][:1] == [GATEWAY_SERVICE_NAME]:
                return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return False
