"""Job callbacks without the graph: the signature a receiver verifies, the allowlist (names, CIDRs,
what a name resolves to, schemes), delivery to a real loopback receiver (retries on 5xx and on a
refused connection, none on 4xx or a redirect, nothing reaching an address outside the list even
when the name re-resolves there), the callback fields read off a streamed multipart body, and, on a
real redis-server, one delivery per callback across gateways, taken over when a gateway dies."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.callback_receiver import counting_listener, receiver
from tests.redis_server import redis_server
from whisperx_service.callbacks import (
    CallbackPolicy,
    CallbackSender,
    CallbackTarget,
    callback_body,
    signature,
    verify_signature,
)
from whisperx_service.config import Settings
from whisperx_service.errors import CallbackRefused

KEY = b"test-signing-key"


def _fixed(*answers: list[str]) -> Any:
    """A resolver answering each call with the next list (the last repeats)."""
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[min(len(calls), len(answers)) - 1]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def _sender(policy: CallbackPolicy, **kwargs: float) -> CallbackSender:
    options = {"timeout_s": 2.0, "retry_total_s": 5.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.2, **kwargs}
    return CallbackSender(policy, KEY, **options)


# --- signing ---

def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = callback_body("abc", "completed", "http://x/jobs/transcribe/get?task_id=abc", None)
    assert json.loads(body) == {"task_id": "abc", "state": "completed",
                                "result_url": "http://x/jobs/transcribe/get?task_id=abc"}
    expected = hmac.new(KEY, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature(KEY, 1700000000, body) == f"v1={expected}"
    assert verify_signature(KEY, "1700000000", f"v1={expected}", body, now=1700000100)
    assert not verify_signature(KEY, "1700000000", f"v1={expected}", body + b" ", now=1700000100)
    assert not verify_signature(b"other", "1700000000", f"v1={expected}", body, now=1700000100)
    assert not verify_signature(KEY, "1700000000", f"v1={expected}", body, now=1700000000 + 301)  # replayed
    assert not verify_signature(KEY, "soon", f"v1={expected}", body)


def test_the_readme_verifier_accepts_our_signature() -> None:
    from tests.data import PROJECT

    readme = (PROJECT / "README.md").read_text()
    section = readme[readme.index("### Job callbacks"):]
    snippet = section[section.index("```python") + len("```python"):]
    namespace: dict[str, Any] = {}
    exec(snippet[:snippet.index("```")], namespace)  # noqa: S102 - the README's own code, tested
    sender = CallbackSender(CallbackPolicy([]), KEY)
    body = callback_body("t", "completed", "u", None)
    headers = {name.title().replace("Wxs", "WXS"): value for name, value in sender.headers("t", body, 1, None).items()}
    assert namespace["verify"](KEY, headers, body)
    assert not namespace["verify"](KEY, headers, body[:-1] + b" ")
    assert not namespace["verify"](b"wrong", headers, body)


def test_failed_body_carries_the_error_code() -> None:
    error = {"error": {"message": "bad format", "type": "invalid_request_error", "code": "invalid_value"}}
    body = json.loads(callback_body("t", "failed", "u", error))
    assert body["state"] == "failed" and body["error"] == {"code": "invalid_value", "message": "bad format"}


def test_the_key_stays_out_of_reprs_and_settings_dumps() -> None:
    settings = Settings(callback_allowed_hosts="127.0.0.1/32", callback_signing_key="hunter2-key")
    sender = CallbackSender.from_settings(settings)
    assert "hunter2" not in repr(sender) and "hunter2" not in repr(settings)
    assert sender.policy.networks and settings.callback_allowed_hosts == ["127.0.0.1/32"]


def test_an_allowlist_needs_a_signing_key() -> None:
    with pytest.raises(ValueError, match="WXS_CALLBACK_SIGNING_KEY"):
        Settings(callback_allowed_hosts="hooks.example.com")
    with pytest.raises(ValueError, match="neither a hostname nor a CIDR"):
        CallbackPolicy(["hooks example.com"])


# --- the allowlist ---

def _check(policy: CallbackPolicy, url: str | None, auth: str | None = None) -> CallbackTarget | None:
    return asyncio.run(policy.check(url, auth))


def _refused(policy: CallbackPolicy, url: str | None, auth: str | None = None) -> CallbackRefused:
    with pytest.raises(CallbackRefused) as caught:
        _check(policy, url, auth)
    assert caught.value.status_code == 400 and caught.value.code == "callback_refused"
    return caught.value


def test_no_allowlist_refuses_every_callback() -> None:
    error = _refused(CallbackPolicy([]), "http://127.0.0.1:9/hook")
    assert error.param == "callback_url" and "WXS_CALLBACK_ALLOWED_HOSTS" in error.message
    assert _check(CallbackPolicy([]), None) is None  # no callback, nothing to refuse


def test_cidrs_bound_literal_addresses_and_schemes() -> None:
    policy = CallbackPolicy(["10.1.0.0/16", "127.0.0.1/32", "2001:db8::/32"])
    assert _check(policy, "http://10.1.2.3:8080/hook?x=1") == CallbackTarget("http://10.1.2.3:8080/hook?x=1")
    assert _check(policy, "https://[2001:db8::1]/hook", "Bearer t") == CallbackTarget(
        "https://[2001:db8::1]/hook", "Bearer t")
    for url in ("http://10.2.0.1/hook", "http://127.0.0.2/hook", "http://[::1]/hook",
                "http://[::ffff:10.2.0.1]/hook",  # an IPv4-mapped address is its IPv4 one
                "http://0.0.0.0/hook", "ftp://10.1.2.3/x", "file:///etc/passwd", "gopher://10.1.2.3/",
                "http://user:pw@10.1.2.3/hook", "http:///nohost", "not a url", "http://10.1.2.3:99999/"):
        assert _refused(policy, url).param == "callback_url", url
    assert _refused(policy, None, "Bearer t").param == "callback_auth_header"
    assert _refused(policy, "http://10.1.2.3/", "Bearer\nInjected: 1").param == "callback_auth_header"
    assert _refused(policy, "http://10.1.2.3/" + "a" * 3000).param == "callback_url"


def test_a_name_is_allowed_by_the_list_or_by_every_address_it_resolves_to() -> None:
    resolver = _fixed(["10.1.0.5", "10.1.0.6"])
    policy = CallbackPolicy(["hooks.example.com", "*.corp.example", "10.1.0.0/16"], resolver)
    assert _check(policy, "https://hooks.example.com/x") is not None
    assert _check(policy, "https://a.b.corp.example/x") is not None
    assert _check(policy, "https://inside.example.org/x") is not None  # both addresses in 10.1/16
    # one address outside is enough to refuse (a name smuggling in a private address)
    smuggler = CallbackPolicy(["10.1.0.0/16"], _fixed(["10.1.0.5", "169.254.169.254"]))
    assert "outside" in _refused(smuggler, "http://evil.example.org/x").message
    # a name outside the list, with no CIDRs to check its addresses against
    names_only = CallbackPolicy(["hooks.example.com"], resolver)
    _refused(names_only, "http://corp.example/x")
    assert resolver.calls == ["hooks.example.com", "a.b.corp.example", "inside.example.org"]

    async def unresolvable(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    assert "does not resolve" in _refused(CallbackPolicy(["10.0.0.0/8"], unresolvable), "http://nx.invalid/").message


# --- delivery to a real receiver ---

def test_delivered_signed_with_the_auth_header() -> None:
    with receiver() as rx:
        url = rx.answer("/ok", 200)
        sender = _sender(CallbackPolicy(["127.0.0.1/32"]))
        body = callback_body("t1", "completed", "http://gw/jobs/transcribe/get?task_id=t1", None)
        outcome = asyncio.run(sender.deliver("t1", CallbackTarget(url, "Bearer abc"), body,
                                             deadline=time.time() + 5))
        assert (outcome.delivered, outcome.attempts, outcome.status_code) == (True, 1, 200)
        [hit] = rx.hits_to("/ok")
    assert hit.body == body and hit.headers["authorization"] == "Bearer abc"
    assert hit.headers["content-type"] == "application/json" and hit.headers["x-wxs-task-id"] == "t1"
    assert verify_signature(KEY, hit.headers["x-wxs-timestamp"], hit.headers["x-wxs-signature"], hit.body)


def test_5xx_retried_with_backoff_until_delivered() -> None:
    with receiver() as rx:
        url = rx.answer("/flaky", 500, 503, 502, 200)
        attempts: list[int] = []
        counted_attempts: list[None] = []
        outcomes: list[str] = []

        async def counted(attempt: int) -> None:
            attempts.append(attempt)

        sender = _sender(CallbackPolicy(["127.0.0.1/32"]))
        sender.count_attempt = lambda: counted_attempts.append(None)  # the metrics hooks
        sender.count_outcome = lambda outcome: outcomes.append(outcome.reason)
        started = time.monotonic()
        outcome = asyncio.run(sender.deliver(
            "t2", CallbackTarget(url), b"{}", deadline=time.time() + 10, on_attempt=counted))
        assert len(counted_attempts) == 4 and outcomes == ["delivered"]
        elapsed = time.monotonic() - started
        hits = rx.hits_to("/flaky")
    assert outcome.delivered and outcome.attempts == 4 and attempts == [1, 2, 3, 4]
    assert [hit.headers["x-wxs-attempt"] for hit in hits] == ["1", "2", "3", "4"]
    assert all(verify_signature(KEY, h.headers["x-wxs-timestamp"], h.headers["x-wxs-signature"], h.body)
               for h in hits)
    assert elapsed >= 0.75 * (0.05 + 0.1 + 0.2)  # three backoffs: 0.05, 0.1, 0.2 s (jittered down to 75 %)


def test_a_timeout_is_retried() -> None:
    with receiver() as rx:
        url = rx.answer("/slow", 0, 200)  # the first held past the 0.5-s timeout
        outcome = asyncio.run(_sender(CallbackPolicy(["127.0.0.1/32"]), timeout_s=0.5).deliver(
            "t7", CallbackTarget(url), b"{}", deadline=time.time() + 10))
        assert (outcome.delivered, outcome.attempts, outcome.status_code) == (True, 2, 200)
        assert [hit.headers["x-wxs-attempt"] for hit in rx.wait_for("/slow", 2)] == ["1", "2"]


def _tls(tmp_path: Path, name: str) -> tuple[Path, ssl.SSLContext]:
    """A CA (its PEM file) and a server context with the CA's certificate for `name`."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", f"/CN={name}")
    (tmp_path / "san.ext").write_text(f"subjectAltName=DNS:{name}\n")
    openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "srv.pem", "-days", "2", "-extfile", "san.ext")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    return tmp_path / "ca.pem", server


