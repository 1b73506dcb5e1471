"""The ASR runner in-process on the real tiny.en weights: invariants of its output."""

from __future__ import annotations

import asyncio

import pytest

from tests.data import JFK_FLAC, JFK_REFERENCE, word_error_rate
from whisperx_service.audio import decode_audio


@pytest.fixture(scope="module")
def asr():  # type: ignore[no-untyped-def]
    import os

    os.environ["WXS_ASR_MODEL"] = "whisper-tiny-en"
    from whisperx_service.config import get_settings

    get_settings.cache_clear()
    import importlib

    import runners.asr as module

    module = importlib.reload(module)
    return module.ASR.inner()


def test_tiny_en_transcribes_and_times_words(asr) -> None:  # type: ignore[no-untyped-def]
    audio = asyncio.run(decode_audio(JFK_FLAC, max_seconds=60))
    result = asr.transcribe(audio=audio)
    assert result.language == "en" and result.model.startswith("whisper-tiny-en:")
    text = " ".join(s.text for s in result.segments)
    assert word_error_rate(JFK_REFERENCE.read_text(), text) <= 0.15
    previous = 0.0
    for segment in result.segments:
        assert segment.words
        for word in segment.words:
            assert word.start is not None and word.end is not None
            assert segment.start - 1e-3 <= word.start <= word.end <= segment.end + 1e-3
            assert word.start >= previous
            previous = word.start


def test_aligned_languages_skip_whisper_word_timing(asr) -> None:  # type: ignore[no-untyped-def]
    audio = asyncio.run(decode_audio(JFK_FLAC, max_seconds=60))
    result = asr.transcribe(audio=audio, aligned_languages=["en"])
    assert result.segments and all(s.words is None for s in result.segments)
