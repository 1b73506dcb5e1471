from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.data import JFK_FLAC, PYANNOTE_SAMPLE
from whisperx_service.audio import SAMPLE_RATE, decode_audio
from whisperx_service.errors import AudioTooLong, EmptyUpload, InvalidAudio


def decode(path: Path, max_seconds: float = 3600.0) -> np.ndarray:
    return asyncio.run(decode_audio(path, max_seconds=max_seconds))


def test_stereo_flac_becomes_mono_16k_float() -> None:
    audio = decode(JFK_FLAC)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.shape[0] / SAMPLE_RATE - 11.0) < 0.1
    assert 0.05 < float(np.abs(audio).max()) <= 1.0


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "x.wav"
    empty.write_bytes(b"")
    with pytest.raises(EmptyUpload):
        decode(empty)


def test_not_audio(tmp_path: Path) -> None:
    text = tmp_path / "x.wav"
    text.write_text("hello " * 100)
    with pytest.raises(InvalidAudio):
        decode(text)


def test_truncated_wav_is_refused(tmp_path: Path) -> None:
    data = PYANNOTE_SAMPLE.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(InvalidAudio):  # ffmpeg (-xerror) or our declared-length check
        decode(cut)


def test_duration_limit_stops_before_model_work() -> None:
    with pytest.raises(AudioTooLong):
        decode(PYANNOTE_SAMPLE, max_seconds=10.0)


def test_pcm_crosses_services_in_half_the_bytes_with_the_same_samples() -> None:
    from whisperx_service.audio import decode_pcm, pcm_to_float

    pcm = asyncio.run(decode_pcm(JFK_FLAC, max_seconds=60))
    floats = decode(JFK_FLAC)
    assert pcm.dtype == np.int16 and pcm.nbytes * 2 == floats.nbytes
    assert np.array_equal(pcm_to_float(pcm), floats)  # exact: 16-bit samples scaled by a power of two
    assert pcm_to_float(floats) is floats  # runners take floats too
