"""Real `bentoml serve` processes of the graph on free ports, for the served tests.

`served` is the session's shared server (default settings, smaller limits so the limit cases
are cheap to send). `start_server` starts another one with its own settings (auth, tiny
in-flight limit) for tests that change or end its life (SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.data import PROJECT
from tests.procs import stop_tree

READY_TIMEOUT_S = 600
MAX_UPLOAD_MB = 64
MAX_AUDIO_SECONDS = 1800


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    def __init__(self, url: str, tmp_dir: Path, log_path: Path, proc: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.tmp_dir = tmp_dir
        self.log_path = log_path
        self.proc = proc

    def client(self, timeout: float = 900.0, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tree(self) -> list[psutil.Process]:
        """The serve process and every process under it (arbiter, gateway, runners)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        return []

    def tree_rss_mib(self) -> float:
        total = 0
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total / 2**20


@contextlib.contextmanager
def start_server(base: Path, **settings: str) -> Iterator[Served]:
    """Serve the graph with `settings` (environment variables) until the block ends."""
    port = _free_port()
    tmp_dir = base / "uploads"
    tmp_dir.mkdir(parents=True)
    log_path = base / "serve.log"
    env = dict(os.environ)
    env.update({
        "WXS_ASR_MODEL": "whisper-base",
        "WXS_TMP_DIR": str(tmp_dir),
        "WXS_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
        "WXS_MAX_AUDIO_SECONDS": str(MAX_AUDIO_SECONDS),
        "BENTOML_DO_NOT_TRACK": "true",
        # Each server its own task store: `bentoml serve` deletes the store at start, which
        # corrupted the store of a server still running beside it (sqlite "malformed").
        "BENTOML_RESULT_STORE": str(base / "task_result.db"),
        "HF_TOKEN": "hf_secret_should_never_be_logged",
        **settings,
    })
    bentoml = Path(sys.executable).parent / "bentoml"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(bentoml), "serve", "service:Gateway", "--port", str(port), "--host", "127.0.0.1"],
            cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"bentoml serve exited with {proc.returncode}:\n{log_path.read_text()[-5000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > READY_TIMEOUT_S:
                pytest.fail(f"service not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()[-5000:]}")
            time.sleep(2)
        yield Served(url, tmp_dir, log_path, proc)
    finally:
        stop_tree(proc)


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # The fuzzer submits jobs faster than they fail: room for them (overload has its own server and test).
    with start_server(tmp_path_factory.mktemp("served"), WXS_MAX_IN_FLIGHT="64") as server:
        yield server
