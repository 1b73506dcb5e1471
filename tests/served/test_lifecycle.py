"""API keys, overload answers, metrics and SIGTERM drain, on a server of their own.

This server runs with an API key, room for only 2 requests in flight, and a 60-s grace period.
The SIGTERM test ends it, so it comes last in this module.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.data import AMI_DIR, JFK_FLAC, JFK_REFERENCE, word_error_rate
from tests.served.conftest import Served, start_server

pytestmark = pytest.mark.served

API_KEY = "wxs-test-key-3f9a1c77e2"
MAX_IN_FLIGHT = 2
GRACE_S = 60
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with start_server(tmp_path_factory.mktemp("guarded"), WXS_API_KEYS=API_KEY,
                      WXS_MAX_IN_FLIGHT=str(MAX_IN_FLIGHT), WXS_SHUTDOWN_GRACE_S=str(GRACE_S)) as server:
        yield server


def _jfk(client: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    return client.post("/transcribe", files={"audio_file": ("jfk.flac", JFK_FLAC.read_bytes())},
                       data={"diarize": "false"}, headers=headers)


def _assert_jfk(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text[:500]
    text = " ".join(s["text"] for s in response.json()["segments"])
    assert word_error_rate(JFK_REFERENCE.read_text(), text) <= 0.15


def _in_background(server: Served, recording: str) -> tuple[threading.Thread, list[httpx.Response]]:
    """POST an AMI recording from a thread; its response lands in the returned list."""
    results: list[httpx.Response] = []

    def post() -> None:
        with server.client() as client:
            results.append(client.post("/transcribe", headers=AUTH,
                                       files={"audio_file": (recording, (AMI_DIR / recording).read_bytes())}))

    thread = threading.Thread(target=post)
    thread.start()
    return thread, results


def test_api_key_is_required_and_never_logged(guarded: Served) -> None:
    with guarded.client() as client:
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": API_KEY},
                        {"Authorization": f"Basic {API_KEY}"}):
            response = _jfk(client, headers)
            assert response.status_code == 401, (headers.keys(), response.text)
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"].startswith("Bearer")
        for path in ("/v1/models", "/jobs/some-task-id"):
            assert client.get(path).status_code == 401
        submit = client.post("/jobs/transcribe/submit",
                             files={"audio_file": ("jfk.flac", JFK_FLAC.read_bytes())})
        assert submit.status_code == 401
        _assert_jfk(_jfk(client, AUTH))
        assert client.get("/v1/models", headers=AUTH).status_code == 200
        for path in ("/healthz", "/livez", "/readyz", "/metrics"):  # probes and metrics stay open
            assert client.get(path).status_code == 200, path
    assert API_KEY not in guarded.log()


def test_over_the_in_flight_limit_is_503_with_retry_after_and_admitted_ones_finish(guarded: Served) -> None:
    started_requests = [_in_background(guarded, "dev00.wav") for _ in range(MAX_IN_FLIGHT)]
    time.sleep(2.0)  # both are admitted (uploads of 1 MB on loopback) and in the pipeline
    with guarded.client() as client:
        started = time.monotonic()
        rejected = _jfk(client, AUTH)
        answered_in = time.monotonic() - started
    # Many rejected 1-MB uploads at once, each on its own connection: every client reads its 503
    # (answering before the upload was read, then closing, reset the connection under some of them).
    burst: list[int | str] = []

    def rejected_upload() -> None:
        with guarded.client() as client:
            try:
                burst.append(_jfk(client, AUTH).status_code)
            except httpx.TransportError as exc:
                burst.append(f"{type(exc).__name__}: {exc}")

    senders = [threading.Thread(target=rejected_upload) for _ in range(24)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    assert burst == [503] * len(senders), burst
    for worker, _ in started_requests:
        worker.join()
    results = [response for _, responses in started_requests for response in responses]
    assert rejected.status_code == 503, rejected.text
    assert rejected.json()["error"]["code"] == "overloaded"
    assert int(rejected.headers["retry-after"]) > 0
    assert answered_in < 2.0  # at once, not after queueing
    assert [r.status_code for r in results] == [200] * MAX_IN_FLIGHT
    assert all(r.json()["diarization"]["num_speakers"] >= 1 for r in results)


def test_stage_metrics_are_exported(guarded: Served) -> None:
    metrics = httpx.get(f"{guarded.url}/metrics", timeout=30).text
    for stage in ("decode", "asr", "diarize", "assign"):
        match = re.search(rf'^wxs_stage_duration_seconds_count{{stage="{stage}"}} (\S+)$', metrics, re.M)
        assert match and float(match.group(1)) >= 1, stage
    assert re.search(r'^wxs_rejected_requests_total{reason="invalid_api_key"} [1-9]', metrics, re.M)
    assert re.search(r'^wxs_rejected_requests_total{reason="overloaded"} [1-9]', metrics, re.M)
    assert re.search(r'^wxs_audio_seconds_total \d', metrics, re.M)


def test_sigterm_drains_in_flight_requests_then_exits(guarded: Served) -> None:
    """SIGTERM to `bentoml serve` (what Kubernetes and docker send) while a request is in flight."""
    worker, in_flight = _in_background(guarded, "dev01.wav")
    time.sleep(2.0)
    tree = guarded.tree()
    signalled = time.monotonic()
    guarded.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # New work during the drain: answered at once with 503 (or refused once the gateway is gone).
    with guarded.client(timeout=10) as client:
        try:
            late = _jfk(client, AUTH)
            assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down", late.text
            assert "retry-after" in late.headers
            assert client.get("/readyz").status_code == 503
        except httpx.ConnectError:
            pass
    worker.join(timeout=GRACE_S)
    assert in_flight and in_flight[0].status_code == 200, in_flight and in_flight[0].text[:500]
    assert in_flight[0].json()["segments"], "the drained request carries its transcript"
    _, alive = psutil.wait_procs(tree, timeout=GRACE_S - (time.monotonic() - signalled))
    exited_after = time.monotonic() - signalled
    assert alive == [], f"still running {exited_after:.0f} s after SIGTERM: {[p.pid for p in alive]}"
    assert exited_after < GRACE_S
    assert list(Path(guarded.tmp_dir).iterdir()) == []
    assert "drained in" in guarded.log()
