"""The request pipeline: decoded audio in, WhisperX's result out, over three runner handles.

Order of stages: ASR (plan, then one `decode` call per speech chunk) and, beside it, diarization
of the plan's speech; each chunk is aligned as soon as it is decoded; then speakers are given to
words here, in process. The pipeline owns the rules that decide what each stage is asked: the
language (given, English-only model, or detected on the first speech chunk) and the word timing
(wav2vec2 when an aligner holds the language, Whisper's own timings otherwise). It knows nothing
of HTTP or BentoML: the gateway hands it the runners' async proxies, tests hand it fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from .assemble import sentences_from_whisper_words, word_segments
from .audio import SAMPLE_RATE
from .chinese import convert_asr_segments
from .errors import is_transient_transport_error, map_stage_error
from .params import TranscribeParams
from .schema import (
    AlignJob,
    AlignmentInfo,
    AlignResult,
    AsrPlan,
    AsrResult,
    AsrSegment,
    ChunkJob,
    ChunkText,
    DiarizationInfo,
    DiarizationResult,
    LanguageDetection,
    Segment,
    SpeakerCounts,
    StageTiming,
    TimeSpan,
    TranscriptionResponse,
    WordTimestampMethod,
    word_timing_method,
)
from .speakers import assign_speakers

logger = logging.getLogger("whisperx_service.pipeline")
T = TypeVar("T")

RUNNER_CALL_ATTEMPTS = 3


class AsrRunner(Protocol):
    async def plan(self, *, audio: np.ndarray, request_id: str | None = None) -> Any: ...
    async def decode(self, jobs: list[ChunkJob]) -> Any: ...
    async def detect_language(self, *, audio: np.ndarray, top_k: int = 5) -> Any: ...


class AlignRunner(Protocol):
    async def languages(self) -> Any: ...
    async def align(self, jobs: list[AlignJob]) -> Any: ...


class DiarizeRunner(Protocol):
    async def diarize(self, *, audio: np.ndarray, speakers: SpeakerCounts, speech: list[TimeSpan] | None = None,
                      request_id: str | None = None) -> Any: ...


class Progress(Protocol):
    """What a caller may follow of one run (async jobs): stages, and audio seconds transcribed."""

    def stage(self, name: str) -> None: ...
    def transcribed(self, seconds: float) -> None: ...


class StageClock:
    """Stage timings relative to the request's arrival (proof that stages overlap)."""

    def __init__(self) -> None:
        self.origin = time.perf_counter()
        self.stages: dict[str, StageTiming] = {}

    def now(self) -> float:
        return round(time.perf_counter() - self.origin, 4)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Time a stage that is not a runner call (decoding the upload, speaker assignment)."""
        start = self.now()
        try:
            yield
        finally:
            self._record(stage, start)

    def _record(self, stage: str, start: float) -> None:
        """A stage run in several calls (alignment, chunk by chunk) spans the first to the last."""
        end, earlier = self.now(), self.stages.get(stage)
        if earlier is not None:
            start, end = min(start, earlier.start), max(end, earlier.end)
        self.stages[stage] = StageTiming(start=start, end=end)

    async def run(self, stage: str, call: Awaitable[T], timeout_s: float | None = None) -> T:
        """Await one stage; whatever it raises leaves as one of our errors naming the stage."""
        start = self.now()
        try:
            return await asyncio.wait_for(call, timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - mapped to our hierarchy, or re-raised
            raise map_stage_error(stage, exc) from exc
        finally:
            self._record(stage, start)


async def call_runner(call: Callable[[], Awaitable[T]]) -> T:
    """One runner call, sent again (up to 3 times) when its connection died before an answer.

    Every runner API is a pure function of its inputs, so a call the runner never answered can
    be sent again."""
    for attempt in range(1, RUNNER_CALL_ATTEMPTS):
        try:
            return await call()
        except Exception as exc:  # noqa: BLE001 - only transport deaths are retried; the rest re-raised
            if not is_transient_transport_error(exc):
                raise
            logger.warning("runner connection lost (%s); sending the call again", type(exc).__name__)
            await asyncio.sleep(0.05 * attempt)
    return await call()


@dataclass(frozen=True)
class PipelineLimits:
    stage_timeout_s: float = 3600.0
    chunks_in_flight: int = 16  # decode calls one request keeps open (memory, fairness)


class Pipeline:
    def __init__(self, asr: AsrRunner, aligner: AlignRunner, diarizer: DiarizeRunner,
                 limits: PipelineLimits | None = None) -> None:
        self.asr = asr
        self.aligner = aligner
        self.diarizer = diarizer
        self.limits = limits or PipelineLimits()
        self._aligned_languages: list[str] | None = None

    async def aligned_languages(self) -> list[str]:
        """Languages the alignment runner holds a wav2vec2 model for (asked once)."""
        if self._aligned_languages is None:
            self._aligned_languages = list(await call_runner(lambda: self.aligner.languages()))
        return self._aligned_languages

    async def run(self, audio: np.ndarray, params: TranscribeParams, *, request_id: str,
                  clock: StageClock | None = None, progress: Progress | None = None) -> TranscriptionResponse:
        """The whole graph on decoded 16-kHz mono float32 audio."""
        clock = clock or StageClock()
        duration = round(audio.shape[0] / SAMPLE_RATE, 3)
        diarization = DiarizationInfo(enabled=params.diarize)
        if audio.shape[0] == 0:
            return TranscriptionResponse(
                segments=[], word_segments=[], language=params.language or "", duration=0.0,
                alignment=AlignmentInfo(method=WordTimestampMethod.none,
                                        note="the recording holds no audio samples"),
                diarization=diarization, timings=clock.stages, request_id=request_id,
            )
        aligned = await self.aligned_languages()
        if progress is not None:
            progress.stage("asr")

        # The speech chunks first: ASR decodes them, and diarization runs only where they are.
        plan = await self._stage(clock, "asr", call_runner(lambda: self.asr.plan(audio=audio, request_id=request_id)))
        plan = AsrPlan.model_validate(plan)

        async def words() -> tuple[AsrResult, list[Segment], AlignmentInfo]:
            # Each chunk is aligned as soon as it is decoded, while later chunks (and diarization)
            # still run: whisperx aligns segment by segment, so this is the same work, started early.
            aligning: list[asyncio.Future[tuple[list[Segment], str]]] = []

            def align_early(segment: AsrSegment, language: str) -> None:
                convert_asr_segments([segment], language, params.zh_script)
                if word_timing_method(language, aligned) is WordTimestampMethod.wav2vec2:
                    aligning.append(asyncio.ensure_future(self._stage(
                        clock, "align", self._align_chunk(audio, segment, language, request_id))))

            try:
                asr = await self._stage(clock, "asr", self.transcribe(
                    audio, plan, params, aligned, on_segment=align_early,
                    on_chunk=progress.transcribed if progress is not None else None))
                if progress is not None:
                    progress.stage("align")
                return (asr, *await self._timed_words(asr, aligning))
            finally:
                for task in aligning:
                    task.cancel()

        if params.diarize:
            diarize = self._stage(clock, "diarize", call_runner(lambda: self.diarizer.diarize(
                audio=audio, speakers=params.speakers, speech=plan.chunks, request_id=request_id)))
            (asr, segments, alignment), raw_turns = await _gather_both(words(), diarize)
            found = DiarizationResult.model_validate(raw_turns)
            with clock.timed("assign"):
                segments = assign_speakers(segments, found.turns)
            diarization = DiarizationInfo(enabled=True, backend=found.backend, model=found.model,
                                          num_speakers=found.num_speakers, speaker_turns=found.turns)
        else:
            asr, segments, alignment = await words()
        return TranscriptionResponse(
            segments=segments, word_segments=word_segments(segments), language=asr.language,
            language_probability=asr.language_probability, duration=duration, alignment=alignment,
            diarization=diarization, timings=clock.stages, request_id=request_id,
        )

    async def transcribe(
        self, audio: np.ndarray, plan: AsrPlan, params: TranscribeParams, aligned: list[str],
        on_chunk: Callable[[float], None] | None = None,
        on_segment: Callable[[AsrSegment, str], None] | None = None,
    ) -> AsrResult:
        """ASR's second step: one `decode` call per speech chunk of the plan (the first step).

        The decode calls of every in-flight request meet in the ASR runner's adaptive batcher.
        The language rule: a given language wins; an English-only model means English; otherwise
        the first chunk goes alone, is detected on its own encoder output, and the others follow
        in its language. `on_chunk` gets the audio seconds transcribed so far, `on_segment` each
        chunk's text (with its language) as soon as it is decoded.
        """
        language: str | None = params.language
        probability: float | None = None
        if language is None and not plan.multilingual:
            language, probability = "en", 1.0
        in_flight = asyncio.Semaphore(self.limits.chunks_in_flight)
        done, speech = 0.0, sum(span.end - span.start for span in plan.chunks) or 1.0
        total = audio.shape[0] / SAMPLE_RATE

        async def decode(span: TimeSpan) -> tuple[AsrSegment, ChunkText]:
            nonlocal done
            job = ChunkJob(
                audio=audio[int(span.start * SAMPLE_RATE):int(span.end * SAMPLE_RATE)],
                offset=span.start, language=language, task=params.task, initial_prompt=params.prompt,
                aligned_languages=aligned,
            )
            async with in_flight:
                (raw,) = await call_runner(lambda: self.asr.decode([job]))
            text = ChunkText.model_validate(raw)
            if on_chunk is not None:  # progress in audio seconds, by the share of speech decoded
                done += span.end - span.start
                on_chunk(total * done / speech)
            segment = AsrSegment(start=span.start, end=span.end, text=text.text,
                                 avg_logprob=text.avg_logprob, words=text.words)
            if on_segment is not None and segment.text:
                on_segment(segment, text.language or language or "")
            return segment, text

        decoded: list[tuple[AsrSegment, ChunkText]] = []
        if language is None and plan.chunks:
            decoded.append(await decode(plan.chunks[0]))
            language, probability = decoded[0][1].language, decoded[0][1].language_probability
        decoded += await asyncio.gather(*(decode(span) for span in plan.chunks[len(decoded):]))
        segments = [segment for segment, _ in decoded if segment.text]
        return AsrResult(segments=segments, language=language or "",
                         language_probability=probability, model=plan.model)

    async def detect_language(self, audio: np.ndarray, top_k: int, clock: StageClock) -> LanguageDetection:
        """The language of the first 30 s (Whisper's one window)."""
        head = audio[:30 * SAMPLE_RATE]
        raw = await self._stage(clock, "language", call_runner(
            lambda: self.asr.detect_language(audio=head, top_k=top_k)))
        return LanguageDetection.model_validate(raw)

    async def _align_chunk(self, audio: np.ndarray, segment: AsrSegment, language: str,
                           request_id: str) -> tuple[list[Segment], str]:
        """One decoded chunk, forced-aligned on its own samples (times shifted there and back).

        The runner batches this call with other requests' chunks and has no per-item errors, so
        only a language it aligns is sent (`align_early` checks): no request fails its batch-mates."""
        first, last = int(segment.start * SAMPLE_RATE), int(np.ceil(segment.end * SAMPLE_RATE))
        offset = first / SAMPLE_RATE
        local = segment.model_copy(update={"start": segment.start - offset, "end": segment.end - offset})
        job = AlignJob(audio=audio[first:last], segments=[local], language=language, request_id=request_id)
        (raw,) = await call_runner(lambda: self.aligner.align([job]))
        result = AlignResult.model_validate(raw)
        return [_shifted(s, offset) for s in result.segments], result.model

    async def _timed_words(
        self, asr: AsrResult, aligning: list[asyncio.Future[tuple[list[Segment], str]]],
    ) -> tuple[list[Segment], AlignmentInfo]:
        if not asr.segments:
            return [], AlignmentInfo(method=WordTimestampMethod.none, note="no speech found")
        if aligning:
            results = await asyncio.gather(*aligning)
            segments = sorted((s for chunk, _ in results for s in chunk), key=lambda s: (s.start, s.end))
            return segments, AlignmentInfo(method=WordTimestampMethod.wav2vec2, model=results[0][1])
        segments = [s for seg in asr.segments for s in sentences_from_whisper_words(seg)]
        return segments, AlignmentInfo(
            method=WordTimestampMethod.whisper, model=asr.model,
            note=f"no wav2vec2 alignment model for {asr.language!r}: "
                 "word timestamps come from Whisper's cross-attention",
        )

    async def _stage(self, clock: StageClock, stage: str, call: Awaitable[T]) -> T:
        return await clock.run(stage, call, timeout_s=self.limits.stage_timeout_s)


def _shifted(segment: Segment, offset: float) -> Segment:
    def at(t: float | None) -> float | None:
        return None if t is None else round(t + offset, 3)

    return segment.model_copy(update={
        "start": round(segment.start + offset, 3), "end": round(segment.end + offset, 3),
        "words": [w.model_copy(update={"start": at(w.start), "end": at(w.end)}) for w in segment.words]})


async def _gather_both(first: Awaitable[Any], second: Awaitable[Any]) -> tuple[Any, Any]:
    """Run two stages concurrently; if one fails, cancel the other and raise the failure."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        a, b = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    return a, b
