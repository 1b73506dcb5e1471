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

    .venv/bin/python bench/production_models.py [--whisper-shape large-v3|tiny-128] [--device cpu]
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
import numpy as np
import soundfile
from common import PROJECT, serve_graph, stop_tree

from tests import prod_layouts as pl
from tests.data import AISHELL_DIR

END_OF_TEXT = 50257


def _tree_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


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
    args = parser.parse_args()

    import bentoml

    base = Path(bentoml.models.get("whisper-base").path)
    work = args.work or Path(tempfile.mkdtemp(prefix="prodmodels-"))
    hub, home = work / "hub", work / "home"
    home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pl.hf_cache_entry(hub, pl.WHISPER_LARGE_V3,
                      lambda d: pl.build_faster_whisper_large_v3(d, base, shape=args.whisper_shape))
    pl.hf_cache_entry(hub, pl.DIARIZATION_3_1, pl.build_speaker_diarization_3_1)
    pl.hf_cache_entry(hub, pl.SEGMENTATION_3_0, pl.build_segmentation_3_0)
    pl.hf_cache_entry(hub, pl.WESPEAKER, pl.build_wespeaker_resnet34)
    pl.hf_cache_entry(hub, pl.ALIGN_ZH, pl.build_wav2vec2_zh)
    pl.hf_cache_entry(hub, pl.ALIGN_EN, pl.build_wav2vec2_base_960h)
    build_s = time.monotonic() - started

    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    subprocess.run([sys.executable, "-m", "models", "prepare", "nltk-punkt-tab"], cwd=PROJECT, env=env, check=True)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "models", "import-hf-cache", str(hub)], cwd=PROJECT, env=env, check=True)
    import_s = time.monotonic() - started
    sizes = {p.name: _tree_mib(p) for p in sorted((home / "models").iterdir()) if p.is_dir()}
    # the bento built on them: which models it declares and carries, and its size on disk
    served_env = {"WXS_ASR_MODEL": "whisper-large-v3", "WXS_DIARIZATION_MODEL": "diarization-pyannote-3.1"}
    started = time.monotonic()
    built = subprocess.run([str(Path(sys.executable).parent / "bentoml"), "build", ".", "--output", "tag"],
                           cwd=PROJECT, env={**env, **served_env}, check=True, capture_output=True, text=True)
    bento_s = time.monotonic() - started
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento_dir = home / "bentos" / tag.replace(":", "/")
    import yaml

    bento_models = sorted({m["tag"] for svc in yaml.safe_load((bento_dir / "bento.yaml").read_text())["services"]
                           for m in svc["models"]})

    audio = np.concatenate([soundfile.read(p, dtype="float32")[0] for p in sorted(AISHELL_DIR.glob("*.wav"))])
    recording = work / "aishell.wav"
    soundfile.write(recording, audio, 16000, subtype="PCM_16")
    production = _serve_once({"BENTOML_HOME": str(home), **served_env, "WXS_DEVICE": args.device,
                              "WXS_ASR_MAX_NEW_TOKENS": str(args.held_tokens),
                              "WXS_ASR_SUPPRESS_TOKENS": f"-1,{END_OF_TEXT}"}, recording)
    defaults = _serve_once({"WXS_ASR_MODEL": "whisper-base", "WXS_DEVICE": args.device}, recording)
    roles = sorted(set(production["rss_peak_mib"]) | set(defaults["rss_peak_mib"]))
    print(f"whisper shape {args.whisper_shape}, device {args.device}; layouts built in {build_s:.0f} s, "
          f"imported in {import_s:.0f} s")
    print("model-store sizes (MiB):", json.dumps(sizes))
    print(f"bento {tag}: {_tree_mib(bento_dir)} MiB on disk, built in {bento_s:.0f} s, "
          f"declares {', '.join(bento_models)}")
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
    if args.work is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
