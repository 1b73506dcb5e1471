"""Processes the tests and benchmarks start: stopping a whole `bentoml serve` tree."""

from __future__ import annotations

import contextlib
import subprocess

import psutil


def stop_tree(proc: subprocess.Popen[bytes], grace_s: float = 60) -> None:
    """SIGTERM the whole serve tree, then SIGKILL whatever is left of it after `grace_s`.

    The tree, not the process group: bentoml 1.4.40 starts each worker in a session of its own,
    so a killpg misses them. SIGTERM drains and exits (whisperx_service/lifecycle.py); the
    SIGKILL after `grace_s` is the safety net, so that no test leaves a server behind.
    """
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    proc.wait()
