"""The pipeline in process, over fake runners (no models): order, overlap, rules, failures, retries."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import numpy as np
import pytest
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from whisperx_service.errors import StageFailed
from whisperx_service.naming import KnownSpeaker
from whisperx_service.params import TranscribeParams
from whisperx_service.pipeline import Pipeline, PipelineLimits
from whisperx_service.schema import (
    AlignJob,
    AlignResult,
    AsrPlan,
    ChunkJob,
    ChunkText,
    DiarizationResult,
    LanguageDetection,
    LanguageProbability,
    Segment,
    SpeakerCounts,
    SpeakerTurn,
    TimeSpan,
    Word,
)

RATE = 16_000
CHUNKS = [TimeSpan(start=0.5, end=4.0), TimeSpan(start=5.0, end=9.0), TimeSpan(start=10.0, end=11.5)]
AUDIO = np.zeros(12 * RATE, dtype=np.int16)  # the gateway carries 16-bit PCM


class Events:
    def __init__(self) -> None:
        self.log: list[str] = []

    def __call__(self, name: str) -> None:
        self.log.append(name)

    def index(self, name: str) -> int:
        return self.log.index(name)


class FakeASR:
    def __init__(self, events: Events, *, multilingual: bool = True, detected: str = "en",
                 fail: BaseException | None = None, disconnects: int = 0) -> None:
        self.events, self.multilingual, self.detected = events, multilingual, detected
        self.fail, self.disconnects = fail, disconnects
        self.jobs: list[ChunkJob] = []

    async def plan(self, *, audio: np.ndarray, request_id: str | None = None) -> AsrPlan:
        self.events("plan")
        return AsrPlan(chunks=CHUNKS, multilingual=self.multilingual, model="fake-whisper:1")

    async def decode(self, jobs: list[ChunkJob]) -> list[ChunkText]:
        if self.disconnects:
            self.disconnects -= 1
            raise aiohttp.ServerDisconnectedError()
        if self.fail is not None:
            raise self.fail
        (job,) = jobs
        assert job.audio.dtype == np.int16  # chunks cross in half the bytes of float32
        self.jobs.append(job)
        self.events(f"decode@{job.offset}")
        await asyncio.sleep(0.01 + 0.01 * job.offset)  # later chunks take longer
        self.events(f"decoded@{job.offset}")
        language = job.language or self.detected
        end = job.offset + job.audio.shape[0] / RATE
        words = None
        if language not in job.aligned_languages:
            words = [Word(word="word.", start=job.offset, end=end, score=0.9)]
        return [ChunkText(text=f"text at {job.offset}.", words=words, language=language,
                          language_probability=None if job.language else 0.9)]

    async def detect_language(self, *, audio: np.ndarray, top_k: int = 5) -> Any:
        self.events("detect")
        return LanguageDetection(language=self.detected, probability=0.9,
                                 alternatives=[LanguageProbability(language=self.detected, probability=0.9)])


class FakeAligner:
    def __init__(self, events: Events, languages: list[str], fail: BaseException | None = None,
                 gate: asyncio.Event | None = None) -> None:
        self.events, self._languages, self.fail, self.gate = events, languages, fail, gate
        self.calls: list[tuple[int, list[tuple[float, float]]]] = []

    async def languages(self) -> list[str]:
        return self._languages

    async def align(self, jobs: list[AlignJob]) -> list[AlignResult]:
        self.events("align")
        (job,) = jobs  # one chunk per call: the runner's adaptive batching merges them
        assert job.audio.dtype == np.int16 and job.request_id in ("test", "t")
        assert job.language in self._languages  # a batch-mate would fail with it
        self.calls.append((job.audio.shape[0], [(s.start, s.end) for s in job.segments]))
        if self.gate is not None:
            self.gate.set()
        if self.fail is not None:
            raise self.fail
        return [AlignResult(model="fake-aligner:1", segments=[
            Segment(start=s.start, end=s.end, text=s.text,
                    words=[Word(word=s.text, start=s.start, end=s.end, score=0.8)]) for s in job.segments])]


class FakeDiarizer:
    def __init__(self, events: Events, fail: BaseException | None = None,
                 wait_for: asyncio.Event | None = None) -> None:
        self.events, self.fail, self.wait_for = events, fail, wait_for

    async def diarize(self, *, audio: np.ndarray, speakers: SpeakerCounts, speech: list[TimeSpan] | None = None,
                      request_id: str | None = None) -> DiarizationResult:
        self.events("diarize:start")
        self.speech = speech
        if self.wait_for is not None:  # ends only once alignment has started
            await asyncio.wait_for(self.wait_for.wait(), timeout=2)
        else:
            await asyncio.sleep(0.02)
        if self.fail is not None:
            raise self.fail
        self.events("diarize:end")
        turns = [SpeakerTurn(start=0.0, end=4.5, speaker="SPEAKER_00"),
                 SpeakerTurn(start=4.5, end=12.0, speaker="SPEAKER_01")]
        return DiarizationResult(turns=turns, backend="fake", num_speakers=2)

    async def voice_print(self, *, audio: np.ndarray, request_id: str | None = None) -> list[float]:
        """A voice print that only tells clips apart by their whole seconds."""
        self.events(f"voice_print:{audio.shape[0] / RATE:g}")
        return [float(i == round(audio.shape[0] / RATE)) for i in range(16)]


class Recorder:
    def __init__(self) -> None:
        self.stages: list[str] = []
        self.seconds: list[float] = []

    def stage(self, name: str) -> None:
        self.stages.append(name)

    def transcribed(self, seconds: float) -> None:
        self.seconds.append(seconds)


def run(pipeline: Pipeline, params: TranscribeParams | None = None, progress: Recorder | None = None) -> Any:
    return asyncio.run(pipeline.run(AUDIO, params or TranscribeParams(), request_id="test",
                                    progress=progress))


def test_stage_order_and_speakers_on_every_word() -> None:
    events = Events()
    aligner, diarizer = FakeAligner(events, ["en"]), FakeDiarizer(events)
    pipeline = Pipeline(FakeASR(events), aligner, diarizer)
    response = run(pipeline)
    assert diarizer.speech == CHUNKS  # diarization is told where the speech is
    assert events.index("plan") < events.index("decoded@0.5") < events.index("align")
    # Each chunk is aligned as soon as it is decoded: the first before the last is done.
    assert events.index("align") < events.index("decoded@10.0")
    # ...on its own samples, with times local to it, shifted back into the recording.
    assert sorted(aligner.calls) == sorted((int((c.end - c.start) * RATE), [(0.0, c.end - c.start)])
                                           for c in CHUNKS)
    assert [(s.start, s.end) for s in response.segments] == [(c.start, c.end) for c in CHUNKS]
    assert all(c.start <= w.start <= w.end <= c.end for c, s in zip(CHUNKS, response.segments, strict=True)
               for w in s.words)
    assert response.alignment.method == "wav2vec2" and response.alignment.model == "fake-aligner:1"
    assert [s.speaker for s in response.segments] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_01"]
    assert all(w.speaker for w in response.word_segments)
    assert response.diarization.num_speakers == 2 and response.duration == 12.0
    assert set(response.timings) == {"asr", "align", "diarize", "assign"}


def test_asr_and_diarization_overlap_and_alignment_starts_before_diarization_ends() -> None:
    async def go() -> tuple[Events, Any]:
        events, gate = Events(), asyncio.Event()
        pipeline = Pipeline(FakeASR(events), FakeAligner(events, ["en"], gate=gate),
                            FakeDiarizer(events, wait_for=gate))
        return events, await pipeline.run(AUDIO, TranscribeParams(), request_id="t")

    events, response = asyncio.run(go())  # the diarizer fails after 2 s unless alignment started
    assert events.index("diarize:start") < events.index("decode@5.0")
    assert events.index("align") < events.index("diarize:end")
    asr, diarize = response.timings["asr"], response.timings["diarize"]
    assert diarize.start < asr.end


def test_the_language_rule() -> None:
    # A given language goes with every chunk.
    events = Events()
    asr = FakeASR(events)
    run(Pipeline(asr, FakeAligner(events, []), FakeDiarizer(events)), TranscribeParams(language="zh"))
    assert {job.language for job in asr.jobs} == {"zh"}
    # None: windows of speech over the whole recording detected, their vote decides; every chunk
    # is decoded in the recording's language.
    asr = FakeASR(events, detected="de")
    response = run(Pipeline(asr, FakeAligner(events, []), FakeDiarizer(events)))
    assert [job.language for job in asr.jobs] == ["de", "de", "de"]
    assert response.language == "de" and response.language_probability == 0.9
    # the two end windows (5 s at 0.9) lead by more than the middle one (4 s) could change
    assert response.language_detection.source == "detected" and response.language_detection.chunks == 2
    # An English-only model: English, never detected.
    asr = FakeASR(events, multilingual=False)
    response = run(Pipeline(asr, FakeAligner(events, []), FakeDiarizer(events)))
    assert {job.language for job in asr.jobs} == {"en"} and response.language == "en"


def test_the_word_timing_rule() -> None:
    events = Events()
    response = run(Pipeline(FakeASR(events), FakeAligner(events, ["zh"]), FakeDiarizer(events)))
    assert "align" not in events.log and response.alignment.method == "whisper"
    assert all(w.start is not None for w in response.word_segments)
    assert [s.text for s in response.segments] == ["word.", "word.", "word."]


@pytest.mark.parametrize("stage, failure, status", [
    ("asr", RuntimeError("cuda"), 502), ("asr", ServiceUnavailable("busy"), 503),
    ("align", BentoMLException("boom"), 502), ("diarize", TimeoutError(), 504),
    ("diarize", ValueError("bad"), 502),
])
def test_each_stage_failure_is_its_own_5xx(stage: str, failure: BaseException, status: int) -> None:
    events = Events()
    pipeline = Pipeline(FakeASR(events, fail=failure if stage == "asr" else None),
                        FakeAligner(events, ["en"], fail=failure if stage == "align" else None),
                        FakeDiarizer(events, fail=failure if stage == "diarize" else None))
    with pytest.raises(StageFailed) as caught:
        run(pipeline)
    assert caught.value.status_code == status
    assert caught.value.code == f"{stage}_failed"


def test_a_stage_over_its_timeout_is_504() -> None:
    events = Events()
    gate = asyncio.Event()  # never set: the diarizer waits past the stage timeout
    pipeline = Pipeline(FakeASR(events), FakeAligner(events, []), FakeDiarizer(events, wait_for=gate),
                        PipelineLimits(stage_timeout_s=0.2))
    with pytest.raises(StageFailed) as caught:
        run(pipeline)
    assert caught.value.status_code == 504 and caught.value.code == "diarize_failed"


def test_a_lost_runner_connection_is_sent_again() -> None:
    events = Events()
    asr = FakeASR(events, disconnects=2)
    response = run(Pipeline(asr, FakeAligner(events, ["en"]), FakeDiarizer(events)))
    assert len(asr.jobs) == len(CHUNKS) and len(response.segments) == len(CHUNKS)


def test_progress_is_reported_per_chunk() -> None:
    events, progress = Events(), Recorder()
    run(Pipeline(FakeASR(events), FakeAligner(events, ["en"]), FakeDiarizer(events)), progress=progress)
    assert progress.stages == ["asr", "align"]
    assert len(progress.seconds) == len(CHUNKS)
    assert progress.seconds == sorted(progress.seconds) and progress.seconds[-1] == pytest.approx(12.0)


def test_no_samples_is_an_empty_result_without_runner_calls() -> None:
    events = Events()
    pipeline = Pipeline(FakeASR(events), FakeAligner(events, []), FakeDiarizer(events))
    response = asyncio.run(pipeline.run(np.zeros(0, dtype=np.float32), TranscribeParams(), request_id="t"))
    assert response.segments == [] and response.alignment.method == "none" and events.log == []


def test_known_speakers_name_the_diarized_speakers_their_samples_match() -> None:
    events = Events()
    known = [KnownSpeaker("Ann", np.zeros(4 * RATE, dtype=np.int16)),
             KnownSpeaker("Bob", np.zeros(3 * RATE, dtype=np.int16))]
    pipeline = Pipeline(FakeASR(events), FakeAligner(events, ["en"]), FakeDiarizer(events))
    response = asyncio.run(pipeline.run(AUDIO, TranscribeParams(), request_id="test", known_speakers=known))
    # Each speaker's own speech (4.5 s and 7.5 s) and each sample got a voice print.
    assert sorted(e for e in events.log if e.startswith("voice_print")) == [
        "voice_print:3", "voice_print:4", "voice_print:4.5", "voice_print:7.5"]
    assert [s.speaker for s in response.segments] == ["Ann", "SPEAKER_01", "SPEAKER_01"]
    assert {t.speaker for t in response.diarization.speaker_turns} == {"Ann", "SPEAKER_01"}
    assert [(m.name, m.speaker) for m in response.diarization.known_speakers] == [
        ("Ann", "SPEAKER_00"), ("Bob", None)]
    assert "name_speakers" in response.timings


def test_a_stored_voice_print_is_used_as_it_is_and_samples_are_still_embedded() -> None:
    events = Events()
    stored = np.asarray([float(i == 8) for i in range(16)], dtype=np.float32)  # what 7.5 s prints as
    known = [KnownSpeaker("Ann", np.zeros(4 * RATE, dtype=np.int16)), KnownSpeaker("Cy", voice_print=stored)]
    pipeline = Pipeline(FakeASR(events), FakeAligner(events, ["en"]), FakeDiarizer(events))
    response = asyncio.run(pipeline.run(AUDIO, TranscribeParams(), request_id="test", known_speakers=known))
    # The speakers' own speech and Ann's sample were embedded; Cy's stored print was not made again.
    assert sorted(e for e in events.log if e.startswith("voice_print")) == [
        "voice_print:4", "voice_print:4.5", "voice_print:7.5"]
    assert [(m.name, m.speaker) for m in response.diarization.known_speakers] == [
        ("Ann", "SPEAKER_00"), ("Cy", "SPEAKER_01")]
    assert [s.speaker for s in response.segments] == ["Ann", "Cy", "Cy"]


def test_overlapping_speakers_and_an_unmet_hint_reach_the_response() -> None:
    events = Events()
    pipeline = Pipeline(FakeASR(events), FakeAligner(events, ["en"]), FakeDiarizer(events))
    plain = run(pipeline)
    assert all(w.speakers is None for w in plain.word_segments) and plain.diarization.note is None
    asked = run(pipeline, TranscribeParams(overlapping_speakers=True, speakers=SpeakerCounts(minimum=3)))
    assert [w.speaker for w in asked.word_segments] == [w.speaker for w in plain.word_segments]
    assert all(w.speakers == [w.speaker] for w in asked.word_segments)  # the fake's turns do not overlap
    assert asked.diarization.note == ("min_speakers=3 could not be met: 2 speakers found in 12.0 s of speech; "
                                      "too little speech or too few distinct voices to tell more apart")
