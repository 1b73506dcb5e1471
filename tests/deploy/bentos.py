"""Building, exporting, importing and serving a bento with the network cut: the steps the offline
bento tests share (tests/deploy/test_bento.py on the embedded defaults,
tests/deploy/test_production_bento.py on production models imported from an HF cache)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tests.data import PROJECT
from tests.deploy import procs

OFFLINE_ATTEMPTS = ("huggingface.co", "Max retries exceeded", "Read-only file system")


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def namespace_prefix(models_dir: Path) -> list[str]:
    """A shell, in new network + mount namespaces, that brings lo up and makes the models read-only."""
    unshare = ["unshare", "-mn"] if os.geteuid() == 0 else ["unshare", "-rmn"]
    script = (f"ip link set lo up && mount --bind '{models_dir}' '{models_dir}' && "
              f"mount -o remount,bind,ro '{models_dir}' '{models_dir}' && exec \"$@\"")
    return [*unshare, "sh", "-c", script, "offline"]


def build(env: dict[str, str], log: Path, *options: str) -> str:
    """`bentoml build . OPTIONS` in the project; the new bento's tag."""
    out = procs.run([str(procs.BIN / "bentoml"), "build", ".", *options, "--output", "tag"], env, log,
                    PROJECT)
    return out.strip().splitlines()[-1].removeprefix("__tag__:")


def export_and_import(tag: str, export_file: Path, build_env: dict[str, str], serve_env: dict[str, str],
                      logs: dict[str, Path], numbers: dict[str, float]) -> None:
    """Export `tag` from the build home to one file, import it into the serving home; times into numbers."""
    bentoml = str(procs.BIN / "bentoml")
    started = time.monotonic()
    procs.run([bentoml, "export", tag, str(export_file)], build_env, logs["export"], export_file.parent)
    numbers["export_s"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    procs.run([bentoml, "import", str(export_file)], serve_env, logs["import"], export_file.parent)
    numbers["import_s"] = round(time.monotonic() - started, 1)


def serve_offline(tag: str, serve_env: dict[str, str], serve_home: Path, audio: Path, root: Path, log: Path,
                  form: dict[str, str]) -> dict[str, Any]:
    """Serve the imported bento inside a network namespace with loopback only and its model store
    read-only, post `audio` to /transcribe with `form`; what tests/deploy/offline_client.py saw."""
    (serve_home / "models").mkdir(parents=True, exist_ok=True)
    workdir = root / "cwd"
    workdir.mkdir()
    out_json = root / "offline.json"
    client = Path(__file__).with_name("offline_client.py")
    command = [*namespace_prefix(serve_home / "models"), str(procs.BIN / "python"), str(client),
               str(procs.BIN / "bentoml"), tag, str(procs.free_port()), str(audio), str(out_json), str(log),
               str(workdir), json.dumps(form)]
    procs.run(command, serve_env, log, workdir, timeout=900)
    return dict(json.loads(out_json.read_text()))


def assert_served_offline(result: dict[str, Any], serve_log: Path) -> None:
    """Loopback only, nothing outside reached, the bento ready and answering 200, no fetch attempted."""
    network = result["network"]
    assert network["interfaces"] == ["lo"], network
    assert network["outside"] != "reachable", network
    assert "cold_start_s" in result, serve_log.read_text()[-5000:]
    assert result["status"] == 200, result
    log = serve_log.read_text()
    for attempt in OFFLINE_ATTEMPTS:
        assert attempt not in log, attempt
