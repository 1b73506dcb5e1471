"""`python -m models import-hf-cache` and the loose-directory imports on the exact public layouts
of the seed's production models (random weights, tests/prod_layouts.py), and each bad input
refused with a message naming the missing piece, the store left as it was.

Sizes: the pyannote models and the English aligner at full size; the Chinese aligner here with
two small layers (its full 315-M-parameter shape is served in tests/served/test_production_models.py);
faster-whisper large-v3's every file and vocabulary with tiny's layer sizes and 128 mel bins.
Everything runs in a fresh BENTOML_HOME of its own, in child processes (as a user runs the CLI).
A cache with one broken snapshot (the others stored, the service started on them) is in the
served test.
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


@pytest.fixture(scope="module")
def imported(hub: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh store into which the whole cache was imported (the BENTOML_HOME)."""
    home = _home(tmp_path_factory.mktemp("imported"))
    done = _cli(home, "import-hf-cache", str(hub))
    assert done.returncode == 0, done.stderr[-3000:]
    return home


def test_hf_cache_imports_each_seed_model_with_licence_sha256_and_revision(hub: Path, imported: Path) -> None:
    home = imported
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


def test_stored_community_1_loads_offline_and_diarizes(imported: Path) -> None:
    """community-1 (VBx clustering with its PLDA), as stored, through the serving side's backend on
    a real recording (3.1 is served end to end in tests/served/test_production_models.py)."""
    home = imported
    script = (
        "import json, bentoml, soundfile; from pathlib import Path;"
        "from whisperx_service.diarization.pyannote_backend import PyannoteBackend;"
        "from tests.data import AISHELL_DIR;"
        "audio, _ = soundfile.read(sorted(AISHELL_DIR.glob('*.wav'))[0], dtype='float32');"
        "backend = PyannoteBackend(Path(bentoml.models.get('diarization-pyannote-community-1').path));"
        "print(json.dumps({'clustering': type(backend.pipeline.clustering).__name__, 'duration': len(audio) / 16000,"
        " 'turns': [(t.start, t.end) for t in backend.diarize(audio)]}))"
    )
    env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["clustering"] == "VBxClustering"
    assert all(0 <= start < end <= found["duration"] + 1e-3 for start, end in found["turns"]), found


def test_loose_directories_import_with_sub_models_beside_the_pipeline(tmp_path: Path) -> None:
    home = _home(tmp_path)
    pipeline = pl.build_loose_diarization_3_1(tmp_path / "data")
    done = _cli(home, "import-diarization", "diarization-pyannote-3.1", str(pipeline))
    assert done.returncode == 0, done.stderr[-3000:]
    (info,) = _stored(home).values()
    assert f"{pl.WESPEAKER}/pytorch_model.bin" in info["metadata"]["files"]  # type: ignore[index]


# Runs each refused import through the CLI's `main` in one child process (one torch import for
# all), printing per case the exit status, what it logged and the store's model.yaml files after it.
_REFUSALS = """
import io, json, logging, sys
from pathlib import Path
from models.__main__ import main
home = Path(sys.argv[1])
out = []
for argv in json.loads(sys.argv[2]):
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logging.getLogger().addHandler(handler)
    try:
        code = main(argv)
    finally:
        logging.getLogger().removeHandler(handler)
    out.append([code, buf.getvalue(), sorted(str(p) for p in (home / "models").rglob("*") if p.is_file())])
print(json.dumps(out))
"""


def test_bad_inputs_are_refused_naming_the_missing_piece(tmp_path: Path, base_whisper: Path) -> None:
    home = _home(tmp_path)
    (home / "models").mkdir()
    cases: list[tuple[list[str], tuple[str, ...]]] = []
    # a whisper directory missing a file
    whisper = pl.build_faster_whisper_large_v3(tmp_path / "large-v3", base_whisper, shape="tiny-128")
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(whisper, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    cases.append((["import-whisper", "large-v3", str(no_tokenizer)], ("lacks tokenizer.json",)))
    # large-v3 without its preprocessor_config.json: faster-whisper would feed it 80 mel bins
    no_preprocessor = tmp_path / "no-preprocessor"
    shutil.copytree(whisper, no_preprocessor)
    (no_preprocessor / "preprocessor_config.json").unlink()
    cases.append((["import-whisper", "large-v3", str(no_preprocessor)],
                  ("128 mel bins", "preprocessor_config.json is missing")))
    # a wav2vec2 without a vocabulary, and one whose vocabulary does not fit its output layer
    no_vocab = pl.build_wav2vec2_zh(tmp_path / "zh-no-vocab", full_size=False)
    vocab = json.loads((no_vocab / "vocab.json").read_text(encoding="utf-8"))
    (no_vocab / "vocab.json").unlink()
    cases.append((["import-alignment", "zh", str(no_vocab)], ("lacks vocab.json",)))
    big_vocab = pl.build_wav2vec2_zh(tmp_path / "zh-big-vocab", full_size=False)
    vocab["多"] = len(vocab) + 5
    (big_vocab / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    cases.append((["import-alignment", "zh", str(big_vocab)], ("vocab_size",)))
    # a pipeline naming a hub id with no local snapshot
    no_embedding = pl.build_loose_diarization_3_1(tmp_path / "no-embedding")
    shutil.rmtree(tmp_path / "no-embedding" / "wespeaker-voxceleb-resnet34-LM")
    cases.append((["import-diarization", "d31", str(no_embedding)],
                  (f"the embedding model '{pl.WESPEAKER}'", "no local copy")))
    # ...and one whose embedding slot holds a segmentation model
    swapped = pl.build_loose_diarization_3_1(tmp_path / "swapped")
    shutil.rmtree(tmp_path / "swapped" / "wespeaker-voxceleb-resnet34-LM")
    shutil.copytree(tmp_path / "swapped" / "segmentation-3.0", tmp_path / "swapped" / "wespeaker-voxceleb-resnet34-LM")
    cases.append((["import-diarization", "d31", str(swapped)],
                  ("is a pyannote.audio.models.segmentation.PyanNet.PyanNet, not a model for its embedding slot",)))
    # community-1 without its PLDA
    community = pl.build_community_1(tmp_path / "community-1")
    (community / "plda" / "plda.npz").unlink()
    cases.append((["import-diarization", "c1", str(community)], ("plda", "lacks plda.npz")))
    # a missing directory, and a cache that is not one
    cases.append((["import-alignment", "en", str(tmp_path / "nowhere")], ("is not a directory",)))
    cases.append((["import-hf-cache", str(tmp_path / "nowhere")], ("is not a directory",)))

    env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true")
    done = subprocess.run([sys.executable, "-c", _REFUSALS, str(home), json.dumps([argv for argv, _ in cases])],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for (argv, needles), (code, logged, store_files) in zip(cases, results, strict=True):
        assert code == 1, (argv, logged)
        for needle in needles:
            assert needle in logged, (argv, needle, logged)
        assert store_files == [], (argv, store_files)  # nothing partial, not even a staging file