def test_https_verifies_the_url_host_while_connecting_to_the_checked_address(tmp_path: Path) -> None:
    ca_file, server = _tls(tmp_path, "hooks.test")
    resolver = _fixed(["127.0.0.1"])
    policy = CallbackPolicy(["127.0.0.1/32"], resolver)
    with receiver(ssl_context=server) as rx:
        url = rx.answer("/tls", 200).replace("http://127.0.0.1", "https://hooks.test")
        sender = _sender(policy, retry_total_s=0.5)
        sender.ca_file = str(ca_file)
        outcome = asyncio.run(sender.deliver("t8", CallbackTarget(url), b"{}", deadline=time.time() + 5))
        assert (outcome.delivered, outcome.status_code) == (True, 200)
        assert resolver.calls == ["hooks.test"]  # resolved once, by the policy, then connected to
        # the same address under a name the certificate does not carry: TLS refuses it
        wrong = url.replace("https://hooks.test", "https://other.test")
        outcome = asyncio.run(sender.deliver("t9", CallbackTarget(wrong), b"{}", deadline=time.time() + 0.3))
        assert not outcome.delivered and outcome.status_code is None
        # and without the CA (certifi's public ones) the internal certificate is not trusted
        public = _sender(policy)
        outcome = asyncio.run(public.deliver("t10", CallbackTarget(url), b"{}", deadline=time.time() + 0.3))
        assert not outcome.delivered and outcome.status_code is None
        assert len(rx.hits_to("/tls")) == 1


