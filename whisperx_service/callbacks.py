"""Job callbacks: where they may go (the allowlist), how they are signed, and their delivery.

A job submitted with ``callback_url`` gets one POST when it ends (completed or failed)::

    {"task_id": "...", "state": "completed", "result_url": "https://.../jobs/transcribe/get?task_id=..."}

(failed jobs add ``"error": {"code", "message"}``), with the headers

- ``X-WXS-Timestamp``: unix seconds of this attempt;
- ``X-WXS-Signature``: ``v1=<hex HMAC-SHA256(key, timestamp + "." + body)>``, the key being
  ``WXS_CALLBACK_SIGNING_KEY`` (never logged);
- ``X-WXS-Task-Id``, ``X-WXS-Attempt`` (1, 2, ...), and ``Authorization`` when the job gave
  ``callback_auth_header``.

SSRF guard: a target is allowed only by ``WXS_CALLBACK_ALLOWED_HOSTS`` (hostnames and CIDRs); none
set, no callbacks. A host not named in the list is resolved and *every* address must lie in one of
its CIDRs, so a DNS name cannot smuggle in a private address. The check runs at submit (400,
``param: callback_url``) and again when the connection is made: the delivery connects only to the
addresses it has just checked (`_PinnedBackend`, no second resolution), uses no proxy from the
environment, and follows no redirect.

Retries: a 5xx, a connection error or a timeout is tried again with exponential backoff (jittered)
until ``WXS_CALLBACK_RETRY_TOTAL_S`` after the job ended; a 4xx or a 3xx is final.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpcore
import httpx

from .errors import CallbackRefused

if TYPE_CHECKING:
    from .config import Settings

logger = logging.getLogger("whisperx_service.callbacks")

CALLBACK_FIELDS = ("callback_url", "callback_auth_header")
MAX_URL_CHARS = 2048
MAX_AUTH_CHARS = 4096
SIGNATURE_VERSION = "v1"
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


# --- signing ---

def signature(key: bytes, timestamp: int, body: bytes) -> str:
    """``v1=<hex>``: HMAC-SHA256 with `key` over ``f"{timestamp}." + body``."""
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(key: bytes, timestamp: str, signature_header: str, body: bytes, *,
                     tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """What a receiver does (the README shows the same in a few lines): recompute, compare in
    constant time, and refuse a timestamp too far from now (a replayed request)."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - stamp) > tolerance_s:
        return False
    return hmac.compare_digest(signature(key, stamp, body), signature_header.strip())


# --- the allowlist ---

def _normal_address(text: str) -> IPAddress:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    return address


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class CallbackTarget:
    """A checked callback: where to POST, and the Authorization value to send (never logged)."""

    url: str
    auth_header: str | None = None

    def loggable(self) -> str:
        """The URL without its query (which may carry a token)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"


class CallbackPolicy:
    """``WXS_CALLBACK_ALLOWED_HOSTS``: exact hostnames, ``*.suffix`` patterns, and CIDRs."""

    def __init__(self, entries: Iterable[str], resolver: Resolver = system_resolver) -> None:
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[IPNetwork] = []
        self.resolver = resolver
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry[2:] if entry.startswith("*.") else entry
            if not all(_HOST_LABEL.match(label) for label in name.split(".")):
                raise ValueError(f"WXS_CALLBACK_ALLOWED_HOSTS: {raw!r} is neither a hostname nor a CIDR")
            if entry.startswith("*."):
                self.suffixes.append("." + name)
            else:
                self.names.add(name)

    @property
    def enabled(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def name_listed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)

    def address_allowed(self, address: IPAddress) -> bool:
        if address.is_unspecified or address.is_multicast:
            return False
        return any(address.version == network.version and address in network for network in self.networks)

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses a callback to `host` may connect to, resolved now; CallbackRefused if any
        address of a name not in the list lies outside its CIDRs (or the name does not resolve)."""
        try:
            literal: IPAddress | None = _normal_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            if not self.address_allowed(literal):
                raise CallbackRefused(f"callback host {host} is not in WXS_CALLBACK_ALLOWED_HOSTS")
            return [str(literal)]
        listed = self.name_listed(host)
        if not listed and not self.networks:
            raise CallbackRefused(f"callback host {host[:253]!r} is not in WXS_CALLBACK_ALLOWED_HOSTS")
        try:
            resolved = await self.resolver(host, port)
        except OSError as exc:
            raise CallbackRefused(f"callback host {host[:253]!r} does not resolve") from exc
        if not resolved:
            raise CallbackRefused(f"callback host {host[:253]!r} does not resolve")
        if not listed:
            outside = [address for address in resolved if not self.address_allowed(_normal_address(address))]
            if outside:
                raise CallbackRefused(f"callback host {host[:253]!r} resolves to an address outside "
                                      "WXS_CALLBACK_ALLOWED_HOSTS")
        return resolved

    async def check(self, url: str | None, auth_header: str | None) -> CallbackTarget | None:
        """A job's callback fields, checked (400 naming the field); None when it has no callback."""
        if not url and not auth_header:
            return None
        if not url:
            raise CallbackRefused("callback_auth_header needs a callback_url", param="callback_auth_header")
        if not self.enabled:
            raise CallbackRefused("callbacks are off on this service: it has no WXS_CALLBACK_ALLOWED_HOSTS")
        if len(url) > MAX_URL_CHARS:
            raise CallbackRefused(f"callback_url is longer than {MAX_URL_CHARS} characters")
        if auth_header is not None and (len(auth_header) > MAX_AUTH_CHARS or not auth_header.isprintable()):
            raise CallbackRefused("callback_auth_header must be one printable line of at most "
                                  f"{MAX_AUTH_CHARS} characters", param="callback_auth_header")
        try:
            parts = urlsplit(url.strip())
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise CallbackRefused("callback_url is not a valid URL") from exc
        if parts.scheme not in ("http", "https"):
            raise CallbackRefused("callback_url must be an http:// or https:// URL")
        if not parts.hostname:
            raise CallbackRefused("callback_url has no host")
        if parts.username is not None or parts.password is not None:
            raise CallbackRefused("callback_url must not carry credentials: send them in callback_auth_header")
        await self.addresses(parts.hostname, port)
        return CallbackTarget(url.strip(), auth_header or None)


