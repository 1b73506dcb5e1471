"""A real `bentoml serve` of the graph on a free port, shared by the served tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.data import PROJECT
from tests.procs import stop_tree

READY_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    def __init__(self, url: str, tmp_dir: Path, log_path: Path) -> None:
        self.url = url
        self.tmp_dir = tmp_dir
        self.log_path = log_path

    def client(self, timeout: float = 900.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = _free_port()
    base = tmp_path_factory.mktemp("served")
    tmp_dir = base / "uploads"
    tmp_dir.mkdir()
    log_path = base / "serve.log"
    env = dict(os.environ)
    env.update({
        "WXS_ASR_MODEL": "whisper-base",
        "WXS_TMP_DIR": str(tmp_dir),
        "BENTOML_DO_NOT_TRACK": "true",
        "HF_TOKEN": "hf_secret_should_never_be_logged",
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
        yield Served(url, tmp_dir, log_path)
    finally:
        stop_tree(proc)