def test_4xx_and_redirects_are_final() -> None:
    with receiver() as rx:
        sender = _sender(CallbackPolicy(["127.0.0.1/32"]))
        for path, status in (("/gone", 404), ("/denied", 401), ("/moved", 302)):
            url = rx.answer(path, status, 200)
            outcome = asyncio.run(sender.deliver("t3", CallbackTarget(url), b"{}", deadline=time.time() + 5))
            assert (outcome.delivered, outcome.attempts, outcome.status_code) == (False, 1, status), path
            assert len(rx.hits_to(path)) == 1, path
        assert rx.hits_to("/redirected") == []  # the redirect was not followed


def test_connection_refused_retried_for_a_bounded_time() -> None:
    with counting_listener("127.0.0.1") as listener:
        port = listener.port
    started = time.monotonic()
    outcome = asyncio.run(_sender(CallbackPolicy(["127.0.0.1/32"])).deliver(
        "t4", CallbackTarget(f"http://127.0.0.1:{port}/x"), b"{}", deadline=time.time() + 1.0))
    elapsed = time.monotonic() - started
    assert not outcome.delivered and outcome.reason == "gave_up" and outcome.attempts >= 4
    assert elapsed < 1.5


def test_a_name_that_re_resolves_outside_the_list_is_never_contacted() -> None:
    """DNS rebinding: allowed at submit, resolving to another address at delivery."""
    with receiver() as allowed, counting_listener("127.0.0.2") as outside:
        resolver = _fixed(["127.0.0.1"], ["127.0.0.2"])
        policy = CallbackPolicy(["127.0.0.1/32"], resolver)
        assert _check(policy, f"http://hooks.test:{outside.port}/x") is not None  # at submit
        outcome = asyncio.run(_sender(policy).deliver(
            "t5", CallbackTarget(f"http://hooks.test:{outside.port}/x"), b"{}", deadline=time.time() + 5))
        assert (outcome.delivered, outcome.reason, outcome.attempts) == (False, "refused", 1)
        # and a literal address outside the list
        outcome = asyncio.run(_sender(policy).deliver(
            "t6", CallbackTarget(f"http://127.0.0.2:{outside.port}/x"), b"{}", deadline=time.time() + 5))
        assert outcome.reason == "refused"
        assert outside.accepted == 0 and allowed.hits == []