# --- delivery ---

def callback_body(task_id: str, state: str, result_url: str, error: dict[str, Any] | None) -> bytes:
    """The JSON a callback carries; `error` is the job's error envelope when it failed."""
    body: dict[str, Any] = {"task_id": task_id, "state": state, "result_url": result_url}
    if error is not None:
        inner = error.get("error", error)
        body["error"] = {"code": inner.get("code"), "message": inner.get("message")}
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    attempts: int
    status_code: int | None
    reason: str  # delivered, client_error, redirect, refused, gave_up, taken_over

    @property
    def state(self) -> Literal["delivered", "failed"]:
        return "delivered" if self.delivered else "failed"


class CallbackSender:
    """Signs and POSTs callbacks, retrying as the module doc says."""

    def __init__(self, policy: CallbackPolicy, key: bytes, *, timeout_s: float = 10.0,
                 retry_total_s: float = 600.0, backoff_initial_s: float = 1.0, backoff_max_s: float = 60.0,
                 ca_file: str | None = None, on_attempt: Callable[[], None] | None = None,
                 on_outcome: Callable[[Outcome], None] | None = None) -> None:
        self.policy = policy
        self.count_attempt = on_attempt  # metrics hooks
        self.count_outcome = on_outcome
        self.ca_file = ca_file
        self._ssl_context: ssl.SSLContext | None = None
        self._key = key
        self.timeout_s = timeout_s
        self.retry_total_s = retry_total_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s

    def __repr__(self) -> str:  # the key stays out of every log line
        return f"CallbackSender(timeout_s={self.timeout_s}, retry_total_s={self.retry_total_s})"

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver = system_resolver,
                      on_attempt: Callable[[], None] | None = None,
                      on_outcome: Callable[[Outcome], None] | None = None) -> CallbackSender:
        key = settings.callback_signing_key.get_secret_value().encode() if settings.callback_signing_key else b""
        return cls(CallbackPolicy(settings.callback_allowed_hosts, resolver), key, on_attempt=on_attempt,
                   on_outcome=on_outcome,
                   timeout_s=settings.callback_timeout_s, retry_total_s=settings.callback_retry_total_s,
                   backoff_initial_s=settings.callback_backoff_initial_s,
                   backoff_max_s=settings.callback_backoff_max_s,
                   ca_file=str(settings.callback_ca_file) if settings.callback_ca_file else None)

    def headers(self, task_id: str, body: bytes, attempt: int, auth_header: str | None,
                now: float | None = None) -> dict[str, str]:
        stamp = int(time.time() if now is None else now)
        headers = {"content-type": "application/json", "user-agent": "whisperx-service-callback/1",
                   "x-wxs-timestamp": str(stamp), "x-wxs-signature": signature(self._key, stamp, body),
                   "x-wxs-task-id": task_id, "x-wxs-attempt": str(attempt)}
        if auth_header:
            headers["authorization"] = auth_header
        return headers

    def backoff(self, retry: int) -> float:
        """Wait before retry number `retry` (1, 2, ...): doubling from the initial wait, capped, jittered."""
        wait = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (retry - 1))
        return wait * random.uniform(0.75, 1.0)  # noqa: S311 - spreading retries, not a secret

    async def deliver(self, task_id: str, target: CallbackTarget, body: bytes, *, deadline: float,
                      first_attempt: int = 1,
                      on_attempt: Callable[[int], Awaitable[bool | None]] | None = None) -> Outcome:
        """POST `body` until a 2xx, a final answer, or `deadline` (unix time) passes. `on_attempt`
        is awaited before each POST; False from it stops the delivery (another gateway holds it)."""
        outcome = await self._deliver(task_id, target, body, deadline, first_attempt, on_attempt)
        if self.count_outcome is not None:
            self.count_outcome(outcome)
        return outcome

    async def _deliver(self, task_id: str, target: CallbackTarget, body: bytes, deadline: float,
                       first_attempt: int, on_attempt: Callable[[int], Awaitable[bool | None]] | None) -> Outcome:
        attempt = first_attempt - 1
        status: int | None = None
        async with self.client() as client:
            while True:
                attempt += 1
                if on_attempt is not None and await on_attempt(attempt) is False:
                    logger.warning("callback of job %s: taken over by another gateway", task_id)
                    return Outcome(False, attempt - 1, status, "taken_over")
                if self.count_attempt is not None:
                    self.count_attempt()
                try:
                    response = await client.post(target.url, content=body,
                                                 headers=self.headers(task_id, body, attempt, target.auth_header))
                    status = response.status_code
                    reason = "" if status >= 500 else ("delivered" if status < 300 else
                                                       "redirect" if status < 400 else "client_error")
                    detail = f"status {status}"
                except CallbackRefused as exc:
                    logger.warning("callback of job %s to %s refused at delivery: %s", task_id,
                                   target.loggable(), exc.message)
                    return Outcome(False, attempt, None, "refused")
                except httpx.TransportError as exc:  # connection refused or reset, timeouts
                    reason, detail = "", type(exc).__name__
                if reason:
                    log = logger.info if reason == "delivered" else logger.warning
                    log("callback of job %s to %s: %s (attempt %d)", task_id, target.loggable(), detail, attempt)
                    return Outcome(reason == "delivered", attempt, status, reason)
                wait = self.backoff(attempt - first_attempt + 1)
                if time.time() + wait > deadline:
                    logger.warning("callback of job %s to %s: %s (attempt %d); giving up", task_id,
                                   target.loggable(), detail, attempt)
                    return Outcome(False, attempt, status, "gave_up")
                logger.info("callback of job %s to %s: %s (attempt %d); retrying in %.1f s", task_id,
                            target.loggable(), detail, attempt, wait)
                await asyncio.sleep(wait)

    def client(self) -> httpx.AsyncClient:
        if self._ssl_context is None:  # made once: loading a CA bundle costs ~10 ms of CPU
            self._ssl_context = (ssl.create_default_context(cafile=self.ca_file) if self.ca_file
                                 else httpx.create_ssl_context())
        return httpx.AsyncClient(transport=_pinned_transport(self.policy, self._ssl_context),
                                 timeout=self.timeout_s, follow_redirects=False, trust_env=False)


def _pinned_transport(policy: CallbackPolicy, ssl_context: ssl.SSLContext) -> httpx.AsyncHTTPTransport:
    """httpx's transport over a connection pool whose every connection goes through the policy.
    TLS still verifies the URL's host name (SNI and certificate), not the address connected to."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx takes no network backend of its own: its pool is replaced by the same pool with ours.
    transport._pool = httpcore.AsyncConnectionPool(  # noqa: SLF001
        ssl_context=ssl_context, max_connections=4, network_backend=_PinnedBackend(policy))
    return transport


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses the policy has just checked, never resolving a name twice."""

    def __init__(self, policy: CallbackPolicy) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> Any:
        last: Exception = httpcore.ConnectError(f"no address to connect to for {host}")
        for address in await self.policy.addresses(host, port):
            try:
                return await self.inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> Any:
        raise CallbackRefused("callbacks go over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
