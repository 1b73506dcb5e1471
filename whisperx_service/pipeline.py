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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from .assemble import sentences_from_whisper_words, word_segments
from .audio import SAMPLE_RATE
from .chinese import convert_asr_segments
from .errors import is_transient_transport_error, map_stage_error
from .longform import (
    DETECT_WINDOW_S,
    is_suspect,
    probes_still_needed,
    spread_indices,
    spread_order,
    text_units,
    uncovered_pieces,
    voiced_seconds,
    vote_language,
    windows,
)
from .naming import KnownSpeaker, cut, match_names, renamed, solo_speech
from .params import PER_SEGMENT, TranscribeParams
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
    LanguageDecision,
    LanguageDetection,
    LanguageProbability,
    Segment,
    SpeakerCounts,
    SpeakerMatch,
    SpeakerTurn,
    StageTiming,
    TimeSpan,
    TranscriptionResponse,
    TranscriptWarning,
    Word,
    WordTimestampMethod,
    word_timing_method,
)
from .speakers import assign_speakers, speech_seconds
from .text import tidy_text

logger = logging.getLogger("whisperx_service.pipeline")
T = TypeVar("T")

RUNNER_CALL_ATTEMPTS = 3
# language_mode=per_segment: a window detected less surely than this takes the recording's language
PER_SEGMENT_MIN_PROBABILITY = 0.5


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
    async def voice_print(self, *, audio: np.ndarray, request_id: str | None = None) -> Any: ...
    async def voice_model(self) -> Any: ...


