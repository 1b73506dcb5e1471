"""Importing the seed's models from a copied Hugging Face hub cache (``~/.cache/huggingface/hub``).

The cache holds one ``models--<org>--<name>`` directory per repository: ``refs/main`` names the
revision, ``snapshots/<revision>/`` holds its files (symlinks into ``blobs/``). Each repository
the service knows becomes one model-store entry, with its licence (the model card's front
matter), the sha256 of every file and the source revision:

- ``*/faster-whisper-<size>`` (``Systran/faster-whisper-large-v3``) -> ``whisper-<size>``;
- ``pyannote/speaker-diarization-<version>`` -> ``diarization-pyannote-<version>``, its
  sub-models (``pyannote/segmentation-3.0``...) taken from their own snapshots in the same cache;
- whisperX's wav2vec2 aligners (``jonatasgrosman/wav2vec2-large-xlsr-53-chinese-zh-cn``...) and
  ``facebook/wav2vec2-base-960h`` (English) -> ``alignment-<language>``.

Each import stands alone: one that fails stores nothing and the others go on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from . import sources

logger = logging.getLogger(__name__)

# Hugging Face ids of wav2vec2 CTC aligners whisperX does not load from the hub itself (its
# English default is torchaudio's bundle; this is the same model in Hugging Face form).
EXTRA_ALIGNERS = {"facebook/wav2vec2-base-960h": "en", "facebook/wav2vec2-large-960h-lv60-self": "en"}
_WHISPER = re.compile(r"^[^/]+/faster-whisper-(?P<size>[\w.-]+)$")
_PIPELINE = re.compile(r"^pyannote/speaker-diarization-(?P<version>[\w.-]+)$")
_KNOWN_LICENCES = {  # when a snapshot carries no model card
    "Systran/faster-whisper-large-v3": "mit",
    "pyannote/speaker-diarization-3.1": "mit",
    "pyannote/segmentation-3.0": "mit",
    "pyannote/wespeaker-voxceleb-resnet34-LM": "cc-by-4.0",
    "pyannote/speaker-diarization-community-1": "cc-by-4.0",
    "jonatasgrosman/wav2vec2-large-xlsr-53-chinese-zh-cn": "apache-2.0",
    "facebook/wav2vec2-base-960h": "apache-2.0",
}


@dataclass(frozen=True)
class Snapshot:
    repo_id: str
    revision: str
    path: Path


@dataclass(frozen=True)
class Outcome:
    repo_id: str
    tag: str | None = None
    error: str | None = None


def snapshots(hub: Path) -> dict[str, Snapshot]:
    """repo id -> its ``refs/main`` snapshot (or its only snapshot) in the hub cache `hub`."""
    if not hub.is_dir():
        raise FileNotFoundError(f"{hub} is not a directory (expected a copy of ~/.cache/huggingface/hub)")
    found: dict[str, Snapshot] = {}
    for repo_dir in sorted(hub.glob("models--*--*")):
        org, _, name = repo_dir.name.removeprefix("models--").partition("--")
        repo_id = f"{org}/{name}"
        ref = repo_dir / "refs" / "main"
        revisions = sorted(p.name for p in (repo_dir / "snapshots").glob("*") if p.is_dir())
        revision = ref.read_text().strip() if ref.is_file() else (revisions[0] if len(revisions) == 1 else "")
        if revision and (repo_dir / "snapshots" / revision).is_dir():
            found[repo_id] = Snapshot(repo_id, revision, repo_dir / "snapshots" / revision)
        else:
            logger.warning("%s: no refs/main snapshot (revisions: %s); skipped", repo_dir.name,
                           ", ".join(revisions) or "none")
    return found


def licence_of(snapshot: Snapshot) -> str:
    """The model card's ``license:`` front matter, else what the repository is known to use."""
    card = snapshot.path / "README.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            front = yaml.safe_load(text.split("---", 2)[1]) or {}
            if isinstance(front, dict) and front.get("license"):
                return str(front["license"])
    return _KNOWN_LICENCES.get(snapshot.repo_id, "see model card")


def _aligners() -> dict[str, str]:
    """Hugging Face id -> language, for every wav2vec2 aligner whisperX names, plus ours."""
    from whisperx.alignment import DEFAULT_ALIGN_MODELS_HF

    return {**{repo: lang for lang, repo in DEFAULT_ALIGN_MODELS_HF.items()}, **EXTRA_ALIGNERS}


def _provenance(snapshot: Snapshot, **more: Any) -> dict[str, Any]:
    return {"repository": snapshot.repo_id, "revision": snapshot.revision, **more}


def plan(found: dict[str, Snapshot]) -> dict[str, Callable[[], str]]:
    """repo id -> the import of that snapshot, for each repository the service uses."""
    aligners = _aligners()
    jobs: dict[str, Callable[[], str]] = {}
    used_by_pipelines: dict[str, str] = {}

    def find_model(repo_id: str, pipeline: str) -> Path | None:
        snapshot = found.get(repo_id)
        if snapshot is not None:
            used_by_pipelines[repo_id] = pipeline
        return snapshot.path if snapshot else None

    for repo_id, snapshot in found.items():
        source = f"Hugging Face cache: {repo_id}@{snapshot.revision}"
        licence = licence_of(snapshot)
        if match := _WHISPER.match(repo_id):
            jobs[repo_id] = partial(sources.import_whisper, match["size"], snapshot.path, licence=licence,
                                    source=source, extra=_provenance(snapshot))
        elif match := _PIPELINE.match(repo_id):
            def import_pipeline(s: Snapshot = snapshot, m: re.Match[str] = match, src: str = source,
                                lic: str = licence) -> str:
                components: dict[str, str] = {}

                def find(sub: str) -> Path | None:
                    path = find_model(sub, s.repo_id)
                    if path is not None:
                        components[sub] = f"{found[sub].revision} ({licence_of(found[sub])})"
                    return path

                # components are filled while the directory is assembled, before it is stored
                extra = _provenance(s, components=components)
                return sources.import_diarization(f"diarization-pyannote-{m['version']}", s.path, licence=lic,
                                                  source=src, find_model=find, extra=extra)
            jobs[repo_id] = import_pipeline
        elif repo_id in aligners:
            jobs[repo_id] = partial(sources.import_alignment, aligners[repo_id], snapshot.path, licence=licence,
                                    source=source, extra=_provenance(snapshot))
    return jobs


def import_hf_cache(hub: Path, only: list[str] | None = None) -> list[Outcome]:
    """Import every model of the hub cache `hub` the service uses (or only the repo ids in `only`)."""
    found = snapshots(hub.expanduser().resolve())
    jobs = plan(found)
    if only:
        unknown = [r for r in only if r not in jobs]
        if unknown:
            raise ValueError(f"not importable from {hub}: {', '.join(unknown)} "
                             f"(found: {', '.join(jobs) or 'nothing this service uses'})")
        jobs = {r: jobs[r] for r in only}
    skipped = sorted(set(found) - set(jobs))
    if skipped:
        logger.info("not imported on their own (sub-models of a pipeline, or unused): %s", ", ".join(skipped))
    outcomes = []
    for repo_id, job in jobs.items():
        try:
            outcomes.append(Outcome(repo_id, tag=job()))
        except (sources.ImportRefused, FileNotFoundError) as exc:
            logger.error("%s: not imported: %s", repo_id, exc)
            outcomes.append(Outcome(repo_id, error=str(exc)))
    return outcomes
