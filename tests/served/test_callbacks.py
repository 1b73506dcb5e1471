"""Job callbacks through the served graph, to a real loopback receiver: a completed job's callback
is signed, carries the Authorization value, is retried on 500s and points at a result that answers;
a failed job's callback is not retried on a 4xx; a callback outside the allowlist, or any callback
on a service without one, is refused at submit (400, param callback_url) and its host never gets a
connection; with the Redis job store each callback is delivered once."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.callback_receiver import Hit, Receiver, counting_listener, receiver
from tests.data import JFK_FLAC, JFK_REFERENCE, word_error_rate
from tests.redis_server import redis_server
from tests.served.conftest import Served, start_server
from whisperx_service.callbacks import verify_signature

pytestmark = pytest.mark.served
KEY = "callback-signing-key-for-tests"
AUTH = "Bearer receiver-token-7f3a"
SETTINGS = {"WXS_CALLBACK_ALLOWED_HOSTS": "127.0.0.1/32", "WXS_CALLBACK_SIGNING_KEY": KEY,
            "WXS_CALLBACK_BACKOFF_INITIAL_S": "0.2", "WXS_CALLBACK_BACKOFF_MAX_S": "0.5",
            "WXS_CALLBACK_RETRY_TOTAL_S": "60"}
ROUTES = {"transcribe": ("/jobs/transcribe/submit", "audio_file", {"diarize": "false", "language": "en"}),
          "transcription": ("/v1/audio/transcriptions/jobs/submit", "file", {"model": "whisper-1"})}


@pytest.fixture(scope="module")
def callback_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with start_server(tmp_path_factory.mktemp("callbacks"), **SETTINGS) as server:
        yield server


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with receiver() as found:
        yield found


def submit(http: httpx.Client, kind: str, **fields: str) -> httpx.Response:
    route, file_field, defaults = ROUTES[kind]
    with JFK_FLAC.open("rb") as fh:
        return http.post(route, files={file_field: ("jfk.flac", fh, "audio/flac")}, data={**defaults, **fields})


def signed(hit: Hit) -> dict[str, Any]:
    assert verify_signature(KEY.encode(), hit.headers["x-wxs-timestamp"], hit.headers["x-wxs-signature"], hit.body)
    assert hit.headers["content-type"] == "application/json"
    return json.loads(hit.body)  # type: ignore[no-any-return]


def callback_metrics(served: Served) -> dict[str, float]:
    """The gateway's callback counters (/metrics): outcomes by name, and attempts."""
    text = httpx.get(f"{served.url}/metrics", timeout=30).text
    found = {outcome: float(value) for outcome, value in
             re.findall(r'^wxs_job_callbacks_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}
    attempts = re.search(r"^wxs_job_callback_attempts_total (\S+)$", text, re.M)
    return {"client_error": 0.0, "delivered": 0.0, **found, "attempts": float(attempts[1]) if attempts else 0.0}


def settled_callback(http: httpx.Client, task_id: str, timeout_s: float = 120) -> dict[str, Any]:
    """The job's callback state once its delivery has ended (delivered or failed): no more POSTs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress = http.get(f"/jobs/{task_id}").json()
        if (progress.get("callback") or {}).get("state") in ("delivered", "failed"):
            return progress["callback"]  # type: ignore[no-any-return]
        time.sleep(0.2)
    pytest.fail(f"callback of {task_id} still pending after {timeout_s} s")


def test_completed_job_calls_back_signed_after_500s(callback_served: Served, rx: Receiver) -> None:
    url = rx.answer("/done", 500, 500, 200)
    with callback_served.client() as http:
        submitted = submit(http, "transcribe", callback_url=url, callback_auth_header=AUTH)
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["task_id"]
        hits = rx.wait_for("/done", 3, timeout_s=600)
        assert settled_callback(http, task_id) == {"state": "delivered", "attempts": 3, "status_code": 200}
        assert len(rx.hits_to("/done")) == 3  # delivered on the third: no fourth
        bodies = [signed(hit) for hit in hits]
        assert [hit.headers["x-wxs-attempt"] for hit in hits] == ["1", "2", "3"]
        assert all(hit.headers["authorization"] == AUTH for hit in hits)
        assert bodies[0] == bodies[2] == {"task_id": task_id, "state": "completed",
                                          "result_url": f"{callback_served.url}/jobs/transcribe/get?task_id={task_id}"}
        result = http.get(bodies[0]["result_url"])  # the callback comes once the result answers
    assert result.status_code == 200, result.text
    text = " ".join(segment["text"] for segment in result.json()["segments"])
    assert word_error_rate(JFK_REFERENCE.read_text(), text) <= 0.15, text
    log = callback_served.log()
    assert AUTH.split()[1] not in log and KEY not in log


def test_failed_job_callback_not_retried_on_4xx(callback_served: Served, rx: Receiver) -> None:
    url = rx.answer("/gone", 410, 200)
    before = callback_metrics(callback_served)
    with callback_served.client() as http:
        submitted = submit(http, "transcription", response_format="docx", callback_url=url)
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["task_id"]
        [hit] = rx.wait_for("/gone", 1)
        assert settled_callback(http, task_id) == {"state": "failed", "attempts": 1, "status_code": 410}
    assert len(rx.hits_to("/gone")) == 1  # the sender has returned: no retry will come
    body = signed(hit)
    assert body["state"] == "failed" and body["error"]["code"] == "invalid_value"
    assert "authorization" not in hit.headers
    after = callback_metrics(callback_served)
    assert after["client_error"] == before["client_error"] + 1 and after["attempts"] == before["attempts"] + 1
    assert after["delivered"] == before["delivered"]


def test_outside_the_allowlist_refused_at_submit_never_contacted(callback_served: Served) -> None:
    submitted_before = callback_served.log().count(" is submitted")
    with counting_listener("127.0.0.2") as outside, callback_served.client() as http:
        for kind in ROUTES:
            for url in (f"http://127.0.0.2:{outside.port}/hook", f"http://localhost.:{outside.port}/hook",
                        f"ftp://127.0.0.1:{outside.port}/hook"):
                refused = submit(http, kind, callback_url=url)
                assert refused.status_code == 400, (kind, url, refused.text)
                error = refused.json()["error"]
                assert error["param"] == "callback_url" and error["code"] == "callback_refused", error
    # no task was stored, so no delivery can come later either
    assert callback_served.log().count(" is submitted") == submitted_before
    assert outside.accepted == 0


def test_no_allowlist_no_callbacks(served: Served, rx: Receiver) -> None:
    url = rx.answer("/never", 200)
    with served.client() as http:
        for kind in ROUTES:
            refused = submit(http, kind, callback_url=url)
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["param"] == "callback_url" and "WXS_CALLBACK_ALLOWED_HOSTS" in error["message"]
    assert rx.hits == []


def test_redis_job_store_delivers_once(tmp_path: Path, rx: Receiver) -> None:
    url = rx.answer("/shared", 503, 200)
    with redis_server() as redis_url, start_server(tmp_path, WXS_JOB_STORE=redis_url, **SETTINGS) as server, \
            server.client() as http:
        submitted = submit(http, "transcription", callback_url=url, callback_auth_header=AUTH)
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["task_id"]
        refused = submit(http, "transcription", callback_url="http://127.0.0.2/hook")
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "callback_url"
        hits = rx.wait_for("/shared", 2, timeout_s=600)
        store = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 30
        while store.hget(f"wxs:job:{task_id}", "callback_state") != b"delivered" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.hmget(f"wxs:job:{task_id}", ["callback_state", "callback_attempts"]) == [b"delivered", b"2"]
        assert store.zcard("wxs:callbacks") == 0
        assert len(rx.hits_to("/shared")) == 2  # one 503, then the one delivery
        progress = http.get(f"/jobs/{task_id}").json()
        assert progress["callback"] == {"state": "delivered", "attempts": 2, "status_code": 200}, progress
        body = signed(hits[1])
        assert body["state"] == "completed" and hits[1].headers["authorization"] == AUTH
        result = http.get(body["result_url"])
        assert result.status_code == 200
        assert word_error_rate(JFK_REFERENCE.read_text(), result.json()["text"]) <= 0.15
