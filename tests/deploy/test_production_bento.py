"""The bento built with the seed's production set, exported, imported elsewhere and served with
the network cut.

A copied Hugging Face cache (tests/prod_layouts.py, random weights) holds faster-whisper large-v3
(every file and the 128-mel input at tiny's layer sizes), speaker-diarization-3.1 with its two
sub-model snapshots (full size) and the Chinese aligner (its layout and vocabulary, 2 small
layers): CI time, not the shapes, is what the small layers save (bench/production_models.py builds
them all at full size). `python -m models import-hf-cache` fills a fresh store; `bentoml build .
--arg asr_model=whisper-large-v3 --arg diarization_model=diarization-pyannote-3.1` packages that
set (the arguments travel in the bento); the export is imported into another fresh home and
served, with no WXS_ model variable set, inside a network namespace with loopback only and the
model store read-only. A Mandarin recording comes back with the imported aligner's word times and
the imported pipeline's speakers. Random weights decode garbage: the output is held to a few tokens
per chunk and structure is checked, not words.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import soundfile
import yaml

from tests import prod_layouts as pl
from tests.data import PROJECT
from tests.deploy import bentos, procs
from tests.served.test_transcribe import check_word_invariants

logger = logging.getLogger("tests.deploy.production")
pytestmark = pytest.mark.served

END_OF_TEXT = 50257  # the same id in large-v3
BUILD_ARGS = ("--arg", "asr_model=whisper-large-v3", "--arg", "diarization_model=diarization-pyannote-3.1")


@dataclass
class Served:
    bento_models: set[str]
    bento_args: dict[str, Any]
    result: dict[str, Any]
    duration: float
    serve_log: Path
    numbers: dict[str, float]


def _env(**extra: str) -> dict[str, str]:
    env = procs.base_env(**extra)
    for name in ("WXS_ASR_MODEL", "WXS_DIARIZATION_MODEL"):  # the bento's arguments choose them
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    import bentoml

    root = tmp_path_factory.mktemp("production-bento")
    build_home, serve_home = root / "build-home", root / "serve-home"
    build_env, serve_env = _env(BENTOML_HOME=str(build_home)), _env(
        BENTOML_HOME=str(serve_home), WXS_ASR_MAX_NEW_TOKENS="8", WXS_ASR_SUPPRESS_TOKENS=f"-1,{END_OF_TEXT}")
    logs = {name: root / f"{name}.log" for name in ("models", "build", "export", "import", "serve")}
    numbers: dict[str, float] = {}

    # 1. the copied HF cache, imported into a fresh store (plus the NLTK data the aligner needs)
    hub = pl.seed_hub(root / "hub", Path(bentoml.models.get("whisper-base").path), whisper_shape="tiny-128",
                      zh_full_size=False, english=False)
    build_home.mkdir()
    for command in (["prepare", "nltk-punkt-tab"], ["import-hf-cache", str(hub)]):
        procs.run([sys.executable, "-m", "models", *command], build_env, logs["models"], PROJECT)

    # 2. build with the production set chosen by bento arguments; export; import elsewhere
    tag = bentos.build(build_env, logs["build"], *BUILD_ARGS)
    bento_yaml = yaml.safe_load((build_home / "bentos" / tag.replace(":", "/") / "bento.yaml").read_text())
    export_file = root / "whisperx-service.tar"
    bentos.export_and_import(tag, export_file, build_env, serve_env, logs, numbers)
    numbers["export_file_mib"] = round(export_file.stat().st_size / 2**20, 1)

    # 3. serve it with the network cut and the store read-only; a Mandarin recording
    recording = pl.mandarin_recording(root / "aishell.wav")
    result = bentos.serve_offline(tag, serve_env, serve_home, recording, root, logs["serve"], {"language": "zh"})
    numbers.update({k: float(result[k]) for k in ("cold_start_s", "transcribe_s") if k in result})
    logger.info("production bento %s: %s", tag, numbers)
    return Served(bento_models={m["tag"].split(":")[0] for s in bento_yaml["services"] for m in s["models"]},
                  bento_args=dict(bento_yaml.get("args") or {}), result=result,
                  duration=soundfile.info(recording).duration, serve_log=logs["serve"], numbers=numbers)


def test_bento_packages_the_production_set_it_was_built_with(served: Served) -> None:
    assert served.bento_args == {"asr_model": "whisper-large-v3", "diarization_model": "diarization-pyannote-3.1"}
    assert served.bento_models == {"whisper-large-v3", "diarization-pyannote-3.1", "alignment-zh",
                                   "nltk-punkt-tab"}


def test_imported_production_bento_transcribes_mandarin_with_the_network_cut(served: Served) -> None:
    bentos.assert_served_offline(served.result, served.serve_log)
    body = served.result["body"]
    assert body["language"] == "zh"
    assert abs(body["duration"] - served.duration) < 0.05
    assert body["alignment"]["method"] == "wav2vec2", body["alignment"]
    assert body["alignment"]["model"].startswith("alignment-zh:"), body["alignment"]
    diarization = body["diarization"]
    assert diarization["enabled"] and diarization["backend"] == "pyannote"
    assert diarization["model"].startswith("diarization-pyannote-3.1:"), diarization
    assert body["segments"] and body["word_segments"], body
    check_word_invariants(body)
    log = served.serve_log.read_text()
    assert "whisper-large-v3" in log and "whisper-base" not in log


def test_cli_rejects_an_argument_that_is_no_setting(tmp_path: Path) -> None:
    """A typo in `--arg` fails the build, naming it, instead of packaging the defaults."""
    env = _env(BENTOML_HOME=str(tmp_path / "home"))
    done = subprocess.run([str(procs.BIN / "bentoml"), "build", ".", "--arg", "asr_modle=whisper-large-v3"],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "asr_modle name no setting" in done.stdout + done.stderr
    assert not list((tmp_path / "home").rglob("bento.yaml")), "a bento was stored"
