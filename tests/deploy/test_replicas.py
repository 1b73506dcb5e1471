"""ASR runner replicas share the load behind one address, as behind a Kubernetes Service.

haproxy in TCP mode balances each new connection round-robin over the ASR replicas (what
kube-proxy does for a ClusterIP Service); the gateway (`deploy.component`) is pointed at haproxy's
one address. Under a steady load of concurrent requests:

1. two replicas: both get a fair share of decode calls (their own ``/metrics``);
2. a third replica started mid-run and added to the balancer (the endpoints controller adding a
   ready pod) gets calls within `TAKE_UP_S`, because runners close each keep-alive connection after a
   bounded number of calls or seconds (`whisperx_service.connections`), so the gateway reconnects;
3. one replica SIGTERMed mid-run: no request fails.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.data import JFK_FLAC, JFK_REFERENCE, PROJECT, word_error_rate
from tests.deploy import procs

pytestmark = pytest.mark.served
logger = logging.getLogger("tests.replicas")

MAX_AGE_S = 4  # runner connections' bounded life here (default 30 s)
MAX_REQUESTS = 20
TAKE_UP_S = 60  # a replica added mid-run gets its first decode call within this
CLIENTS = 4
_DECODE = re.compile(r'^bentoml_service_request_total\{(?=[^}]*endpoint="/decode")(?=[^}]*http_response_code="200")'
                     r'[^}]*\}\s+([0-9.e+]+)', re.M)


def decode_calls(url: str) -> int:
    """Decode calls a replica answered 200, from its own /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return int(sum(float(v) for v in _DECODE.findall(text)))


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    balancer_socket: Path
    replicas: dict[str, str] = field(default_factory=dict)  # name -> URL
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    gateway: str = ""

    def start_replica(self, name: str) -> str:
        port = procs.free_port()
        url = f"http://127.0.0.1:{port}"
        self.procs[name] = procs.start(
            [str(procs.BIN / "python"), "-m", "deploy.component", "--component", "asr",
             "--host", "127.0.0.1", "--port", str(port)], {**self.env, **procs.private_home(self.root, name)},
            self.root / f"{name}.log", PROJECT)
        self.replicas[name] = url
        return url

    def balancer(self, command: str) -> str:
        """haproxy's runtime API (its admin socket)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.balancer_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def calls(self) -> dict[str, int]:
        out = {}
        for name, url in self.replicas.items():
            proc = self.procs[name]
            if proc.poll() is None:
                with contextlib.suppress(httpx.HTTPError):
                    out[name] = decode_calls(url)
        return out


def _haproxy_config(directory: Path, port: int, servers: dict[str, str]) -> Path:
    lines = [
        "global", f"    stats socket {directory / 'admin.sock'} mode 600 level admin", "    maxconn 2000",
        "defaults", "    mode tcp", "    timeout connect 2s", "    timeout client 1h", "    timeout server 1h",
        "    retries 3", "    option redispatch",
        "frontend asr_in", f"    bind 127.0.0.1:{port}", "    default_backend asr",
        "backend asr", "    balance roundrobin", "    option httpchk GET /readyz", "    timeout check 5s",
        "    default-server inter 1s fall 2 rise 1",
        *(f"    server {name} {url.removeprefix('http://')} check" for name, url in servers.items()),
    ]
    path = directory / "haproxy.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("haproxy is not installed: run bin/setup --dev")
    root = tmp_path_factory.mktemp("replicas")
    env = procs.base_env(WXS_TMP_DIR=str(root), WXS_RUNNER_CONNECTION_MAX_AGE_S=str(MAX_AGE_S),
                         WXS_RUNNER_CONNECTION_MAX_REQUESTS=str(MAX_REQUESTS), WXS_ASR_THREADS="1")
    cluster = Cluster(root, env, root / "admin.sock")
    try:
        others = {}
        for name in ("align", "diarize"):
            port = procs.free_port()
            others[name] = f"http://127.0.0.1:{port}"
            cluster.procs[name] = procs.start(
                [str(procs.BIN / "python"), "-m", "deploy.component", "--component", name,
                 "--host", "127.0.0.1", "--port", str(port)], {**env, **procs.private_home(root, name)},
                root / f"{name}.log", PROJECT)
        for name in ("asr-1", "asr-2"):
            cluster.start_replica(name)
        for name, url in [*others.items(), *cluster.replicas.items()]:
            procs.wait_ready(cluster.procs[name], url, root / f"{name}.log")
        balancer_port = procs.free_port()
        config = _haproxy_config(root, balancer_port, cluster.replicas)
        cluster.procs["haproxy"] = procs.start([haproxy, "-db", "-f", str(config)], env, root / "haproxy.log", root)
        deps = ["--dependency", f"asr=http://127.0.0.1:{balancer_port}",
                *(arg for name, url in others.items() for arg in ("--dependency", f"{name}={url}"))]
        port = procs.free_port()
        cluster.gateway = f"http://127.0.0.1:{port}"
        cluster.procs["gateway"] = procs.start(
            [str(procs.BIN / "python"), "-m", "deploy.component", "--component", "gateway", "--host", "127.0.0.1",
             "--port", str(port), *deps], {**env, **procs.private_home(root, "gateway")}, root / "gateway.log",
            PROJECT)
        procs.wait_ready(cluster.procs["gateway"], cluster.gateway, root / "gateway.log")
        yield cluster
    finally:
        for proc in reversed(cluster.procs.values()):
            procs.stop(proc)


class Load:
    """`CLIENTS` threads sending JFK to the gateway until stopped; every answer kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self.texts: list[str] = []
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _client(self) -> None:
        data = JFK_FLAC.read_bytes()
        with httpx.Client(base_url=self.url, timeout=600) as http:
            while not self.stop.is_set():
                try:
                    response = http.post("/transcribe", files={"audio_file": ("jfk.flac", data)},
                                         data={"diarize": "false"})
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    self.texts.append(" ".join(s["text"] for s in response.json()["segments"]))
                else:
                    self.errors.append(response.text[:300])

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=600)


