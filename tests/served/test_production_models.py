"""The graph served on the seed's production models, imported from a copied Hugging Face cache.

The cache (tests/prod_layouts.py, random weights) holds faster-whisper large-v3 (every file and
the 128-mel input, tiny's layer sizes), speaker-diarization-3.1 with its two sub-model
snapshots (full size), the Chinese aligner at the full large-xlsr-53 shape (315 M parameters),
the English base-960h aligner (full size) and a community-1 snapshot without its PLDA. The
import stores all but community-1 (which it names as failed); the service starts on what it has
and transcribes a Mandarin recording. Random weights decode garbage, so the output is held to a
few tokens per chunk (as bench/throughput.py does) and structure is checked, not words.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile

from tests import prod_layouts as pl
from tests.data import AISHELL_DIR, PROJECT
from tests.served.conftest import Served, start_server

logger = logging.getLogger("tests.served.production")
pytestmark = pytest.mark.served

END_OF_TEXT = 50257  # the same id in large-v3
HELD_TOKENS = 8


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true")
    return subprocess.run([sys.executable, "-m", "models", *args], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=900)


def _runner_rss_mib(server: Served) -> dict[str, float]:
    """Resident memory of each BentoML service process (gateway and runners), MiB."""
    found: dict[str, float] = {}
    for proc in server.tree():
        with contextlib.suppress(psutil.Error):
            args = proc.cmdline()
            if "--service-name" in args[:-1]:
                name = args[args.index("--service-name") + 1]
                found[name] = found.get(name, 0.0) + proc.memory_info().rss / 2**20
    return {k: round(v) for k, v in sorted(found.items())}


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, subprocess.CompletedProcess[str], Path]]:
    import bentoml

    root = tmp_path_factory.mktemp("production")
    base = Path(bentoml.models.get("whisper-base").path)  # large-v3's vocabulary is derived from it
    hub = root / "hub"
    pl.hf_cache_entry(hub, pl.WHISPER_LARGE_V3, lambda d: pl.build_faster_whisper_large_v3(d, base, shape="tiny-128"))
    pl.hf_cache_entry(hub, pl.DIARIZATION_3_1, pl.build_speaker_diarization_3_1)
    pl.hf_cache_entry(hub, pl.SEGMENTATION_3_0, pl.build_segmentation_3_0)
    pl.hf_cache_entry(hub, pl.WESPEAKER, pl.build_wespeaker_resnet34)
    pl.hf_cache_entry(hub, pl.ALIGN_ZH, pl.build_wav2vec2_zh)
    pl.hf_cache_entry(hub, pl.ALIGN_EN, pl.build_wav2vec2_base_960h)

    def community_without_plda(dest: Path) -> None:
        pl.build_community_1(dest)
        (dest / "plda" / "plda.npz").unlink()

    pl.hf_cache_entry(hub, pl.COMMUNITY_1, community_without_plda)
    home = root / "bentoml-home"  # a store of its own: nothing reaches the shared one
    home.mkdir()
    prepared = _cli(home, "prepare", "nltk-punkt-tab")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    imported = _cli(home, "import-hf-cache", str(hub))
    audio = np.concatenate([soundfile.read(p, dtype="float32")[0] for p in sorted(AISHELL_DIR.glob("*.wav"))])
    recording = root / "aishell.wav"
    soundfile.write(recording, audio, 16000, subtype="PCM_16")
    with start_server(root / "serve", BENTOML_HOME=str(home), WXS_ASR_MODEL="whisper-large-v3",
                      WXS_DIARIZATION_MODEL="diarization-pyannote-3.1", WXS_ASR_MAX_NEW_TOKENS=str(HELD_TOKENS),
                      WXS_ASR_SUPPRESS_TOKENS=f"-1,{END_OF_TEXT}") as server:
        yield server, imported, recording


def test_import_names_the_broken_snapshot_and_stores_the_rest(
        production: tuple[Served, subprocess.CompletedProcess[str], Path]) -> None:
    _, imported, _ = production
    assert imported.returncode == 1
    assert f"{pl.COMMUNITY_1}: FAILED" in imported.stderr and "lacks plda.npz" in imported.stderr
    for repo in (pl.WHISPER_LARGE_V3, pl.DIARIZATION_3_1, pl.ALIGN_ZH, pl.ALIGN_EN):
        assert f"{repo}: stored" in imported.stderr, repo


def test_mandarin_on_the_imported_models(production: tuple[Served, subprocess.CompletedProcess[str], Path]) -> None:
    server, _, recording = production
    duration = soundfile.info(recording).duration
    with server.client() as client, recording.open("rb") as fh:
        response = client.post("/transcribe", files={"audio_file": ("aishell.wav", fh, "audio/wav")},
                               data={"language": "zh"})
    assert response.status_code == 200, response.text
    body = response.json()
    logger.info("runner RSS (MiB) on the production set: %s; timings %s", _runner_rss_mib(server), body["timings"])
    assert body["language"] == "zh"
    assert body["alignment"]["method"] == "wav2vec2", body["alignment"]
    assert body["alignment"]["model"].startswith("alignment-zh:")
    diarization = body["diarization"]
    assert diarization["enabled"] and diarization["backend"] == "pyannote"
    assert diarization["model"].startswith("diarization-pyannote-3.1:"), diarization
    assert body["segments"], body
    words = body["word_segments"]
    assert words, body["segments"]
    timed = [w for w in words if w.get("start") is not None]
    assert len(timed) == len(words), [w for w in words if w.get("start") is None]
    for word in timed:
        assert 0.0 <= word["start"] <= word["end"] <= duration + 1e-3, word
    starts = [w["start"] for w in timed]
    assert starts == sorted(starts)
    for segment in body["segments"]:
        assert 0.0 <= segment["start"] <= segment["end"] <= duration + 1e-3
        assert all(segment["start"] - 1e-3 <= w["start"] <= w["end"] <= segment["end"] + 1e-3
                   for w in segment["words"]), segment
    log = server.log()
    assert "whisper-large-v3" in log and "diarization-pyannote-3.1" in log
    assert "huggingface.co" not in log
