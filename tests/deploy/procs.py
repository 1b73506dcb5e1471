"""Starting and stopping the processes the deployment tests run (own ports, own process groups)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.procs import stop_tree

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"BENTOML_DO_NOT_TRACK": "true", "WXS_ASR_MODEL": "whisper-base"})
    env.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "whisperx-service" / "numba"))
    env.update(extra)
    return env


def run(cmd: Sequence[str], env: dict[str, str], log: Path, cwd: Path, timeout: float = 600) -> str:
    """Run to completion, append its output to `log`, fail with that output on a non-zero exit."""
    done = subprocess.run(list(cmd), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{output}\n")
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited with {done.returncode}:\n{output[-4000:]}")
    return done.stdout


def start(cmd: Sequence[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 600) -> float:
    """Seconds until `url`/readyz answers 200; fails if the process exits first."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()[-5000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} not ready after {timeout} s:\n{log.read_text()[-5000:]}")


def stop(proc: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    """SIGTERM the server, then SIGKILL whatever of its tree is left (workers run in own sessions)."""
    stop_tree(proc, grace_s)


def private_home(root: Path, name: str) -> dict[str, str]:
    """A BentoML home of one component's own, sharing the model store: `bentoml serve` empties its
    home's Prometheus directory at start, which erased the metrics of components started before it."""
    shared = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")) / "models"
    home = root / f"bentoml-{name}"
    home.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(shared.resolve(), target_is_directory=True)
    return {"BENTOML_HOME": str(home)}
