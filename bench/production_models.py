"""Sizes and memory of the graph on the seed's production set, beside the embedded defaults.

Builds the production models' public layouts with random weights at full size
(tests/prod_layouts.py: faster-whisper large-v3, 1.55 B parameters in float16; pyannote
speaker-diarization-3.1 with segmentation-3.0 and wespeaker-resnet34; the Chinese aligner at
large-xlsr-53's shape; the English base-960h aligner), puts them in a Hugging Face cache layout,
imports it with `python -m models import-hf-cache` into a fresh BENTOML_HOME, serves the graph on
them and on the embedded defaults, transcribes the same Mandarin recording with each and prints,
side by side: model-store sizes, import time, time to ready, each process's resident memory once
ready and at its peak, and the request's stage timings. Random weights decode garbage, so the
output is held to `--held-tokens` per chunk with end-of-text suppressed (as bench/throughput.py).

It also builds the bento on that set (`bentoml build . --arg asr_model=... --arg
diarization_model=...`, as the README says), exports it with `bentoml export` (tar), and prints
what a container image built from it (`bentoml containerize`) would hold, layer by layer: the
bento with its models, the `pip install` of requirements.lock (each locked distribution's installed
files, as this virtualenv holds them), the Debian packages of `docker.system_packages` (ffmpeg's
dependency closure as dpkg records it here: an upper bound, the base image already has some) and
the image itself when a docker daemon answers (`docker image inspect`). Ends with a JSON line.

    .venv/bin/python bench/production_models.py [--whisper-shape large-v3|tiny-128] [--device cpu]
        [--no-serve]   # sizes only: layouts, import, bento, export, image estimate
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import PROJECT, serve_graph, stop_tree

from tests import prod_layouts as pl

END_OF_TEXT = 50257


def _tree_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


BUILD_ARGS = {"asr_model": "whisper-large-v3", "diarization_model": "diarization-pyannote-3.1"}


def _pip_layer_mib() -> tuple[float, int, list[str], dict[str, float]]:
    """Installed size of every distribution requirements.lock pins, as this virtualenv holds it
    (what `pip install -r requirements.txt` writes into the image); the pins not installed here;
    the five largest distributions, MiB."""
    from importlib import metadata

    total, counted, missing, each = 0, 0, [], {}
    for line in (PROJECT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" not in line:
            continue
        name = line.split("==")[0].split("[")[0].strip()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        counted += 1
        size = 0
        for file in dist.files or []:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                size += path.stat().st_size
        total += size
        each[name] = round(size / 2**20, 1)
    largest = dict(sorted(each.items(), key=lambda kv: -kv[1])[:5])
    return round(total / 2**20, 1), counted, missing, largest


def _apt_layer_mib(packages: list[str]) -> float | None:
    """Installed size (dpkg's Installed-Size) of `packages` and their Depends/PreDepends closure."""
    try:
        out = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                              "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *packages],
                             capture_output=True, text=True, check=True).stdout
        names = {line.strip() for line in out.splitlines() if line and not line.startswith((" ", "<"))}
        sizes = subprocess.run(["dpkg-query", "-W", "-f=${Installed-Size}\n", *sorted(names)],
                               capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return round(sum(int(x) for x in sizes.split() if x.isdigit()) / 1024, 1)


def _docker_image_mib(tag: str) -> str:
    """`bentoml containerize` and the image's size, or why there is none."""
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if info.returncode != 0:
        return "no docker daemon here: " + (info.stderr.strip().splitlines() or ["?"])[-1][:120]
    image = f"whisperx-service-bench:{tag.split(':')[1]}"
    subprocess.run([str(Path(sys.executable).parent / "bentoml"), "containerize", tag, "--image-tag", image],
                   check=True)
    size = subprocess.run(["docker", "image", "inspect", image, "--format", "{{.Size}}"], check=True,
                          capture_output=True, text=True).stdout
    return f"{int(size) / 2**20:.0f} MiB ({image})"


def _bento_sizes(home: Path, env: dict[str, str], work: Path) -> dict[str, Any]:
    """Build the bento on the production set, export it, estimate the image: sizes and times."""
    bentoml = str(Path(sys.executable).parent / "bentoml")
    args = [a for k, v in BUILD_ARGS.items() for a in ("--arg", f"{k}={v}")]
    started = time.monotonic()
    built = subprocess.run([bentoml, "build", ".", *args, "--output", "tag"], cwd=PROJECT, env=env, check=True,
                           capture_output=True, text=True)
    bento_s = time.monotonic() - started
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento_dir = home / "bentos" / tag.replace(":", "/")
    import yaml

    bento_models = sorted({m["tag"] for svc in yaml.safe_load((bento_dir / "bento.yaml").read_text())["services"]
                           for m in svc["models"]})
    models_mib = sum(_tree_mib(home / "models" / Path(*t.split(":"))) for t in bento_models)
    export = work / "whisperx-service.tar"
    started = time.monotonic()
    subprocess.run([bentoml, "export", tag, str(export)], env=env, check=True, capture_output=True)
    export_s = time.monotonic() - started
    pip_mib, pip_counted, pip_missing, pip_largest = _pip_layer_mib()
    system = yaml.safe_load((PROJECT / "bentofile.yaml").read_text())["docker"]["system_packages"]
    apt_mib = _apt_layer_mib(system)
    bento_src_mib = _tree_mib(bento_dir)
    sizes: dict[str, Any] = {"tag": tag, "bento_models": bento_models, "build_s": round(bento_s), "export_s": round(export_s),
             "bento_src_mib": bento_src_mib, "bento_models_mib": round(models_mib, 1),
             "export_tar_mib": round(export.stat().st_size / 2**20, 1), "pip_layer_mib": pip_mib,
             "pip_pins_counted": pip_counted, "pip_pins_not_installed_here": pip_missing,
             "pip_largest_mib": pip_largest,
             "apt_layer_mib_upper_bound": apt_mib, "docker_image": _docker_image_mib(tag)}
    sizes["image_estimate_mib_without_base"] = round(bento_src_mib + models_mib + pip_mib + (apt_mib or 0), 1)
    export.unlink()
    return sizes


def _print_sizes(sizes: dict[str, Any]) -> None:
    print(f"bento {sizes['tag']} (built in {sizes['build_s']} s, export in {sizes['export_s']} s), "
          f"declares {', '.join(sizes['bento_models'])}")
    rows = [("bento: code and environment files", sizes["bento_src_mib"]),
            ("bento: its models (copied into the export/image)", sizes["bento_models_mib"]),
            ("`bentoml export` archive (tar)", sizes["export_tar_mib"]),
            (f"image layer: pip install of the lock ({sizes['pip_pins_counted']} pins)", sizes["pip_layer_mib"]),
            ("image layer: apt ffmpeg closure (upper bound)", sizes["apt_layer_mib_upper_bound"]),
            ("image estimate, without the base image", sizes["image_estimate_mib_without_base"])]
    for label, mib in rows:
        print(f"  {label:<58}{mib if mib is not None else 'n/a':>12} MiB")
    print(f"  largest pins (MiB): {json.dumps(sizes['pip_largest_mib'])}")
    print(f"  docker image: {sizes['docker_image']}")
    if sizes["pip_pins_not_installed_here"]:
        print(f"  (pins not installed here, not counted: {', '.join(sizes['pip_pins_not_installed_here'])})")


def _serve_once(env: dict[str, str], recording: Path) -> dict[str, Any]:
    proc, url, ready_s, memory = serve_graph(env, timeout_s=1800)
    try:
        time.sleep(2)
        idle = {role: round(mib) for role, mib in memory.peak_by_process_mib.items()}
        with recording.open("rb") as fh:
            response = httpx.post(f"{url}/transcribe", files={"audio_file": ("rec.wav", fh, "audio/wav")},
                                  data={"language": "zh"}, timeout=1800)
        body = response.json()
        time.sleep(1)
        return {"status": response.status_code, "ready_s": round(ready_s, 1), "rss_ready_mib": idle,
                "rss_peak_mib": {r: round(m) for r, m in memory.peak_by_process_mib.items()},
                "tree_peak_mib": round(memory.peak_mib),
                "alignment": body.get("alignment"), "diarization_model": body.get("diarization", {}).get("model"),
                "timings": body.get("timings")}
    finally:
        memory.stop_event.set()
        stop_tree(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--whisper-shape", default="large-v3", choices=["large-v3", "tiny-128"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--held-tokens", type=int, default=8)
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a temp dir, removed)")
    parser.add_argument("--no-serve", action="store_true", help="sizes only: do not serve either graph")
    args = parser.parse_args()

    import bentoml

    base = Path(bentoml.models.get("whisper-base").path)
    work = args.work or Path(tempfile.mkdtemp(prefix="prodmodels-"))
    hub, home = work / "hub", work / "home"
    home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pl.seed_hub(hub, base, whisper_shape=args.whisper_shape)
    build_s = time.monotonic() - started

    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    subprocess.run([sys.executable, "-m", "models", "prepare", "nltk-punkt-tab"], cwd=PROJECT, env=env, check=True)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "models", "import-hf-cache", str(hub)], cwd=PROJECT, env=env, check=True)
    import_s = time.monotonic() - started
    sizes = {p.name: _tree_mib(p) for p in sorted((home / "models").iterdir()) if p.is_dir()}
    # the bento built on them: which models it declares and carries, its export, the image
    bento = _bento_sizes(home, env, work)
    served_env = {f"WXS_{k.upper()}": v for k, v in BUILD_ARGS.items()}
    summary: dict[str, Any] = {"whisper_shape": args.whisper_shape, "device": args.device,
                               "layouts_s": round(build_s), "import_s": round(import_s), "store_mib": sizes,
                               "bento": bento}
    print(f"whisper shape {args.whisper_shape}, device {args.device}; layouts built in {build_s:.0f} s, "
          f"imported in {import_s:.0f} s")
    print("model-store sizes (MiB):", json.dumps(sizes))
    _print_sizes(bento)
    if args.no_serve:
        _finish(summary, args.work is None, work)
        return
    recording = pl.mandarin_recording(work / "aishell.wav")
    production = _serve_once({"BENTOML_HOME": str(home), **served_env, "WXS_DEVICE": args.device,
                              "WXS_ASR_MAX_NEW_TOKENS": str(args.held_tokens),
                              "WXS_ASR_SUPPRESS_TOKENS": f"-1,{END_OF_TEXT}"}, recording)
    defaults = _serve_once({"WXS_ASR_MODEL": "whisper-base", "WXS_DEVICE": args.device}, recording)
    roles = sorted(set(production["rss_peak_mib"]) | set(defaults["rss_peak_mib"]))
    print(f"{'process':<12}{'production ready':>18}{'peak':>8}{'defaults ready':>16}{'peak':>8}{'ratio':>8}")
    for role in roles:
        p_ready = production["rss_ready_mib"].get(role, 0)
        p_peak = production["rss_peak_mib"].get(role, 0)
        d_ready = defaults["rss_ready_mib"].get(role, 0)
        d_peak = defaults["rss_peak_mib"].get(role, 0)
        print(f"{role:<12}{p_ready:>18}{p_peak:>8}{d_ready:>16}{d_peak:>8}{p_peak / max(d_peak, 1):>8.2f}")
    print(f"{'whole tree':<12}{'':>18}{production['tree_peak_mib']:>8}{'':>16}{defaults['tree_peak_mib']:>8}")
    for name, run in (("production", production), ("defaults", defaults)):
        print(f"{name}: status {run['status']}, ready in {run['ready_s']} s, alignment {run['alignment']}, "
              f"diarization model {run['diarization_model']}, timings {json.dumps(run['timings'])}")
    _finish({**summary, "production": production, "defaults": defaults}, args.work is None, work)


def _finish(summary: dict[str, Any], remove: bool, work: Path) -> None:
    sys.stdout.write(json.dumps(summary) + "\n")
    if remove:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
