"""What both diarization backends share: their interface, audio preparation, speaker counts, turns."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from whisperx_service.audio import pcm_to_float
from whisperx_service.schema import UNKNOWN_SPEAKERS, SpeakerCounts, SpeakerTurn

SAMPLE_RATE = 16000
# Shorter input than this (0.1 s) holds no speaker turn worth reporting.
MIN_SAMPLES = SAMPLE_RATE // 10


class DiarizationBackendImpl(Protocol):
    name: str

    def diarize(self, audio: np.ndarray, speakers: SpeakerCounts = UNKNOWN_SPEAKERS) -> list[SpeakerTurn]: ...


def offline_environment() -> None:
    """Keep pyannote.audio and huggingface_hub off the network: no telemetry, no hub look-ups.

    pyannote.audio 4 sends usage metrics to otel.pyannote.ai unless told not to; it reads the
    variable at each use, so this works before or after its import. Explicit settings win.
    """
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def prepare_audio(audio: np.ndarray) -> np.ndarray:
    """A writable, contiguous, finite float32 mono copy in [-1, 1] (of 16-bit PCM or floats)."""
    wave = pcm_to_float(audio)
    if wave is audio or not wave.flags.writeable:
        wave = wave.copy()
    if wave.ndim > 1:
        wave = wave.mean(axis=-1) if wave.shape[-1] < wave.shape[0] else wave.mean(axis=0)
    wave = np.nan_to_num(wave.reshape(-1), nan=0.0, posinf=1.0, neginf=-1.0)
    np.clip(wave, -1.0, 1.0, out=wave)
    return np.ascontiguousarray(wave)


def is_silent(wave: np.ndarray) -> bool:
    return wave.size < MIN_SAMPLES or float(np.max(np.abs(wave))) < 1e-5


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


def cpu_onnx_session(path: Path, threads: int = 1) -> Any:
    """An ONNX Runtime session on the CPU with `threads` intra-op threads (the exported graphs of
    the embedded pipeline run faster there than in torch: 1.65x segmentation, 1.5x CAM++)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
