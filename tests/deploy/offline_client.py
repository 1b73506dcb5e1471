"""Run inside a network namespace with loopback only: serve a bento, time its cold start, transcribe.

    python offline_client.py BENTOML_BIN TAG PORT AUDIO OUT_JSON SERVE_LOG WORKDIR [FORM_JSON]

A standalone script (no project imports): the test runs it under `unshare -mn` after mounting the
model store read-only, so the served bento can neither reach a network nor write its models.
FORM_JSON: the /transcribe form fields (default: 1 to 2 speakers). It writes what it saw to
OUT_JSON; the test asserts on that.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil


def network_probe() -> dict[str, object]:
    interfaces = sorted(name for _, name in socket.if_nameindex())  # this namespace's, via netlink
    try:
        socket.create_connection(("1.1.1.1", 443), timeout=3).close()
        outside = "reachable"
    except OSError as exc:
        outside = f"{type(exc).__name__}: {exc}"
    return {"interfaces": interfaces, "outside": outside}


def main() -> int:
    bentoml, tag, port, audio, out, serve_log, workdir = sys.argv[1:8]
    form = json.loads(sys.argv[8]) if len(sys.argv) > 8 else {"min_speakers": "1", "max_speakers": "2"}
    result: dict[str, object] = {"network": network_probe()}
    url = f"http://127.0.0.1:{port}"
    with open(serve_log, "ab") as log:
        proc = subprocess.Popen([bentoml, "serve", tag, "--host", "127.0.0.1", "--port", port],
                                cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.monotonic()
    try:
        while time.monotonic() - started < 600 and proc.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    result["cold_start_s"] = round(time.monotonic() - started, 2)
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        if "cold_start_s" in result:
            with open(audio, "rb") as fh:
                t0 = time.monotonic()
                response = httpx.post(f"{url}/transcribe", files={"audio_file": (Path(audio).name, fh)},
                                      data=form, timeout=600)
            result["transcribe_s"] = round(time.monotonic() - t0, 2)
            result["status"] = response.status_code
            result["body"] = response.json()
        else:
            result["exit_code"] = proc.poll()
    finally:
        # the gateway worker runs in its own session: signal the whole tree, not one group
        # (a standalone copy of tests/procs.py's stop_tree: this script imports nothing of ours)
        if proc.poll() is None:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            for member in tree:
                member.terminate()
            _, alive = psutil.wait_procs(tree, timeout=30)
            for leftover in alive:
                leftover.kill()
            proc.wait()
        Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