# --- the callback fields of a streamed form ---

def _multipart(fields: list[tuple[str, str | bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, value in fields:
        if isinstance(value, bytes):
            out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"a.flac\"\r\n"
                    "Content-Type: audio/flac\r\n\r\n").encode() + value + b"\r\n"
        else:
            out += f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode()
    return out + f"--{boundary}--\r\n".encode()


def test_callback_fields_read_off_a_chunked_multipart_body() -> None:
    from whisperx_service.http.callback_check import CallbackFieldReader

    body = _multipart([("language", "en"), ("audio_file", b"\x00--b0und" * 5000),
                       ("callback_url", "http://10.0.0.1/hook"), ("callback_auth_header", "Bearer x")])
    for size in (1, 7, 1000, len(body)):
        reader = CallbackFieldReader("multipart/form-data; boundary=b0undary")
        for start in range(0, len(body), size):
            reader.feed(body[start:start + size])
        assert reader.finish() == {"callback_url": "http://10.0.0.1/hook", "callback_auth_header": "Bearer x"}
    reader = CallbackFieldReader("application/x-www-form-urlencoded")
    reader.feed(b"language=en&callback_url=http%3A%2F%2F10.0.0.1%2F")
    assert reader.finish() == {"callback_url": "http://10.0.0.1/"}


def test_a_refused_callback_stops_the_body_before_the_app_has_it() -> None:
    from whisperx_service.errors import ServiceError
    from whisperx_service.http.callback_check import checked_submit

    def run(body: bytes) -> tuple[bytes, list[ServiceError], list[dict[str, Any]]]:
        chunks = [body[i:i + 4096] for i in range(0, len(body), 4096)]
        read = bytearray()
        errors: list[ServiceError] = []
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def app(scope: Any, receive: Any, send: Any) -> None:  # BentoML's submit: read all, answer
            while True:
                message = await receive()
                read.extend(message["body"])
                if not message["more_body"]:
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})

        async def send(message: Any) -> None:
            sent.append(message)

        async def refuse(error: ServiceError) -> None:
            errors.append(error)

        scope = {"headers": [(b"content-type", b"multipart/form-data; boundary=b0undary")]}
        asyncio.run(checked_submit(app, scope, receive, send, CallbackPolicy(["10.0.0.0/8"]), refuse))
        return bytes(read), errors, sent

    good = _multipart([("audio_file", b"x" * 20000), ("callback_url", "http://10.0.0.1/hook")])
    assert run(good) == (good, [], [{"type": "http.response.start", "status": 200, "headers": []}])
    bad = _multipart([("audio_file", b"x" * 20000), ("callback_url", "http://192.168.0.1/hook")])
    read, errors, sent = run(bad)
    assert len(read) < len(bad) and sent == [] and [e.param for e in errors] == ["callback_url"]


# --- one delivery per callback across gateways (real redis-server) ---

