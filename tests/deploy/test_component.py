"""One image, any component: `python -m deploy.component` serves one service of the graph alone
(BentoML's `service_name=`) or the gateway against runners served elsewhere (`dependency_map=`),
as the Kubernetes Deployments run it. Here every component is its own local process.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.component import build_parser, default_bento_dir, parse_dependency
from tests.data import JFK_FLAC, JFK_REFERENCE, PROJECT, word_error_rate
from tests.deploy import procs

RUNNERS = ("asr", "align", "diarize")


def test_parser_reads_components_and_dependency_map() -> None:
    args = build_parser().parse_args(
        ["--component", "gateway", "--port", "3100", "--dependency", "asr=http://whisperx-asr:3000"])
    assert (args.component, args.port, args.dependency) == ("gateway", 3100, [("asr", "http://whisperx-asr:3000")])
    with pytest.raises(Exception, match="NAME=URL"):
        parse_dependency("asr:3000")
    assert default_bento_dir() == PROJECT  # a source checkout; in a bento: the bento directory


def test_unknown_component_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([str(procs.BIN / "python"), "-m", "deploy.component", "--component", "nope"],
                          cwd=PROJECT, env=procs.base_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "unknown component 'nope'" in done.stderr and "asr" in done.stderr


@pytest.fixture(scope="module")
def components(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("components")
    env = procs.base_env(WXS_TMP_DIR=str(root))
    started: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for name in RUNNERS:
            port = procs.free_port()
            log = root / f"{name}.log"
            proc = procs.start([str(procs.BIN / "python"), "-m", "deploy.component", "--component", name,
                                "--host", "127.0.0.1", "--port", str(port)], env, log, PROJECT)
            started.append(proc)
            urls[name] = f"http://127.0.0.1:{port}"
            procs.wait_ready(proc, urls[name], log)
        port = procs.free_port()
        log = root / "gateway.log"
        deps = [arg for name in RUNNERS for arg in ("--dependency", f"{name}={urls[name]}")]
        proc = procs.start([str(procs.BIN / "python"), "-m", "deploy.component", "--component", "gateway",
                            "--host", "127.0.0.1", "--port", str(port), *deps], env, log, PROJECT)
        started.append(proc)
        urls["gateway"] = f"http://127.0.0.1:{port}"
        procs.wait_ready(proc, urls["gateway"], log)
        urls["gateway_log"] = str(log)
        yield urls
    finally:
        for proc in reversed(started):
            procs.stop(proc)


@pytest.mark.served
def test_each_runner_alone_answers_its_probes(components: dict[str, str]) -> None:
    for name in RUNNERS:
        assert httpx.get(f"{components[name]}/readyz", timeout=10).status_code == 200, name
        assert httpx.get(f"{components[name]}/livez", timeout=10).status_code == 200, name
        assert "bentoml_service_request_in_progress" in httpx.get(f"{components[name]}/metrics", timeout=10).text


@pytest.mark.served
def test_gateway_with_remote_runners_transcribes_jfk(components: dict[str, str]) -> None:
    with JFK_FLAC.open("rb") as fh:
        response = httpx.post(f"{components['gateway']}/transcribe", files={"audio_file": ("jfk.flac", fh)},
                              timeout=600)
    assert response.status_code == 200, response.text
    body = response.json()
    text = " ".join(s["text"] for s in body["segments"])
    assert word_error_rate(JFK_REFERENCE.read_text(), text) <= 0.15, text
    assert body["diarization"]["enabled"] and body["diarization"]["num_speakers"] >= 1
    # the gateway ran no runner of its own: its log shows no model loading
    log = Path(components["gateway_log"]).read_text()
    assert "ASR ready" not in log and "diarization ready" not in log
    # and the runners did the work
    for name in ("asr", "diarize"):
        metrics = httpx.get(f"{components[name]}/metrics", timeout=10).text
        assert any(line.startswith("bentoml_service_request_total") and 'http_response_code="200"' in line
                   for line in metrics.splitlines()), name
