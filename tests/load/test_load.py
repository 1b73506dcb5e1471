"""A bounded load test on loopback: 32 clients for 3 minutes, good and bad requests mixed.

Every answer must be the expected one for its request: good requests 200 with the right words,
bad ones their exact 4xx; any may first get 503 + Retry-After while the gateway is at its
in-flight limit (the client waits and sends it again, so every request is eventually answered). At the
end: no temp file left, and the process tree's memory is flat (RSS after warm-up vs. at the end).
`WXS_LOAD_SECONDS` shortens or lengthens the run; `WXS_LOAD_REPORT` names a JSON file for the numbers.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.data import (
    AISHELL_DIR,
    JFK_FLAC,
    JFK_REFERENCE,
    aishell_references,
    character_error_rate,
    truncated_mp3,
    word_error_rate,
)
from tests.served.conftest import start_server

pytestmark = pytest.mark.served
logger = logging.getLogger(__name__)

CLIENTS = 32
DURATION_S = float(os.environ.get("WXS_LOAD_SECONDS", "180"))
RETRY_AFTER_S = 2  # the server's Retry-After here, so waiting clients come back within the run


@dataclass(frozen=True)
class Kind:
    name: str
    weight: int
    send: Callable[[httpx.Client], httpx.Response]
    expect: int  # the status this request must get (any may first get 503 + Retry-After)
    check: Callable[[httpx.Response], bool] = lambda response: True


def _kinds(work_dir: Path) -> list[Kind]:
    zh_clip = AISHELL_DIR / "BAC009S0764W0121.wav"
    zh_reference = aishell_references()[zh_clip.stem]
    jfk = JFK_FLAC.read_bytes()
    zh = zh_clip.read_bytes()
    truncated = truncated_mp3(work_dir).read_bytes()

    def jfk_ok(response: httpx.Response) -> bool:
        text = " ".join(s["text"] for s in response.json()["segments"])
        return word_error_rate(JFK_REFERENCE.read_text(), text) <= 0.15

    def zh_ok(response: httpx.Response) -> bool:
        text = "".join(s["text"] for s in response.json()["segments"])
        return character_error_rate(zh_reference, text) <= 0.25

    def post(data: dict[str, str], payload: bytes, name: str, query: str = "") -> Callable[[httpx.Client], httpx.Response]:
        return lambda c: c.post(f"/transcribe{query}", files={"audio_file": (name, payload)}, data=data)

    return [
        Kind("good en, no diarization", 4, post({"diarize": "false"}, jfk, "jfk.flac"), 200, jfk_ok),
        Kind("good en, diarized", 2, post({}, jfk, "jfk.flac"), 200, jfk_ok),
        Kind("good zh", 3, post({"language": "zh"}, zh, "zh.wav"), 200, zh_ok),
        Kind("bad: text file", 1, lambda c: c.post(
            "/transcribe", files={"audio_file": ("notes.txt", b"not audio\n" * 100, "text/plain")}), 415),
        Kind("bad: truncated mp3", 1, post({}, truncated, "t.mp3"), 400),
        Kind("bad: min > max speakers", 1, post({}, jfk, "jfk.flac", "?min_speakers=3&max_speakers=2"), 422),
        Kind("bad: no file", 1, lambda c: c.post("/transcribe", data={"diarize": "false"}), 400),
    ]


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []
        self.good_latencies: list[float] = []

    def add(self, key: str) -> None:
        with self.lock:
            self.answers[key] += 1

    def fail(self, what: str) -> None:
        with self.lock:
            self.unexpected.append(what)


def _client_loop(url: str, kinds: list[Kind], deadline: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    weights = [k.weight for k in kinds]
    with httpx.Client(base_url=url, timeout=600) as client:
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            started = time.monotonic()
            while True:  # a request is sent again after 503 + Retry-After, until it is answered
                try:
                    response = kind.send(client)
                except httpx.HTTPError as exc:
                    tally.fail(f"{kind.name}: {type(exc).__name__}: {exc}")
                    break
                if response.status_code == 503:  # admission comes before validation: any POST
                    if response.json()["error"]["code"] != "overloaded" or "retry-after" not in response.headers:
                        tally.fail(f"{kind.name}: 503 without overload/Retry-After: {response.text[:200]}")
                        break
                    tally.add("503 overloaded (retried)")
                    time.sleep(int(response.headers["retry-after"]))
                    continue
                if response.status_code != kind.expect:
                    tally.fail(f"{kind.name}: {response.status_code} {response.text[:200]}")
                elif kind.expect == 200 and not kind.check(response):
                    tally.fail(f"{kind.name}: wrong transcript {response.text[:300]}")
                else:
                    tally.add(f"{kind.name}: {response.status_code}")
                    if kind.expect == 200:
                        with tally.lock:
                            tally.good_latencies.append(time.monotonic() - started)
                break


def test_32_clients_for_3_minutes(tmp_path: Path) -> None:
    kinds = _kinds(tmp_path)

    with start_server(tmp_path / "server", WXS_RETRY_AFTER_S=str(RETRY_AFTER_S)) as server:
        with server.client() as client:  # warm-up: every model has run once before memory is taken
            warm = client.post("/transcribe", files={"audio_file": ("jfk.flac", JFK_FLAC.read_bytes())})
            assert warm.status_code == 200
        rss_start = server.tree_rss_mib()
        tally = Tally()
        deadline = time.monotonic() + DURATION_S
        started = time.monotonic()
        threads = [threading.Thread(target=_client_loop, args=(server.url, kinds, deadline, tally, seed))
                   for seed in range(CLIENTS)]
        rss_peak = rss_start
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            time.sleep(2)
            rss_peak = max(rss_peak, server.tree_rss_mib())
        wall = time.monotonic() - started
        rss_end = server.tree_rss_mib()
        leftovers = sorted(p.name for p in server.tmp_dir.iterdir())
        latencies = sorted(tally.good_latencies)
        report = {
            "clients": CLIENTS, "duration_s": DURATION_S, "wall_s": round(wall, 1),
            "answers": dict(tally.answers), "unexpected": tally.unexpected[:20],
            "good_answered": len(latencies),
            "good_latency_p50_s": round(latencies[len(latencies) // 2], 2) if latencies else None,
            "good_latency_p95_s": round(latencies[int(len(latencies) * 0.95)], 2) if latencies else None,
            "rss_start_mib": round(rss_start), "rss_peak_mib": round(rss_peak), "rss_end_mib": round(rss_end),
            "temp_files_left": leftovers,
        }
        logger.info("load test: %s", json.dumps(report))
        if path := os.environ.get("WXS_LOAD_REPORT"):
            Path(path).write_text(json.dumps(report, indent=2))

    assert tally.unexpected == [], report
    assert len(latencies) >= CLIENTS, report  # the service kept answering good requests
    assert any(k.startswith("bad") for k in tally.answers), report
    assert leftovers == [], report
    # Flat memory: after warm-up, RSS may grow by allocator slack, not with the number of requests.
    assert rss_end <= rss_start * 1.15 + 300, report
