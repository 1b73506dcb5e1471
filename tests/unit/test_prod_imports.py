"""`python -m models import-hf-cache` and the loose-directory imports on the exact public layouts
of the seed's production models (random weights, tests/prod_layouts.py), and each bad input
refused with a message naming the missing piece, the store left as it was.

Sizes: the pyannote models and the English aligner at full size; the Chinese aligner here with
two small layers (its full 315-M-parameter shape is served in tests/served/test_production_models.py);
faster-whisper large-v3's every file and vocabulary with tiny's layer sizes and 128 mel bins.
Everything runs in a fresh BENTOML_HOME of its own, in child processes (as a user runs the CLI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import prod_layouts as pl
from tests.data import PROJECT


def _home(root: Path) -> Path:
    home = root / "bentoml-home"
    home.mkdir(exist_ok=True)
    return home


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true")
    return subprocess.run([sys.executable, "-m", "models", *args], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=600)


def _stored(home: Path) -> dict[str, dict[str, object]]:
    """name -> model.yaml of every version in the store (what is on disk, not what the CLI says)."""
    return {f"{p.parent.parent.name}:{p.parent.name}": yaml.safe_load(p.read_text())
            for p in (home / "models").glob("*/*/model.yaml")}


@pytest.fixture(scope="module")
def base_whisper() -> Path:
    import bentoml

    return Path(bentoml.models.get("whisper-base").path)  # its vocabulary, for large-v3's


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, base_whisper: Path) -> Path:
    hub = tmp_path_factory.mktemp("hf") / "hub"
    pl.hf_cache_entry(hub, pl.WHISPER_LARGE_V3, lambda d: pl.build_faster_whisper_large_v3(d, base_whisper,
                                                                                           shape="tiny-128"))
    pl.hf_cache_entry(hub, pl.DIARIZATION_3_1, pl.build_speaker_diarization_3_1)
    pl.hf_cache_entry(hub, pl.SEGMENTATION_3_0, pl.build_segmentation_3_0)
    pl.hf_cache_entry(hub, pl.WESPEAKER, pl.build_wespeaker_resnet34)
    pl.hf_cache_entry(hub, pl.COMMUNITY_1, pl.build_community_1)
    pl.hf_cache_entry(hub, pl.ALIGN_ZH, lambda d: pl.build_wav2vec2_zh(d, full_size=False))
    pl.hf_cache_entry(hub, pl.ALIGN_EN, pl.build_wav2vec2_base_960h)
    return hub


def test_hf_cache_imports_each_seed_model_with_licence_sha256_and_revision(hub: Path, tmp_path: Path) -> None:
    home = _home(tmp_path)
    done = _cli(home, "import-hf-cache", str(hub))
    assert done.returncode == 0, done.stderr[-3000:]
    stored = _stored(home)
    by_name = {tag.split(":")[0]: info for tag, info in stored.items()}
    assert set(by_name) == {"whisper-large-v3", "diarization-pyannote-3.1", "diarization-pyannote-community-1",
                            "alignment-zh", "alignment-en"}, sorted(by_name)
    expected = {
        "whisper-large-v3": (pl.WHISPER_LARGE_V3, "mit", {"role": "asr"}),
        "diarization-pyannote-3.1": (pl.DIARIZATION_3_1, "mit", {"role": "diarization"}),
        "diarization-pyannote-community-1": (pl.COMMUNITY_1, "cc-by-4.0", {"role": "diarization"}),
        "alignment-zh": (pl.ALIGN_ZH, "apache-2.0", {"role": "alignment", "language": "zh"}),
        "alignment-en": (pl.ALIGN_EN, "apache-2.0", {"role": "alignment", "language": "en"}),
    }
    from models.catalog import hash_tree

    for name, (repo, licence, labels) in expected.items():
        info = by_name[name]
        meta = info["metadata"]
        assert isinstance(meta, dict)
        revision = (hub / f"models--{repo.replace('/', '--')}" / "refs" / "main").read_text()
        assert meta["repository"] == repo and meta["revision"] == revision
        assert meta["source"] == f"Hugging Face cache: {repo}@{revision}"
        assert meta["licence"] == licence
        assert labels.items() <= dict(info["labels"]).items()  # type: ignore[call-overload]
        # the sha256 recorded is that of the bytes stored, and of the snapshot's files
        model_dir = home / "models" / name / str(info["version"])
        assert meta["files"] == hash_tree(model_dir)
        snapshot = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
        for rel, digest in hash_tree(snapshot).items():
            assert meta["files"][rel] == digest, (name, rel)
    # 3.1's sub-models came from their own snapshots, recorded with their revisions and licences
    components = by_name["diarization-pyannote-3.1"]["metadata"]["components"]  # type: ignore[index]
    assert set(components) == {pl.SEGMENTATION_3_0, pl.WESPEAKER}
    assert "(cc-by-4.0)" in components[pl.WESPEAKER]
    files = by_name["diarization-pyannote-3.1"]["metadata"]["files"]  # type: ignore[index]
    assert {"config.yaml", f"{pl.SEGMENTATION_3_0}/pytorch_model.bin", f"{pl.WESPEAKER}/pytorch_model.bin"} <= set(files)
    large_v3 = by_name["whisper-large-v3"]["metadata"]["files"]  # type: ignore[index]
    assert {"model.bin", "config.json", "preprocessor_config.json", "tokenizer.json", "vocabulary.json"} <= set(large_v3)
    # the manifest shows them, and a second run stores nothing new
    again = _cli(home, "import-hf-cache", str(hub))
    assert again.returncode == 0 and _stored(home).keys() == stored.keys()


def test_stored_pipelines_load_offline_and_diarize(hub: Path, tmp_path: Path) -> None:
    """Both imported pipelines, loaded by the serving side's loader, run on a real recording."""
    home = _home(tmp_path)
    assert _cli(home, "import-hf-cache", str(hub), "--only", pl.DIARIZATION_3_1, pl.COMMUNITY_1).returncode == 0
    script = (
        "import json, sys, bentoml, soundfile; from pathlib import Path;"
        "from whisperx_service.diarization.pyannote_backend import PyannoteBackend;"
        "from tests.data import PYANNOTE_SAMPLE;"
        "audio, _ = soundfile.read(PYANNOTE_SAMPLE, dtype='float32'); out = {};"
        "[out.__setitem__(n, [(t.start, t.end) for t in PyannoteBackend(Path(bentoml.models.get(n).path)).diarize(audio)])"
        " for n in ('diarization-pyannote-3.1', 'diarization-pyannote-community-1')];"
        "print(json.dumps(out))"
    )
    env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    turns = json.loads(done.stdout.strip().splitlines()[-1])
    for name, found in turns.items():
        assert all(0 <= start < end <= 30.0 for start, end in found), (name, found)


