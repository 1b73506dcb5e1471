"""Shared pieces of the benchmarks: serving the graph on a free port, measuring memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from tests.procs import stop_tree  # noqa: E402

__all__ = ["PROJECT", "TreeMemory", "by_role", "cpu_by_role", "free_port", "process_role", "rss_by_role",
           "serve_graph", "stop_tree"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_role(proc: psutil.Process) -> str:
    """A served process's name: its BentoML service (`--service-name`), else `arbiter`."""
    try:
        args = proc.cmdline()
    except psutil.Error:
        return "gone"
    if "--service-name" in args[:-1]:
        return args[args.index("--service-name") + 1]
    return "arbiter" if "serve" in args else Path(args[0]).name if args else "?"


def by_role(root: int, read: Callable[[psutil.Process], float]) -> dict[str, float]:
    """`read` of each process of the tree, summed by role (children of a role fold into it)."""
    out: dict[str, float] = {}
    top = psutil.Process(root)
    for proc in [top, *top.children(recursive=True)]:
        try:
            value = read(proc)
            role = process_role(proc)
        except psutil.Error:
            continue
        out[role] = out.get(role, 0.0) + value
    return out


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds so far of each process of the tree, by role."""
    return by_role(root, _cpu_seconds)


def rss_by_role(root: int) -> dict[str, float]:
    """Resident MiB of each live process of the tree, by role."""
    rss = by_role(root, lambda proc: proc.memory_info().rss / 2**20)
    return {role: mib for role, mib in rss.items() if role not in ("gone", "?")}


class TreeMemory(threading.Thread):
    """Samples the RSS of a process and its children every 0.5 s; keeps the peak of the sum and
    each process's own peak (by role: arbiter, whisperx gateway, asr, align, diarize)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_mib = 0.0
        self.peak_by_process_mib: dict[str, float] = {}
        self.stop_event = threading.Event()

    def current_mib(self) -> float:
        """The whole tree's RSS now."""
        total = 0.0
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
        return total

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                sizes = {process_role(p): p.memory_info().rss / 2**20 for p in procs if p.is_running()}
            except psutil.Error:
                continue
            self.peak_mib = max(self.peak_mib, sum(sizes.values()))
            for role, mib in sizes.items():
                if role not in ("gone", "?") and mib > 0:  # exited meanwhile, or a zombie
                    self.peak_by_process_mib[role] = max(self.peak_by_process_mib.get(role, 0.0), mib)


def serve_graph(env: dict[str, str], timeout_s: float = 600,
                cwd: Path = PROJECT) -> tuple[subprocess.Popen[bytes], str, float, TreeMemory]:
    """Start `bentoml serve service:Gateway` (of the project in `cwd`); return (process, url,
    seconds to ready, memory probe)."""
    port = free_port()
    bentoml = Path(sys.executable).parent / "bentoml"
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(bentoml), "serve", "service:Gateway", "--port", str(port), "--host", "127.0.0.1"],
        cwd=cwd, env={**os.environ, "BENTOML_DO_NOT_TRACK": "true", **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    memory = TreeMemory(proc.pid)
    memory.start()
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url, time.monotonic() - started, memory
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() - started > timeout_s:
            stop_tree(proc)
            raise RuntimeError("the served graph did not become ready")
        time.sleep(0.5)