@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def test_two_gateways_deliver_each_callback_once_and_take_over_a_dead_ones(redis_url: str) -> None:
    from whisperx_service.http.shared_jobs import SharedJobs
    from whisperx_service.jobstore import CALLBACKS, StoredAnswer
    from whisperx_service.lifecycle import Lifecycle
    from whisperx_service.schema import JobState

    settings = Settings(job_store=redis_url, job_visibility_timeout_s=5.0, callback_allowed_hosts="127.0.0.1/32",
                        callback_signing_key=KEY.decode(), callback_backoff_initial_s=0.05,
                        callback_backoff_max_s=0.2, callback_retry_total_s=10)

    class Gateway:
        lifecycle = Lifecycle(max_in_flight=4, retry_after_s=1, grace_s=1)
        callbacks = CallbackSender.from_settings(settings)

    async def scenario(rx: Any) -> None:
        gateways = [SharedJobs(Gateway(), settings, redis_url) for _ in range(2)]
        store = gateways[0].store
        await store.redis.flushdb()
        await store.ensure_group()
        # a gateway that claimed a callback and died: its lease runs out, another delivers it
        url = rx.answer("/orphan", 200)
        orphan = await store.submit("transcribe", {}, None, b"audio",
                                    {"url": url, "auth_header": None, "base_url": "http://gw"})
        job = await store.job(orphan)
        assert job is not None
        await store.finish(orphan, job.progress.model_copy(update={"state": JobState.failed}),
                           StoredAnswer(503, "application/json", b"{}"), time.time() + 10)
        assert await store.claim_callback("dead-gateway", lease_s=1.5) == orphan
        claimed_at = time.monotonic()
        task_ids = []
        for n in range(6):  # half answered 500 first: retried by whichever gateway holds them
            url = rx.answer(f"/job{n}", *([500, 200] if n % 2 else [200]))
            task_id = await store.submit("transcribe", {}, None, b"audio",
                                         {"url": url, "auth_header": None, "base_url": "http://gw"})
            job = await store.job(task_id)
            assert job is not None and job.has_callback
            progress = job.progress.model_copy(update={"state": JobState.completed})
            await store.finish(task_id, progress, StoredAnswer(200, "application/json", b"{}"),
                               time.time() + settings.callback_retry_total_s)
            task_ids.append(task_id)
        for gateway in gateways:
            gateway._callback_task = asyncio.create_task(gateway._deliver_callbacks())
        deadline = time.monotonic() + 30
        while await store.redis.zcard(CALLBACKS) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await store.redis.zcard(CALLBACKS) == 0
        orphan_hits = rx.hits_to("/orphan")
        assert len(orphan_hits) == 1 and json.loads(orphan_hits[0].body)["state"] == "failed"
        assert time.monotonic() - claimed_at >= 1.0  # not before the dead gateway's lease ran out
        await asyncio.sleep(1.0)  # nothing more comes: each delivered once
        for n, task_id in enumerate(task_ids):
            hits = rx.hits_to(f"/job{n}")
            assert [json.loads(h.body)["task_id"] for h in hits] == [task_id] * (2 if n % 2 else 1)
            stored = await store.callback(task_id)
            assert stored is not None and (stored.state, stored.attempts) == ("delivered", 2 if n % 2 else 1)
            progress = await store.progress(task_id)  # what GET /jobs/{task_id} answers
            assert progress is not None and progress.callback is not None
            assert progress.callback.model_dump() == {"state": "delivered", "attempts": 2 if n % 2 else 1,
                                                      "status_code": 200}
        # a gateway that stalled past its lease finds its callback taken over: it POSTs nothing more
        url = rx.answer("/stalled", 200)
        stalled = await store.submit("transcribe", {}, None, b"audio",
                                     {"url": url, "auth_header": None, "base_url": "http://gw"})
        job = await store.job(stalled)
        assert job is not None
        for gateway in gateways:
            assert gateway._callback_task is not None
            gateway._callback_task.cancel()
        await store.finish(stalled, job.progress, StoredAnswer(200, "application/json", b"{}"), time.time() + 10)
        assert await store.claim_callback(gateways[0].consumer, lease_s=0.1) == stalled
        await asyncio.sleep(0.2)
        assert await store.claim_callback("other-gateway", lease_s=5) == stalled
        await gateways[0]._deliver(stalled)
        assert rx.hits_to("/stalled") == [] and await store.redis.zscore(CALLBACKS, stalled) is not None
        for gateway in gateways:
            await gateway.stop()

    with receiver() as rx:
        asyncio.run(scenario(rx))
