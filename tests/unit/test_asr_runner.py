"""The ASR runner in-process on the real tiny.en weights: invariants of its output."""

from __future__ import annotations

import asyncio

import pytest

from tests.data import JFK_FLAC, JFK_REFERENCE, word_error_rate
from whisperx_service.audio import decode_audio
from whisperx_service.schema import ChunkJob


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


def _jobs(asr, audio, *, words: bool, language: str | None = None):  # type: ignore[no-untyped-def]
    plan = asr.plan(audio=audio, language=language)
    jobs = [ChunkJob(audio=audio[int(c.start * 16000):int(c.end * 16000)], offset=c.start,
                     language=plan.language, word_timestamps=words) for c in plan.chunks]
    return plan, jobs


def test_tiny_en_plans_decodes_and_times_words(asr) -> None:  # type: ignore[no-untyped-def]
    audio = asyncio.run(decode_audio(JFK_FLAC, max_seconds=60))
    plan, jobs = _jobs(asr, audio, words=True)
    assert plan.language == "en" and plan.model.startswith("whisper-tiny-en:")
    assert plan.chunks and all(0 <= c.start < c.end <= 11.1 for c in plan.chunks)
    texts = asr.decode(jobs)
    assert len(texts) == len(jobs)
    text = " ".join(t.text for t in texts)
    assert word_error_rate(JFK_REFERENCE.read_text(), text) <= 0.15
    previous = 0.0
    for chunk, result in zip(plan.chunks, texts, strict=True):
        assert result.words
        assert "".join(w.word for w in result.words).replace(" ", "") == result.text.replace(" ", "")
        for word in result.words:
            assert word.start is not None and word.end is not None
            assert chunk.start - 1e-3 <= word.start <= word.end <= chunk.end + 1e-3
            assert word.start >= previous
            previous = word.start


def test_batching_keeps_each_chunk_with_its_own_result(asr) -> None:  # type: ignore[no-untyped-def]
    """A batch mixing two requests (and word-timing choices) answers each chunk as if alone."""
    audio = asyncio.run(decode_audio(JFK_FLAC, max_seconds=60))
    _, alone = _jobs(asr, audio, words=True)
    half = audio[: audio.shape[0] // 2]
    _, other = _jobs(asr, half, words=False)
    expected_alone = asr.decode(alone)
    expected_other = asr.decode(other)
    mixed = asr.decode([other[0], *alone, *other[1:]])
    assert [m.model_dump() for m in mixed] == [r.model_dump() for r in [expected_other[0], *expected_alone, *expected_other[1:]]]
    assert all(t.words is None for t in expected_other)
