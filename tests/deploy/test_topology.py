"""The whole multi-process topology, as the Kubernetes manifests run it: a Redis job store, two
gateways, one ASR, one alignment and one diarization runner, each its own `deploy.component`
process on a loopback port.

Async jobs are submitted on gateway A and polled and fetched on B; the gateway running a job is
SIGKILLed mid-job (a pod lost) and the other finishes it; sync requests go through both gateways;
a voice stored on A names a speaker on B, and once deleted on B is gone on A; after the retention
nothing is left in Redis and no gateway that exited normally left a temp file.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
import soundfile as sf

from tests.data import (
    AMI_DIR,
    AMI_RTTM,
    JFK_FLAC,
    JFK_REFERENCE,
    PROJECT,
    diarization_error_rate,
    load_rttm,
    word_error_rate,
)
from tests.deploy import procs
from tests.redis_server import redis_server

pytestmark = pytest.mark.served
logger = logging.getLogger("tests.topology")

RUNNERS = ("asr", "align", "diarize")
RETENTION_S = 40
VISIBILITY_S = 8
JOB_UPLOAD_MAX_MB = 4
JOB_TIMEOUT_S = 600


@dataclass
class Topology:
    redis_url: str
    root: Path
    gateways: dict[str, str] = field(default_factory=dict)  # A, B -> URL
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    tmp_dirs: dict[str, Path] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)  # stopped by a test
    sigkilled: set[str] = field(default_factory=set)

    def client(self, gateway: str, timeout: float = 600) -> httpx.Client:
        return httpx.Client(base_url=self.gateways[gateway], timeout=timeout)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def gateway_of_pid(self, pid: int) -> str | None:
        for name in self.gateways:
            tree = [psutil.Process(self.procs[name].pid), *psutil.Process(self.procs[name].pid).children(True)]
            if pid in {p.pid for p in tree}:
                return name
        return None

    def sigkill(self, name: str) -> None:
        """SIGKILL the component and every process under it at once (a pod lost: no drain, no cleanup)."""
        root = psutil.Process(self.procs[name].pid)
        tree = [root, *root.children(recursive=True)]
        for proc in tree:
            proc.kill()
        psutil.wait_procs(tree, timeout=30)
        self.procs[name].wait()
        self.killed.add(name)
        self.sigkilled.add(name)


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    root = tmp_path_factory.mktemp("topology")
    with redis_server() as url:
        top = Topology(url, root)
        urls: dict[str, str] = {}
        try:
            for name in RUNNERS:  # started together, then waited for
                port = procs.free_port()
                urls[name] = f"http://127.0.0.1:{port}"
                top.procs[name] = procs.start(
                    [str(procs.BIN / "python"), "-m", "deploy.component", "--component", name,
                     "--host", "127.0.0.1", "--port", str(port)],
                    procs.base_env(WXS_TMP_DIR=str(root), **procs.private_home(root, name)), root / f"{name}.log",
                    PROJECT)
            for name in RUNNERS:
                procs.wait_ready(top.procs[name], urls[name], root / f"{name}.log")
            deps = [arg for name in RUNNERS for arg in ("--dependency", f"{name}={urls[name]}")]
            for name in ("A", "B"):
                port = procs.free_port()
                top.tmp_dirs[name] = root / f"uploads-{name}"
                top.tmp_dirs[name].mkdir()
                env = procs.base_env(
                    WXS_TMP_DIR=str(top.tmp_dirs[name]), WXS_JOB_STORE=url,
                    WXS_JOB_RETENTION_S=str(RETENTION_S), WXS_JOB_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
                    WXS_JOB_UPLOAD_MAX_MB=str(JOB_UPLOAD_MAX_MB),
                    **procs.private_home(root, name))
                top.gateways[name] = f"http://127.0.0.1:{port}"
                top.procs[name] = procs.start(
                    [str(procs.BIN / "python"), "-m", "deploy.component", "--component", "gateway",
                     "--host", "127.0.0.1", "--port", str(port), *deps], env, root / f"{name}.log", PROJECT)
            for name in ("A", "B"):
                procs.wait_ready(top.procs[name], top.gateways[name], root / f"{name}.log")
            yield top
        finally:
            for name, proc in reversed(top.procs.items()):
                if name not in top.killed:
                    procs.stop(proc)


def _poll(top: Topology, gateway: str, task_id: str, timeline: list[dict[str, Any]],
          until: tuple[str, ...] = ("completed", "failed"), timeout_s: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    started = time.monotonic()
    with top.client(gateway, timeout=30) as http:
        while time.monotonic() - started < timeout_s:
            response = http.get(f"/jobs/{task_id}")
            assert response.status_code == 200, (gateway, response.text)
            progress = response.json()
            last = next((entry for entry in reversed(timeline) if "state" in entry), None)
            if last is None or (last["state"], last["stage"], last["polled_on"]) != (
                    progress["state"], progress["stage"], gateway):
                timeline.append({"t": round(time.time(), 1), "polled_on": gateway, "state": progress["state"],
                                 "stage": progress["stage"], "fraction": progress["fraction"]})
                logger.info("job %s on %s: %s", task_id[:8], gateway, timeline[-1])
            if progress["state"] in until or progress["stage"] in until:
                return dict(progress)
            time.sleep(0.5)
    pytest.fail(f"job {task_id} did not reach {until} in {timeout_s} s: {timeline}")


def test_job_submitted_on_a_is_polled_and_fetched_on_b(topology: Topology) -> None:
    timeline: list[dict[str, Any]] = []
    with topology.client("A") as a, JFK_FLAC.open("rb") as fh:
        submitted = a.post("/v1/audio/transcriptions/jobs/submit", files={"file": ("jfk.flac", fh)},
                           data={"model": "whisper-1", "response_format": "verbose_json",
                                 "timestamp_granularities": "word,segment"})
    assert submitted.status_code == 200, submitted.text
    assert submitted.json()["status"] == "in_progress"
    task_id = submitted.json()["task_id"]
    progress = _poll(topology, "B", task_id, timeline)
    assert progress["state"] == "completed" and progress["fraction"] == 1.0, timeline
    assert progress["result_url"] == f"/v1/audio/transcriptions/jobs/get?task_id={task_id}"
    with topology.client("B") as b, topology.client("A") as a:
        assert b.get(f"/v1/audio/transcriptions/jobs/status?task_id={task_id}").json()["status"] == "completed"
        body = b.get(progress["result_url"]).json()
        assert a.get(progress["result_url"]).json() == body  # the same answer from either replica
    assert body["language"] == "english" and body["words"] and body["segments"]
    assert word_error_rate(JFK_REFERENCE.read_text(), body["text"]) <= 0.15, body["text"]
    words = body["words"]
    assert all(w["start"] <= w["end"] <= body["duration"] + 0.05 for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)


def test_job_errors_from_either_gateway(topology: Topology) -> None:
    with topology.client("A") as a, topology.client("B") as b:
        for http in (a, b):
            missing = http.get("/jobs/0123456789abcdef0123456789abcdef")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
            for route in ("/jobs/transcribe", "/v1/audio/transcriptions/jobs"):
                assert http.get(f"{route}/status?task_id=nope").status_code == 404
                assert http.get(f"{route}/get?task_id=nope").status_code == 404
        # over the job-upload limit (the upload is kept in Redis): 413 at submit, nothing stored
        too_big = a.post("/jobs/transcribe/submit",
                         files={"audio_file": ("big.wav", b"\0" * (JOB_UPLOAD_MAX_MB * 2**20 + 1))})
        assert too_big.status_code == 413, too_big.text
        assert too_big.json()["error"]["code"] == "upload_too_large"
        assert "WXS_JOB_UPLOAD_MAX_MB" in too_big.json()["error"]["message"]
        no_file = a.post("/jobs/transcribe/submit", data={"language": "en"})
        assert no_file.status_code == 400 and no_file.json()["error"]["code"] == "missing_file", no_file.text
        # a bad parameter fails the job (as with the local store); the failure is read on B
        with JFK_FLAC.open("rb") as fh:
            submitted = a.post("/v1/audio/transcriptions/jobs/submit", files={"file": ("jfk.flac", fh)},
                               data={"model": "whisper-1", "response_format": "docx"})
        task_id = submitted.json()["task_id"]
    progress = _poll(topology, "B", task_id, [])
    assert progress["state"] == "failed" and progress["error"]["error"]["param"] == "response_format"
    with topology.client("B") as b:
        stored = b.get(f"/v1/audio/transcriptions/jobs/get?task_id={task_id}")
        assert stored.json()["error"]["code"] == "invalid_value"


def test_sync_requests_through_both_gateways(topology: Topology) -> None:
    for gateway in ("A", "B"):
        with topology.client(gateway) as http, JFK_FLAC.open("rb") as fh:
            response = http.post("/transcribe", files={"audio_file": ("jfk.flac", fh)})
        assert response.status_code == 200, response.text
        text = " ".join(s["text"] for s in response.json()["segments"])
        assert word_error_rate(JFK_REFERENCE.read_text(), text) <= 0.15, (gateway, text)


def test_a_voice_stored_on_a_names_a_speaker_on_b_and_deleted_on_b_is_gone_on_a(topology: Topology) -> None:
    audio, rate = sf.read(str(JFK_FLAC), dtype="float32")
    sample = io.BytesIO()
    sf.write(sample, audio[rate:10 * rate], rate, format="WAV", subtype="PCM_16")
    with topology.client("A") as a, topology.client("B") as b:
        stored = a.post("/v1/speakers", data={"name": "Kennedy"},
                        files={"file": ("kennedy.wav", sample.getvalue(), "audio/wav")})
        assert stored.status_code == 201, stored.text
        voice = stored.json()
        assert redis.Redis.from_url(topology.redis_url).hexists("wxs:voices", voice["id"])
        assert b.get(f"/v1/speakers/{voice['id']}").json() == voice
        with JFK_FLAC.open("rb") as fh:
            named = b.post("/transcribe", files={"audio_file": ("jfk.flac", fh)},
                           data={"known_speaker_ids[]": [voice["id"]]})
        assert named.status_code == 200, named.text
        assert named.json()["diarization"]["known_speakers"][0]["speaker"] == "SPEAKER_00"
        assert {w["speaker"] for w in named.json()["word_segments"]} == {"Kennedy"}
        assert b.delete(f"/v1/speakers/{voice['id']}").status_code == 204
        assert a.get(f"/v1/speakers/{voice['id']}").status_code == 404
        assert voice["id"] not in {v["id"] for v in a.get("/v1/speakers").json()["data"]}


def test_gateway_killed_mid_job_the_other_finishes_it(topology: Topology) -> None:
    """Submit on A; SIGKILL whichever gateway runs the job once it is transcribing; the survivor
    takes it over after the visibility timeout and completes it."""
    wav = AMI_DIR / "dev00.wav"
    timeline: list[dict[str, Any]] = []
    with topology.client("A") as a, wav.open("rb") as fh:
        submitted = a.post("/jobs/transcribe/submit", files={"audio_file": ("dev00.wav", fh)},
                           data={"min_speakers": "2", "max_speakers": "4"})
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["task_id"]
    _poll(topology, "B", task_id, timeline, until=("asr", "align", "completed", "failed"))
    store = redis.Redis.from_url(topology.redis_url)
    pending = store.xpending_range("wxs:jobs", "gateways", min="-", max="+", count=10)
    assert len(pending) == 1, pending
    consumer = pending[0]["consumer"].decode()
    runner = topology.gateway_of_pid(int(consumer.split("-")[-2]))
    assert runner is not None, consumer
    survivor = "B" if runner == "A" else "A"
    before = _poll(topology, survivor, task_id, timeline, until=("running",), timeout_s=5)
    assert before["state"] == "running", timeline
    topology.sigkill(runner)
    killed_at = time.time()
    timeline.append({"t": round(killed_at, 1), "event": f"SIGKILL gateway {runner} (running the job)"})
    logger.info("SIGKILLed gateway %s at stage %s", runner, before["stage"])
    progress = _poll(topology, survivor, task_id, timeline)
    assert progress["state"] == "completed", timeline
    assert "run 2 (its previous gateway stopped mid-job)" in topology.log(survivor)
    with topology.client(survivor) as http:
        body = http.get(f"/jobs/transcribe/get?task_id={task_id}").json()
    assert abs(body["duration"] - sf.info(str(wav)).duration) < 0.1 and body["language"] == "en"
    words = [w for s in body["segments"] for w in s["words"]]
    assert words and all(w.get("speaker") for w in words)
    turns = [(t["start"], t["end"], t["speaker"]) for t in body["diarization"]["speaker_turns"]]
    der = diarization_error_rate(load_rttm(AMI_RTTM, "dev00"), turns)
    assert der <= 0.5, der
    logger.info("kill timeline: %s", timeline)
    # the survivor still answers sync requests
    with topology.client(survivor) as http, JFK_FLAC.open("rb") as fh:
        assert http.post("/transcribe", files={"audio_file": ("jfk.flac", fh)}).status_code == 200


def test_readiness_needs_the_job_store(topology: Topology) -> None:
    gateway = next(name for name in topology.gateways if name not in topology.killed)
    redis.Redis.from_url(topology.redis_url).execute_command("CLIENT", "PAUSE", "6000", "ALL")  # answers nobody
    with topology.client(gateway, timeout=30) as http:
        paused = http.get("/readyz")
        assert paused.status_code == 503 and paused.json()["error"]["code"] == "not_ready", paused.text
        assert "job store" in paused.json()["error"]["message"]
        deadline = time.monotonic() + 60
        while http.get("/readyz").status_code != 200:  # ready again once Redis answers
            assert time.monotonic() < deadline, "not ready again after Redis came back"
            time.sleep(0.5)


def test_sigterm_drains_a_running_job_before_exit(topology: Topology) -> None:
    """A gateway scaled down (SIGTERM) takes no new job and finishes the one it runs, then exits."""
    gateway = next(name for name in topology.gateways if name not in topology.killed)
    with topology.client(gateway) as http, JFK_FLAC.open("rb") as fh:
        submitted = http.post("/jobs/transcribe/submit", files={"audio_file": ("jfk.flac", fh)})
    task_id = submitted.json()["task_id"]
    _poll(topology, gateway, task_id, [], until=("asr", "align", "completed", "failed"))
    proc = topology.procs[gateway]
    proc.terminate()
    assert proc.wait(timeout=300) == 0
    topology.killed.add(gateway)  # gone (its temp files were removed: checked below)
    record = redis.Redis.from_url(topology.redis_url).hget(f"wxs:job:{task_id}", "progress")
    assert record is not None and json.loads(record)["state"] == "completed", record
    assert not list(topology.tmp_dirs[gateway].iterdir())


def test_nothing_left_after_retention(topology: Topology) -> None:
    store = redis.Redis.from_url(topology.redis_url)
    deadline = time.monotonic() + RETENTION_S + 30
    while keys := sorted(k.decode() for k in store.keys("wxs:*") if k != b"wxs:jobs"):
        assert time.monotonic() < deadline, f"Redis keys left after the retention: {keys}"
        time.sleep(2)
    assert store.xlen("wxs:jobs") == 0
    assert store.xpending("wxs:jobs", "gateways")["pending"] == 0
    for name, directory in topology.tmp_dirs.items():
        if name not in topology.sigkilled:  # a SIGKILLed process cannot remove its spool (its pod's emptyDir goes)
            assert not list(directory.iterdir()), (name, list(directory.iterdir()))