# Streaming: (index of the chunk, number of chunks, its segments), called as each chunk settles.
ChunkListener = Callable[[int, int, list[AsrSegment]], None]


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
    language_probes: int = 12  # windows of speech, spread over a recording, that vote its language
    redecode_suspect_chunks: bool = True  # decode again, in smaller windows, chunks short of text


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
                  clock: StageClock | None = None, progress: Progress | None = None,
                  known_speakers: Sequence[KnownSpeaker] = (),
                  on_text: ChunkListener | None = None) -> TranscriptionResponse:
        """The whole graph on decoded 16-kHz mono audio; `known_speakers` name diarized speakers;
        `on_text` gets each chunk's text as soon as it is decoded (streaming)."""
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
                    audio, plan, params, aligned, on_segment=align_early, on_settled=on_text,
                    on_chunk=progress.transcribed if progress is not None else None))
                if progress is not None:
                    progress.stage("align")
                return (asr, *await self._timed_words(asr, aligning, aligned))
            finally:
                for task in aligning:
                    task.cancel()

        if params.diarize:
            diarize = self._stage(clock, "diarize", call_runner(lambda: self.diarizer.diarize(
                audio=audio, speakers=params.speakers, speech=plan.chunks, request_id=request_id)))
            (asr, segments, alignment), raw_turns = await _gather_both(words(), diarize)
            found = DiarizationResult.model_validate(raw_turns)
            turns, matches = found.turns, list[SpeakerMatch]()
            if known_speakers:
                turns, matches = await self._stage(clock, "name_speakers", self._name_speakers(
                    audio, turns, known_speakers, request_id))
            with clock.timed("assign"):
                segments = assign_speakers(segments, turns, overlapping=params.overlapping_speakers)
            diarization = DiarizationInfo(enabled=True, backend=found.backend, model=found.model,
                                          num_speakers=found.num_speakers, speaker_turns=turns,
                                          known_speakers=matches,
                                          note=params.speakers.unmet(found.num_speakers, speech_seconds(turns)))
        else:
            asr, segments, alignment = await words()
        return TranscriptionResponse(
            segments=segments, word_segments=word_segments(segments), language=asr.language,
            language_probability=asr.language_probability, duration=duration, alignment=alignment,
            diarization=diarization, timings=clock.stages, request_id=request_id,
            language_detection=asr.detection, warnings=asr.warnings,
        )

    async def transcribe(
        self, audio: np.ndarray, plan: AsrPlan, params: TranscribeParams, aligned: list[str],
        on_chunk: Callable[[float], None] | None = None,
        on_segment: Callable[[AsrSegment, str], None] | None = None,
        on_settled: ChunkListener | None = None,
    ) -> AsrResult:
        """ASR's second step: `decode` calls over the speech chunks of the plan (the first step).

        The decode calls of every in-flight request meet in the ASR runner's adaptive batcher.
        The language rule: a given language wins; an English-only model means English; a single
        chunk is detected on its own encoder output; otherwise windows of voiced speech spread
        over the whole recording (up to `language_probes` of them, <= 10 s each) are detected
        first, in rounds until the rest could not change the winner, and their language
        distributions, weighted by their seconds, vote the recording's language
        (`longform.vote_language`), in which every chunk is decoded. With
        language_mode=per_segment every window is detected and each chunk is cut where its
        windows' languages change, each part decoded and labelled in its own language.
        A chunk whose text is far too short for its speech is decoded again in smaller windows
        (`longform.is_suspect`); speech still without text is reported in `warnings`.
        `on_chunk` gets the audio seconds transcribed so far, `on_segment` each chunk's text
        (with its language) as soon as it is settled, `on_settled` each chunk's segments then
        (with its index: chunks settle in any order).
        """
        decision: LanguageDecision | None = None
        if params.language is not None:
            decision = LanguageDecision(language=params.language, source="given")
        elif not plan.multilingual:
            decision = LanguageDecision(language="en", probability=1.0, source="model")
        per_segment = decision is None and params.language_mode == PER_SEGMENT
        in_flight = asyncio.Semaphore(self.limits.chunks_in_flight)
        done = 0.0
        total = audio.shape[0] / SAMPLE_RATE
        pieces = plan.pieces if len(plan.pieces) == len(plan.chunks) else [[c] for c in plan.chunks]
        warnings: list[TranscriptWarning] = []

        async def decode(span: TimeSpan, language: str | None) -> ChunkText:
            job = ChunkJob(
                audio=audio[int(span.start * SAMPLE_RATE):int(span.end * SAMPLE_RATE)],
                offset=span.start, language=language, task=params.task, initial_prompt=params.prompt,
                aligned_languages=aligned,
            )
            async with in_flight:
                (raw,) = await call_runner(lambda: self.asr.decode([job]))
            text = ChunkText.model_validate(raw)
            spoken = text.language or language or ""
            return text.model_copy(update={"text": tidy_text(text.text, spoken), "language": spoken})

        def segment_of(span: TimeSpan, text: ChunkText) -> AsrSegment:
            return AsrSegment(start=span.start, end=span.end, text=text.text, avg_logprob=text.avg_logprob,
                              words=text.words, language=text.language if per_segment else None)

        async def settle(index: int, span: TimeSpan, voiced: list[TimeSpan], language: str | None,
                         first: ChunkText | None) -> list[AsrSegment]:
            """One span decoded (unless `first` already is, in its language) and checked for
            drops; its segments are handed on as soon as they are settled."""
            nonlocal done
            text = first if first is not None else await decode(span, language)
            spoken = text.language or language or ""
            segments = [segment_of(span, text)]
            if self.limits.redecode_suspect_chunks and is_suspect(text.text, spoken, voiced, text.words):
                segments = await self._redecode(span, voiced, text, spoken, decode, segment_of, warnings)
            if on_chunk is not None:  # progress in audio seconds, by the share of speech decoded
                done += span.end - span.start
                on_chunk(total * done / speech)
            segments = [s for s in segments if s.text]
            if on_segment is not None:
                for segment in segments:
                    on_segment(segment, segment.language or spoken)
            if on_settled is not None:
                on_settled(index, len(work), segments)
            return segments

        work: list[tuple[TimeSpan, list[TimeSpan], str | None, ChunkText | None]] = []
        if decision is None and per_segment and plan.chunks:
            decision, work = await self._per_segment_plan(audio, plan.chunks, pieces)
        elif decision is None and len(plan.chunks) == 1:
            # One chunk: detected on its own encoder output while it is decoded, as before.
            first = await decode(plan.chunks[0], None)
            decision = vote_language([(voiced_seconds(pieces[0]), first.languages or _top(first))])
            work = [(plan.chunks[0], pieces[0], first.language, first)]
        elif decision is None and plan.chunks:
            decision = await self._vote_language(audio, plan.chunks, pieces)
        if decision is not None and per_segment:
            decision = decision.model_copy(update={"mode": PER_SEGMENT})
        if not work:
            language = decision.language if decision is not None else None
            work = [(chunk, voiced, language, None) for chunk, voiced in zip(plan.chunks, pieces, strict=True)]
        speech = sum(span.end - span.start for span, *_ in work) or 1.0
        settled = await asyncio.gather(*(settle(i, *item) for i, item in enumerate(work)))
        segments = [segment for chunk in settled for segment in chunk]
        return AsrResult(segments=segments, language=decision.language if decision else "",
                         language_probability=decision.probability if decision else None,
                         model=plan.model, detection=decision,
                         warnings=sorted(warnings, key=lambda w: w.start))

    async def _detect(self, audio: np.ndarray, spans: list[TimeSpan]) -> list[LanguageDetection]:
        async def detect(span: TimeSpan) -> LanguageDetection:
            clip = audio[int(span.start * SAMPLE_RATE):int(span.end * SAMPLE_RATE)]
            raw = await call_runner(lambda: self.asr.detect_language(audio=clip, top_k=5))
            return LanguageDetection.model_validate(raw)

        return list(await asyncio.gather(*(detect(span) for span in spans)))

    async def _vote_language(self, audio: np.ndarray, chunks: list[TimeSpan],
                             pieces: list[list[TimeSpan]]) -> LanguageDecision | None:
        """The language voted by detection windows spread over the recording.

        A 30-s chunk's detection follows whichever voice opens it (a Mandarin sentence at the
        head of 26 s of English made the chunk Mandarin), so detection runs on windows of voiced
        pieces (<= 10 s), not chunks."""
        spread = [w for chunk, voiced in zip(chunks, pieces, strict=True)
                  for w in windows(voiced, chunk, DETECT_WINDOW_S, halve=False)]
        chosen = [spread[i] for i in spread_indices(len(spread), self.limits.language_probes)]
        # Detected in rounds, each prefix spread over the recording, until the windows left can
        # no longer change the winner: the language is the one all of them would vote.
        pending = [chosen[i] for i in spread_order(len(chosen))]
        votes: list[tuple[float, list[LanguageProbability]]] = []
        while count := probes_still_needed(votes, [w.end - w.start for w in pending]):
            probed, pending = pending[:count], pending[count:]
            votes += _votes(probed, await self._detect(audio, probed))
        return vote_language(votes)

    async def _per_segment_plan(
        self, audio: np.ndarray, chunks: list[TimeSpan], pieces: list[list[TimeSpan]],
    ) -> tuple[LanguageDecision | None, list[tuple[TimeSpan, list[TimeSpan], str | None, ChunkText | None]]]:
        """language_mode=per_segment: every window of voiced speech (<= 10 s) detected; each
        chunk cut where its windows' languages change, each part decoded in its language (a
        window detected with less than PER_SEGMENT_MIN_PROBABILITY takes the recording's)."""
        spread = [(index, w) for index, (chunk, voiced) in enumerate(zip(chunks, pieces, strict=True))
                  for w in windows(voiced, chunk, DETECT_WINDOW_S, halve=False)]
        found = await self._detect(audio, [w for _, w in spread])
        decision = vote_language(_votes([w for _, w in spread], found))
        fallback = decision.language if decision is not None else None
        parts: list[tuple[int, TimeSpan, str | None]] = []
        for (index, window), detection in zip(spread, found, strict=True):
            language = detection.language if detection.probability >= PER_SEGMENT_MIN_PROBABILITY else fallback
            if parts and parts[-1][0] == index and parts[-1][2] == language:
                parts[-1] = (index, TimeSpan(start=parts[-1][1].start, end=window.end), language)
            else:
                parts.append((index, window, language))
        work: list[tuple[TimeSpan, list[TimeSpan], str | None, ChunkText | None]] = [
            (span, [TimeSpan(start=max(p.start, span.start), end=min(p.end, span.end))
                    for p in pieces[index] if p.end > span.start and p.start < span.end] or [span],
             language, None) for index, span, language in parts]
        return decision, work

    async def _redecode(
        self, span: TimeSpan, voiced: list[TimeSpan], text: ChunkText, language: str,
        decode: Callable[[TimeSpan, str | None], Awaitable[ChunkText]],
        segment_of: Callable[[TimeSpan, ChunkText], AsrSegment], warnings: list[TranscriptWarning],
    ) -> list[AsrSegment]:
        """A suspect chunk decoded again in windows of its voiced pieces (<= 10 s); kept when that
        gives more text. Voiced pieces still without text become warnings."""
        parts = windows(voiced, span)
        texts = await asyncio.gather(*(decode(part, language) for part in parts))
        units = text_units(text.text, language)
        retried = sum(text_units(t.text, language) for t in texts)
        logger.info("chunk %.1f-%.1f s: %d text units for %.1f voiced s; again in %d windows: %d",
                    span.start, span.end, units, voiced_seconds(voiced), len(parts), retried)
        if retried > units:
            segments = [segment_of(part, t) for part, t in zip(parts, texts, strict=True)]
            words: list[Word] | None = [w for t in texts for w in t.words or []]
            if any(t.words is None for t in texts):
                words = None
            missing = [part for part, t in zip(parts, texts, strict=True) if not t.text]
        else:
            segments, words = [segment_of(span, text)], text.words
            missing = [] if text.text else list(parts)
        missing += [p for p in uncovered_pieces(voiced, words) if not any(
            m.start <= p.start and p.end <= m.end for m in missing)]
        for gap in missing:
            warnings.append(TranscriptWarning(
                code="speech_without_text", start=gap.start, end=gap.end,
                message=f"{gap.end - gap.start:.1f} s of detected speech gave no text, even decoded "
                        "again in smaller windows (overlapped voices, noise, or a language the model "
                        "does not know)"))
        return segments

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
        return [_shifted(s, offset).model_copy(update={"language": segment.language}) for s in result.segments], \
            result.model

    async def _timed_words(
        self, asr: AsrResult, aligning: list[asyncio.Future[tuple[list[Segment], str]]], aligned: list[str],
    ) -> tuple[list[Segment], AlignmentInfo]:
        if not asr.segments:
            return [], AlignmentInfo(method=WordTimestampMethod.none, note="no speech found")
        # language_mode=per_segment may hold parts in aligned languages and parts in others:
        # Whisper's own timings for the latter (the one word-timing rule, part by part).
        whisper_timed = [s for seg in asr.segments
                         if word_timing_method(seg.language or asr.language, aligned) is WordTimestampMethod.whisper
                         for s in sentences_from_whisper_words(seg, asr.language)]
        if aligning:
            results = await asyncio.gather(*aligning)
            segments = sorted([*(s for chunk, _ in results for s in chunk), *whisper_timed],
                              key=lambda s: (s.start, s.end))
            note = None
            if whisper_timed:
                others = sorted({s.language or asr.language for s in whisper_timed})
                note = f"no wav2vec2 alignment model for {', '.join(others)}: those segments' word " \
                       "timestamps come from Whisper's cross-attention"
            return segments, AlignmentInfo(method=WordTimestampMethod.wav2vec2, model=results[0][1], note=note)
        segments = whisper_timed
        return segments, AlignmentInfo(
            method=WordTimestampMethod.whisper, model=asr.model,
            note=f"no wav2vec2 alignment model for {asr.language!r}: "
                 "word timestamps come from Whisper's cross-attention",
        )

    async def _name_speakers(self, audio: np.ndarray, turns: list[SpeakerTurn], known: Sequence[KnownSpeaker],
                             request_id: str) -> tuple[list[SpeakerTurn], list[SpeakerMatch]]:
        """Diarized speakers labelled with the names whose voice samples they match (naming.py)."""
        own = solo_speech(turns)
        # Stored voices bring their print; samples sent with the request are embedded here.
        samples = [k.audio for k in known if k.voice_print is None and k.audio is not None]
        clips = [cut(audio, spans) for spans in own.values()] + samples
        vectors = list(await asyncio.gather(*(self.voice_print(clip, request_id) for clip in clips)))
        if any(v.size == 0 for v in vectors):  # a backend without a speaker-embedding model
            return turns, [SpeakerMatch(name=k.name) for k in known]
        speaker_prints, embedded = vectors[:len(own)], iter(vectors[len(own):])
        sample_prints = [k.voice_print if k.voice_print is not None else next(embedded) for k in known]
        matched = match_names(dict(zip(own, speaker_prints, strict=True)),
                              {k.name: v for k, v in zip(known, sample_prints, strict=True)})
        by_name = {name: (label, similarity) for label, (name, similarity) in matched.items()}
        matches = [SpeakerMatch(name=k.name, speaker=by_name[k.name][0], similarity=by_name[k.name][1])
                   if k.name in by_name else SpeakerMatch(name=k.name) for k in known]
        return renamed(turns, {label: name for label, (name, _) in matched.items()}), matches

    async def voice_print(self, audio: np.ndarray, request_id: str | None = None) -> np.ndarray:
        """The diarization runner's speaker embedding of one voice (empty: its backend has none)."""
        raw = await call_runner(lambda: self.diarizer.voice_print(audio=audio, request_id=request_id))
        return np.asarray(raw, dtype=np.float32)

    async def voice_model(self) -> str:
        """Which model makes the runner's voice prints ("" when none): prints of two models do not compare."""
        return str(await call_runner(lambda: self.diarizer.voice_model()))

    async def _stage(self, clock: StageClock, stage: str, call: Awaitable[T]) -> T:
        return await clock.run(stage, call, timeout_s=self.limits.stage_timeout_s)


def _shifted(segment: Segment, offset: float) -> Segment:
    def at(t: float | None) -> float | None:
        return None if t is None else round(t + offset, 3)

    return segment.model_copy(update={
        "start": round(segment.start + offset, 3), "end": round(segment.end + offset, 3),
        "words": [w.model_copy(update={"start": at(w.start), "end": at(w.end)}) for w in segment.words]})


def _votes(spans: list[TimeSpan], found: list[LanguageDetection]) -> list[tuple[float, list[LanguageProbability]]]:
    """(seconds, ranked languages) of each detected window, for `vote_language`."""
    return [(span.end - span.start, detection.alternatives or [LanguageProbability(
        language=detection.language, probability=detection.probability)])
        for span, detection in zip(spans, found, strict=True)]


def _top(text: ChunkText) -> list[LanguageProbability]:
    """A chunk's detection as a distribution, when it carries only its best language."""
    if not text.language:
        return []
    return [LanguageProbability(language=text.language, probability=text.language_probability or 1.0)]


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
