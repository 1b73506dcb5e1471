"""Long recordings over fake runners: the language voted over the recording, per-segment
languages, and chunks short of text decoded again or reported (no silent drops)."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from tests.unit.test_pipeline import AUDIO, RATE, Events, FakeAligner, FakeDiarizer
from whisperx_service.longform import (
    is_suspect,
    probes_still_needed,
    spread_indices,
    spread_order,
    text_units,
    vote_language,
    windows,
)
from whisperx_service.params import PER_SEGMENT, TranscribeParams
from whisperx_service.pipeline import Pipeline
from whisperx_service.schema import (
    AsrPlan,
    ChunkJob,
    ChunkText,
    LanguageDetection,
    LanguageProbability,
    TimeSpan,
    Word,
)

CHUNKS = [TimeSpan(start=0.5, end=4.0), TimeSpan(start=5.0, end=9.0), TimeSpan(start=10.0, end=11.5)]


class ScriptedASR:
    """Each chunk (by offset) heard as a language with a confidence, and said as a text; a chunk
    whose text is "" in its whole but has `pieces` gives the piece texts when decoded in parts."""

    def __init__(self, heard: dict[float, tuple[str, float]], said: dict[tuple[float, float], str],
                 pieces: list[list[TimeSpan]] | None = None) -> None:
        self.heard, self.said, self.pieces = heard, said, pieces or []
        self.jobs: list[ChunkJob] = []
        self.detected: list[float] = []

    async def plan(self, *, audio: np.ndarray, request_id: str | None = None) -> AsrPlan:
        return AsrPlan(chunks=CHUNKS, pieces=self.pieces, multilingual=True, model="fake-whisper:1")

    async def decode(self, jobs: list[ChunkJob]) -> list[ChunkText]:
        (job,) = jobs
        self.jobs.append(job)
        await asyncio.sleep(0.001)
        end = round(job.offset + job.audio.shape[0] / RATE, 3)
        heard, p = self.heard.get(job.offset, ("en", 0.9))
        language = job.language or heard
        text = self.said.get((job.offset, end), f"{language} words said at {job.offset}.")
        words = [Word(word=w, start=job.offset, end=end, score=0.9) for w in text.split()]
        ranked = [LanguageProbability(language=heard, probability=p),
                  LanguageProbability(language="en" if heard != "en" else "de", probability=round(1 - p, 4))]
        return [ChunkText(text=text, words=words, language=language,
                          language_probability=None if job.language else p,
                          languages=[] if job.language else ranked)]

    async def detect_language(self, *, audio: np.ndarray, top_k: int = 5) -> LanguageDetection:
        # the window is told by its length (each chunk here is one window of its own length)
        seconds = round(audio.shape[0] / RATE, 3)
        offset = next(c.start for c in CHUNKS if round(c.end - c.start, 3) == seconds)
        self.detected.append(offset)
        heard, p = self.heard.get(offset, ("en", 0.9))
        other = "en" if heard != "en" else "de"
        return LanguageDetection(language=heard, probability=p, alternatives=[
            LanguageProbability(language=heard, probability=p), LanguageProbability(language=other, probability=round(1 - p, 4))])


def _run(asr: ScriptedASR, params: TranscribeParams | None = None) -> object:
    events = Events()
    pipeline = Pipeline(asr, FakeAligner(events, []), FakeDiarizer(events))
    return asyncio.run(pipeline.run(AUDIO, params or TranscribeParams(), request_id="test"))


def test_a_noisy_opening_does_not_decide_the_language() -> None:
    # The opening sounds German (crosstalk), the rest clearly English: English wins, and every
    # chunk, the opening included, is decoded in English.
    asr = ScriptedASR({0.5: ("de", 0.6), 5.0: ("en", 0.97), 10.0: ("en", 0.9)}, {})
    response = _run(asr)
    assert response.language == "en"  # type: ignore[attr-defined]
    assert sorted(asr.detected) == [0.5, 5.0, 10.0]  # windows over the whole recording
    detection = response.language_detection  # type: ignore[attr-defined]
    assert detection.source == "detected" and detection.chunks == 3 and detection.speech_seconds == 9.0
    # (3.5 s * 0.4 + 4 s * 0.97 + 1.5 s * 0.9) / 9 s of speech
    assert detection.probability == round((3.5 * 0.4 + 4 * 0.97 + 1.5 * 0.9) / 9.0, 4)
    assert [a.language for a in detection.alternatives] == ["en", "de"]
    assert [job.language for job in asr.jobs] == ["en", "en", "en"]
    texts = [s.text for s in response.segments]  # type: ignore[attr-defined]
    assert texts == ["en words said at 0.5.", "en words said at 5.0.", "en words said at 10.0."]
    assert all(s.language is None for s in response.segments)  # type: ignore[attr-defined]


def test_detection_stops_once_the_windows_left_cannot_change_the_language() -> None:
    # The two end windows (5 s) are surely English; the middle one (4 s) could at most give
    # another language 4 s of weight, less than English's lead: it is never detected.
    asr = ScriptedASR({0.5: ("en", 0.99), 5.0: ("de", 0.99), 10.0: ("en", 0.99)}, {})
    response = _run(asr)
    assert sorted(asr.detected) == [0.5, 10.0]
    detection = response.language_detection  # type: ignore[attr-defined]
    assert response.language == "en" and detection.chunks == 2 and detection.speech_seconds == 5.0  # type: ignore[attr-defined]
    assert [job.language for job in asr.jobs] == ["en", "en", "en"]


def test_the_early_stopped_vote_names_the_language_every_window_would() -> None:
    rng = random.Random(7)
    languages = ["en", "zh", "de"]
    for _ in range(2000):
        count = rng.randint(1, 12)
        main = rng.choice(languages)
        windows_ = []
        for _ in range(count):
            heard = main if rng.random() < rng.choice([0.5, 0.8, 1.0]) else rng.choice(languages)
            p = rng.uniform(0.3, 1.0)
            other = rng.choice([lang for lang in languages if lang != heard])
            windows_.append((rng.uniform(0.5, 10.0), [LanguageProbability(language=heard, probability=p),
                                                       LanguageProbability(language=other, probability=1 - p)]))
        pending = [windows_[i] for i in spread_order(count)]
        votes: list[tuple[float, list[LanguageProbability]]] = []
        while n := probes_still_needed(votes, [seconds for seconds, _ in pending]):
            votes, pending = votes + pending[:n], pending[n:]
        early, full = vote_language(votes), vote_language(windows_)
        assert early is not None and full is not None and early.language == full.language


def test_spread_order_and_the_first_round() -> None:
    assert spread_order(0) == [] and spread_order(2) == [0, 1]
    assert spread_order(5) == [0, 4, 2, 1, 3] and spread_order(12)[:3] == [0, 11, 5]
    assert sorted(spread_order(40)) == list(range(40))
    # Nothing detected yet: the fewest windows holding more than half of the seconds.
    assert probes_still_needed([], [10.0] * 12) == 7 and probes_still_needed([], []) == 0
    # 12 windows of one language at 0.84 (the composed meeting's): 7 detected, in one round.
    heard = [LanguageProbability(language="en", probability=0.84), LanguageProbability(language="cy", probability=0.05)]
    votes: list[tuple[float, list[LanguageProbability]]] = []
    rounds = []
    while n := probes_still_needed(votes, [5.5] * (12 - len(votes))):
        rounds.append(n)
        votes += [(5.5, heard)] * n
    assert rounds == [7]
    sure = [(50.0, [LanguageProbability(language="en", probability=1.0)])]
    assert probes_still_needed(sure, [10.0] * 4) == 0 and probes_still_needed(sure, [10.0] * 5) == 1


def test_a_given_language_always_wins() -> None:
    asr = ScriptedASR({0.5: ("de", 0.99), 5.0: ("de", 0.99)}, {})
    response = _run(asr, TranscribeParams(language="en", language_mode=PER_SEGMENT))
    assert {job.language for job in asr.jobs} == {"en"}
    assert response.language == "en" and response.language_detection.source == "given"  # type: ignore[attr-defined]


def test_per_segment_mode_labels_each_segment_with_its_language() -> None:
    asr = ScriptedASR({0.5: ("zh", 0.9), 5.0: ("en", 0.95), 10.0: ("zh", 0.95)},
                      {(0.5, 4.0): "我们 先 看 一下 这个 项目 的 进度 然后 再 说", (10.0, 11.5): "好的 谢谢"})
    response = _run(asr, TranscribeParams(language_mode=PER_SEGMENT))
    assert sorted(asr.detected) == [0.5, 5.0, 10.0]  # every window detected
    assert [job.language for job in asr.jobs] == ["zh", "en", "zh"]  # each decoded in its own
    segments = response.segments  # type: ignore[attr-defined]
    assert [s.language for s in segments] == ["zh", "en", "zh"]
    assert segments[0].text == "我们先看一下这个项目的进度然后再说"  # no space between CJK characters
    assert segments[1].text == "en words said at 5.0."
    assert response.language_detection.mode == PER_SEGMENT  # type: ignore[attr-defined]
    assert response.language == "zh"  # type: ignore[attr-defined]  # 5 s of Mandarin against 4 of English


def test_a_chunk_short_of_text_is_decoded_again_in_pieces_and_the_rest_reported() -> None:
    # Chunk 5-9 s: Whisper's whole-chunk decode skips it; its first voiced piece decodes alone,
    # its second gives nothing even alone.
    pieces = [[CHUNKS[0]], [TimeSpan(start=5.0, end=6.5), TimeSpan(start=7.0, end=9.0)], [CHUNKS[2]]]
    asr = ScriptedASR({}, {(5.0, 9.0): "", (5.0, 6.5): "the budget is approved", (7.0, 9.0): ""}, pieces)
    response = _run(asr, TranscribeParams(language="en"))
    assert sorted((job.offset, round(job.audio.shape[0] / RATE, 3)) for job in asr.jobs if job.offset >= 5.0
                  and job.offset < 10.0) == [(5.0, 1.5), (5.0, 4.0), (7.0, 2.0)]
    texts = [s.text for s in response.segments]  # type: ignore[attr-defined]
    assert "the budget is approved" in texts
    warnings = response.warnings  # type: ignore[attr-defined]
    assert [(w.code, w.start, w.end) for w in warnings] == [("speech_without_text", 7.0, 9.0)]


def test_chunks_with_enough_text_are_not_decoded_again() -> None:
    asr = ScriptedASR({}, {})
    response = _run(asr, TranscribeParams(language="en"))
    assert len(asr.jobs) == len(CHUNKS) and response.warnings == []  # type: ignore[attr-defined]


def test_rules() -> None:
    assert spread_indices(3, 12) == [0, 1, 2] and spread_indices(40, 4) == [0, 13, 26, 39]
    assert text_units("首先说一下，刚刚", "zh") == 7 and text_units("Hello, my friends.", "en") == 3
    assert vote_language([]) is None
    pieces = [TimeSpan(start=0.0, end=12.0)]
    assert is_suspect("嗯", "zh", pieces, None) and not is_suspect("我" * 20, "zh", pieces, None)
    word = [Word(word="hi", start=0.0, end=0.5)]
    two = [TimeSpan(start=0.0, end=1.0), TimeSpan(start=1.5, end=4.0)]
    assert is_suspect("hi", "en", two, word)  # 2.5 s voiced piece with no word on it
    cut = windows([TimeSpan(start=0.0, end=25.0), TimeSpan(start=26.0, end=28.0)], TimeSpan(start=0.0, end=28.0))
    assert all(w.end - w.start <= 10.0 for w in cut) and cut[0].start == 0.0 and cut[-1].end == 28.0


def test_per_segment_languages_survive_wav2vec2_alignment() -> None:
    events = Events()
    asr = ScriptedASR({0.5: ("zh", 0.9), 5.0: ("en", 0.95), 10.0: ("zh", 0.95)}, {(0.5, 4.0): "我们 先 看", (10.0, 11.5): "好的"})
    pipeline = Pipeline(asr, FakeAligner(events, ["zh"]), FakeDiarizer(events))
    response = asyncio.run(pipeline.run(AUDIO, TranscribeParams(language_mode=PER_SEGMENT), request_id="test"))
    assert events.log.count("align") == 2  # the two Mandarin parts, by the Mandarin aligner
    assert [(s.language, s.text) for s in response.segments] == [
        ("zh", "我们先看"), ("en", "en words said at 5.0."), ("zh", "好的")]


def test_language_mode_parameter() -> None:
    from whisperx_service.errors import InvalidParameter
    from whisperx_service.params import RECORDING, parse_openai_params, parse_transcribe_params

    limits = {"max_speakers_limit": 32, "default_zh_script": "simplified"}
    assert parse_transcribe_params({}, {}, **limits).language_mode == RECORDING  # type: ignore[arg-type]
    assert parse_transcribe_params({"language_mode": "per_segment"}, {}, **limits).language_mode == PER_SEGMENT  # type: ignore[arg-type]
    assert parse_transcribe_params({}, {"language_mode": "Per-Segment"}, **limits).language_mode == PER_SEGMENT  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter) as refused:
        parse_transcribe_params({"language_mode": "sometimes"}, {}, **limits)  # type: ignore[arg-type]
    assert refused.value.param == "language_mode" and refused.value.status_code == 422
    openai = parse_openai_params({"language_mode": "per_segment"}, [], task="transcribe",
                                 served_models={"whisper-1": "whisper-base"}, **limits)  # type: ignore[arg-type]
    assert openai.transcribe.language_mode == PER_SEGMENT