def test_loose_directories_import_with_sub_models_beside_the_pipeline(tmp_path: Path) -> None:
    home = _home(tmp_path)
    pipeline = pl.build_loose_diarization_3_1(tmp_path / "data")
    done = _cli(home, "import-diarization", "diarization-pyannote-3.1", str(pipeline))
    assert done.returncode == 0, done.stderr[-3000:]
    (info,) = _stored(home).values()
    assert f"{pl.WESPEAKER}/pytorch_model.bin" in info["metadata"]["files"]  # type: ignore[index]


def _assert_refused(home: Path, done: subprocess.CompletedProcess[str], *needles: str) -> None:
    before = _stored(home)
    assert done.returncode == 1, done.stderr[-3000:]
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr[-3000:])
    assert _stored(home) == before
    assert not list((home / "models").glob("*/*/.*")), "no staging left in the store"


def test_bad_inputs_are_refused_naming_the_missing_piece(tmp_path: Path, base_whisper: Path) -> None:
    home = _home(tmp_path)
    (home / "models").mkdir()
    # a whisper directory missing a file
    whisper = pl.build_faster_whisper_large_v3(tmp_path / "large-v3", base_whisper, shape="tiny-128")
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(whisper, broken)
    (broken / "tokenizer.json").unlink()
    _assert_refused(home, _cli(home, "import-whisper", "large-v3", str(broken)), "lacks tokenizer.json")
    # large-v3 without its preprocessor_config.json: faster-whisper would feed it 80 mel bins
    (broken / "tokenizer.json").write_bytes((whisper / "tokenizer.json").read_bytes())
    (broken / "preprocessor_config.json").unlink()
    _assert_refused(home, _cli(home, "import-whisper", "large-v3", str(broken)), "128 mel bins",
                    "preprocessor_config.json is missing")
    # a wav2vec2 without a vocabulary, and one whose vocabulary does not fit its output layer
    aligner = pl.build_wav2vec2_zh(tmp_path / "zh", full_size=False)
    (aligner / "vocab.json").rename(tmp_path / "vocab.json")
    _assert_refused(home, _cli(home, "import-alignment", "zh", str(aligner)), "lacks vocab.json")
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    vocab["多"] = len(vocab) + 5
    (aligner / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    _assert_refused(home, _cli(home, "import-alignment", "zh", str(aligner)), "vocab_size")
    # a pipeline naming a hub id with no local snapshot
    pipeline = pl.build_loose_diarization_3_1(tmp_path / "data")
    shutil.rmtree(tmp_path / "data" / "wespeaker-voxceleb-resnet34-LM")
    _assert_refused(home, _cli(home, "import-diarization", "d31", str(pipeline)),
                    f"the embedding model '{pl.WESPEAKER}'", "no local copy")
    # ...and one whose embedding slot holds a segmentation model
    shutil.copytree(tmp_path / "data" / "segmentation-3.0", tmp_path / "data" / "wespeaker-voxceleb-resnet34-LM")
    _assert_refused(home, _cli(home, "import-diarization", "d31", str(pipeline)),
                    "is a pyannote.audio.models.segmentation.PyanNet.PyanNet, not a model for its embedding slot")
    # community-1 without its PLDA
    community = pl.build_community_1(tmp_path / "community-1")
    (community / "plda" / "plda.npz").unlink()
    _assert_refused(home, _cli(home, "import-diarization", "c1", str(community)), "plda", "lacks plda.npz")
    # a missing directory
    _assert_refused(home, _cli(home, "import-alignment", "en", str(tmp_path / "nowhere")), "is not a directory")
    assert _stored(home) == {}


def test_hf_cache_stores_the_good_ones_and_names_the_broken_one(hub: Path, tmp_path: Path) -> None:
    copy = tmp_path / "hub"
    shutil.copytree(hub, copy, symlinks=True)
    shutil.rmtree(copy / f"models--{pl.WESPEAKER.replace('/', '--')}")
    home = _home(tmp_path)
    done = _cli(home, "import-hf-cache", str(copy))
    assert done.returncode == 1
    assert f"{pl.DIARIZATION_3_1}: FAILED" in done.stderr and pl.WESPEAKER in done.stderr
    names = {tag.split(":")[0] for tag in _stored(home)}
    assert names == {"whisper-large-v3", "diarization-pyannote-community-1", "alignment-zh", "alignment-en"}
