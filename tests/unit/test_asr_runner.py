"""The ASR runner in-process on the real tiny.en weights: invariants of its output."""

from __future__ import annotations

import asyncio

import pytest

from tests.data import (
    AISHELL_DIR,
    JFK_FLAC,
    JFK_REFERENCE,
    aishell_references,
    character_error_rate,
    normalize_words,
    word_error_rate,
)
from whisperx_service.audio import decode_audio
from whisperx_service.schema import ChunkJob


def _runner(monkeypatch: pytest.MonkeyPatch, **settings: str):  # type: ignore[no-untyped-def]
    """An ASR runner made with these settings (read when it starts: no module reload)."""
    from runners.asr import ASR
    from whisperx_service.config import get_settings

    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        return ASR.inner()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def asr():  # type: ignore[no-untyped-def]
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _runner(monkeypatch, WXS_ASR_MODEL="whisper-tiny-en")


def _jobs(asr, audio, *, words: bool, language: str = "en"):  # type: ignore[no-untyped-def]
    plan = asr.plan(audio=audio)
    jobs = [ChunkJob(audio=audio[int(c.start * 16000):int(c.end * 16000)], offset=c.start,
                     language=language, aligned_languages=[] if words else [language])
            for c in plan.chunks]
    return plan, jobs


def test_tiny_en_plans_decodes_and_times_words(asr) -> None:  # type: ignore[no-untyped-def]
    audio = asyncio.run(decode_audio(JFK_FLAC, max_seconds=60))
    plan, jobs = _jobs(asr, audio, words=True)
    assert not plan.multilingual and plan.model.startswith("whisper-tiny-en:")
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


def test_workers_decode_chunks_side_by_side_as_one_batch_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers, each decoding one chunk at a time on its own thread (the CPU default), give
    every chunk of a mixed batch exactly the text and words one worker's Whisper batch gives."""
    audio = asyncio.run(decode_audio(JFK_FLAC, max_seconds=60))
    answers = []
    for workers in ("1", "2"):
        runner = _runner(monkeypatch, WXS_ASR_MODEL="whisper-tiny-en", WXS_ASR_WORKERS=workers,
                         WXS_ASR_THREADS="2")
        assert runner.whisper.workers == int(workers)
        _, words = _jobs(runner, audio, words=True)
        _, plain = _jobs(runner, audio[: audio.shape[0] // 2], words=False)
        answers.append([t.model_dump() for t in runner.decode([*plain, *words, *plain])])
    assert answers[0] == answers[1]
    assert answers[1][len(answers[1]) // 2]["words"]  # the chunk with Whisper word timings kept them


@pytest.fixture(scope="module")
def asr_base():  # type: ignore[no-untyped-def]
    """The embedded multilingual `base` model: language detection needs a multilingual model."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _runner(monkeypatch, WXS_ASR_MODEL="whisper-base")


def test_language_is_detected_per_chunk_in_a_mixed_batch(asr_base) -> None:  # type: ignore[no-untyped-def]
    """Chunks of an English and a Mandarin request, both without a language, share one batch:
    each detects its own language on its own encoder output, is decoded in it exactly as if the
    language had been given, and gets Whisper word timings only when its language is not aligned."""
    from whisperx_service.chinese import to_script

    english = asyncio.run(decode_audio(JFK_FLAC, max_seconds=60))
    utterance, reference = next(iter(aishell_references().items()))
    mandarin = asyncio.run(decode_audio(AISHELL_DIR / f"{utterance}.wav", max_seconds=60))
    plans = [asr_base.plan(audio=a) for a in (english, mandarin)]
    assert [p.multilingual for p in plans] == [True, True]  # the language is left to the first decode
    jobs = [ChunkJob(audio=a[int(p.chunks[0].start * 16000):int(p.chunks[0].end * 16000)],
                     offset=p.chunks[0].start, language=None, aligned_languages=["en"])
            for a, p in zip((english, mandarin), plans, strict=True)]

    detected = asr_base.decode(jobs)
    assert [t.language for t in detected] == ["en", "zh"]
    assert all(t.language_probability is not None and t.language_probability > 0.5 for t in detected)
    assert detected[0].words is None  # en: the alignment runner times these words
    assert detected[1].words and all(jobs[1].offset <= w.start <= w.end for w in detected[1].words)  # type: ignore[operator]
    assert word_error_rate(JFK_REFERENCE.read_text(), detected[0].text) <= 0.15
    assert character_error_rate(reference, to_script(detected[1].text, "simplified")) <= 0.25

    given = [asr_base.decode([job.model_copy(update={"language": lang})])[0]
             for job, lang in zip(jobs, ("en", "zh"), strict=True)]
    assert [g.text for g in given] == [d.text for d in detected]


def test_held_decode_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """WXS_ASR_MAX_NEW_TOKENS with end-of-text suppressed decodes exactly that many tokens per
    chunk (what bench/throughput.py --gpu relies on to time random-weight models honestly)."""
    held = _runner(monkeypatch, WXS_ASR_MODEL="whisper-tiny-en", WXS_ASR_MAX_NEW_TOKENS="7",
                   WXS_ASR_SUPPRESS_TOKENS="-1,50256")  # tiny.en's end-of-text
    audio = asyncio.run(decode_audio(JFK_FLAC, max_seconds=60))
    _, jobs = _jobs(held, audio, words=False)
    (text,) = held.decode(jobs)
    tokenizer = held.whisper.tokenizer("en", "transcribe")
    assert len(tokenizer.encode(" " + text.text)) == 7, text.text
    # Words, not punctuation: CPUs round int8 kernels differently ("And so my" / "And so, my").
    held_words = normalize_words(text.text).split()
    assert held_words[:-1] == normalize_words(JFK_REFERENCE.read_text()).split()[:len(held_words) - 1]


@pytest.mark.parametrize("size", ["1", "2"])
def test_any_asr_batch_size_declares_a_servable_decode(size: str) -> None:
    """BentoML refuses a batchable API with max_batch_size < 2: a batch size of 1 is a plain API."""
    import os
    import subprocess
    import sys

    from tests.data import PROJECT

    code = ("import runners.asr as a;"
            "print(a.ASR.apis['decode'].batchable)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WXS_ASR_BATCH_SIZE": size})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(size != "1")