def _wait(condition: str, check: object, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(f"not within {timeout_s} s: {condition}")


def _shares(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    total = sum(delta.values()) or 1
    return {name: round(count / total, 3) for name, count in delta.items()}


def test_replicas_share_decode_calls_take_up_a_new_one_and_survive_a_sigterm(cluster: Cluster) -> None:
    start = cluster.calls()
    with Load(cluster.gateway) as load:
        # 1. two replicas
        _wait("24 decode calls", lambda: sum(cluster.calls().values()) - sum(start.values()) >= 24, 600)
        two = cluster.calls()
        shares_two = _shares(start, two)
        logger.info("two replicas: decode calls %s, shares %s", two, shares_two)
        assert all(share >= 0.25 for share in shares_two.values()), shares_two

        # 2. a third replica, added to the balancer once ready
        url = cluster.start_replica("asr-3")
        procs.wait_ready(cluster.procs["asr-3"], url, cluster.root / "asr-3.log")
        answer = cluster.balancer(f"add server asr/asr-3 {url.removeprefix('http://')}")
        assert "New server registered" in answer, answer
        cluster.balancer("enable server asr/asr-3")
        added = cluster.calls()
        took = _wait("the added replica gets a decode call", lambda: cluster.calls().get("asr-3", 0) > 0, TAKE_UP_S)
        logger.info("asr-3 got its first decode call %.1f s after it was added", took)
        _wait("18 more decode calls", lambda: sum(cluster.calls().values()) - sum(added.values()) >= 18, 600)
        three = cluster.calls()
        shares_three = _shares(added, three)
        logger.info("three replicas: decode calls %s, shares since added %s", three, shares_three)
        assert shares_three["asr-3"] >= 0.15, shares_three

        # 3. SIGTERM one replica mid-run (a pod scaled down): nothing fails
        before_stop = len(load.statuses)
        cluster.procs["asr-1"].terminate()
        cluster.procs["asr-1"].wait(timeout=300)
        logger.info("asr-1 exited %s after SIGTERM", cluster.procs["asr-1"].returncode)
        _wait("12 more answers after the SIGTERM", lambda: len(load.statuses) - before_stop >= 12, 600)
    after = cluster.calls()
    logger.info("after asr-1 stopped: decode calls %s; %d requests, errors %s", after, len(load.statuses),
                load.errors[:3])
    assert not load.errors and set(load.statuses) == {200}, load.errors[:5]
    assert all(word_error_rate(JFK_REFERENCE.read_text(), text) <= 0.15 for text in load.texts)
    assert "asr-1" not in after and all(after[name] > three[name] for name in ("asr-2", "asr-3")), (three, after)
