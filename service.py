"""The HTTP front: a BentoML service graph that chains the ASR, alignment and diarization runners.

POST /transcribe (multipart ``audio_file``; ``min_speakers``/``max_speakers``/``num_speakers``,
``language``, ``diarize``, ``zh_script`` as form fields or query parameters) returns WhisperX's
JSON. The upload is decoded once; diarization runs beside ASR and the alignment that follows
it, then whisperx's speaker assignment. This module owns HTTP concerns only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from runners.align import Aligner
from runners.asr import ASR
from runners.diarize import Diarizer
from whisperx_service.assemble import sentences_from_whisper_words, word_segments
from whisperx_service import uploads
from whisperx_service.audio import SAMPLE_RATE
from whisperx_service.chinese import convert_asr_segments
from whisperx_service.config import get_settings
from whisperx_service.errors import (
    MissingFile,
    ServiceError,
    from_http_exception,
    is_transient_transport_error,
    map_stage_error,
)
from whisperx_service.guard import GatewayGuard
from whisperx_service.jobs import JobRecord, JobTasks, jobs_router
from whisperx_service.lifecycle import GATEWAY_SERVICE_NAME, Lifecycle
from whisperx_service.logs import bind_request_id, configure_logging, new_request_id
from whisperx_service.metrics import GatewayMetrics
from whisperx_service.openai_api import openai_router
from whisperx_service.params import (
    TranscribeParams,
    parse_output_format,
    parse_subtitle_options,
    parse_transcribe_params,
)
from whisperx_service.schema import (
    AlignmentInfo,
    AlignResult,
    AsrPlan,
    AsrResult,
    AsrSegment,
    ChunkJob,
    ChunkText,
    DiarizationInfo,
    DiarizationResult,
    Segment,
    StageTiming,
    TimeSpan,
    TranscriptionResponse,
    WordTimestampMethod,
)
from whisperx_service.writers import MEDIA_TYPES, render_transcribe

logger = logging.getLogger("whisperx_service.gateway")
settings = get_settings()
T = TypeVar("T")

app = FastAPI(
    title="Offline WhisperX",
    description="Transcripts with word-level timestamps and speaker labels, served offline.",
)
app.include_router(openai_router)  # /v1/audio/*, /v1/models, /detect-language
app.include_router(jobs_router)  # GET /jobs/{task_id}: progress of async jobs


@app.exception_handler(ServiceError)
async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=exc.headers())


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return await _service_error(request, from_http_exception(exc.status_code, exc.detail))


class StageClock:
    """Stage timings relative to the request's arrival (proof that stages overlap)."""

    def __init__(self) -> None:
        self.origin = time.perf_counter()
        self.stages: dict[str, StageTiming] = {}

    def now(self) -> float:
        return round(time.perf_counter() - self.origin, 4)

    async def run(self, stage: str, call: Awaitable[T]) -> T:
        start = self.now()
        try:
            return await asyncio.wait_for(call, timeout=settings.stage_timeout_s)
        except Exception as exc:  # noqa: BLE001 - mapped to our hierarchy, or re-raised
            raise map_stage_error(stage, exc) from exc
        finally:
            self.stages[stage] = StageTiming(start=start, end=self.now())


RUNNER_CALL_ATTEMPTS = 3


async def call_runner(call: Callable[[], Awaitable[T]]) -> T:
    """One runner call, sent again (up to 3 times) when its connection died before an answer."""
    for attempt in range(1, RUNNER_CALL_ATTEMPTS):
        try:
            return await call()
        except Exception as exc:  # noqa: BLE001 - only transport deaths are retried; the rest re-raised
            if not is_transient_transport_error(exc):
                raise
            logger.warning("runner connection lost (%s); sending the call again", type(exc).__name__)
            await asyncio.sleep(0.05 * attempt)
    return await call()


async def decode_upload(upload: UploadFile, clock: StageClock) -> np.ndarray:
    """Decode the upload once (whisperx_service.uploads), timed as the decode stage."""
    start = clock.now()
    try:
        return await uploads.decode_upload(upload, settings)
    finally:
        clock.stages["decode"] = StageTiming(start=start, end=clock.now())


@bentoml.service(
    name=GATEWAY_SERVICE_NAME,
    workers=1,
    traffic={"timeout": settings.stage_timeout_s + 60},
)
@bentoml.asgi_app(app, path="/")
class Gateway(JobTasks):  # JobTasks: the async-job @bentoml.task endpoints
    asr = bentoml.depends(ASR)
    aligner = bentoml.depends(Aligner)
    diarizer = bentoml.depends(Diarizer)

    def __init__(self) -> None:
        configure_logging()
        self._aligned_languages: list[str] | None = None
        self.metrics = GatewayMetrics()
        self.lifecycle = Lifecycle(max_in_flight=settings.max_in_flight, retry_after_s=settings.retry_after_s,
                                   grace_s=settings.shutdown_grace_s, on_change=self.metrics.in_flight.set)
        self.lifecycle.install_drain_on_sigterm()

    async def _alignment_languages(self) -> list[str]:
        if self._aligned_languages is None:
            self._aligned_languages = list(await call_runner(lambda: self.aligner.to_async.languages()))
        return self._aligned_languages

    @app.post("/transcribe", response_model=TranscriptionResponse, responses={200: {"content": {
        MEDIA_TYPES[f].split(";")[0]: {} for f in ("text", "srt", "vtt", "tsv")}}})
    async def transcribe(
        self,
        request: Request,
        audio_file: Annotated[UploadFile | None, File(description="The recording (any format ffmpeg reads).")] = None,
        min_speakers: Annotated[str | None, Form(description="Fewest speakers to find.")] = None,
        max_speakers: Annotated[str | None, Form(description="Most speakers to find.")] = None,
        num_speakers: Annotated[str | None, Form(description="Exact number of speakers.")] = None,
        language: Annotated[str | None, Form(description="Language code (en, zh...); detected when absent.")] = None,
        diarize: Annotated[str | None, Form(description="false skips speaker diarization.")] = None,
        zh_script: Annotated[str | None, Form(description="simplified, traditional or original.")] = None,
        task: Annotated[str | None, Form(description="transcribe (default) or translate.")] = None,
        output_format: Annotated[str | None, Form(
            description="json (default), text, srt, vtt or tsv; text/srt/vtt name speakers.", examples=["srt"])] = None,
        max_line_width: Annotated[str | None, Form(
            description="srt/vtt: characters per line.", examples=["42"])] = None,
        max_line_count: Annotated[str | None, Form(
            description="srt/vtt: lines per cue (needs max_line_width).", examples=["2"])] = None,
        highlight_words: Annotated[str | None, Form(
            description="srt/vtt: underline each word as it is spoken.", examples=["false"])] = None,
    ) -> TranscriptionResponse | Response:
        request_id = request.headers.get("x-request-id") or new_request_id()
        with bind_request_id(request_id):
            clock = StageClock()
            params = parse_transcribe_params(
                {"min_speakers": min_speakers, "max_speakers": max_speakers,
                 "num_speakers": num_speakers, "language": language, "diarize": diarize,
                 "zh_script": zh_script, "task": task},
                request.query_params,
                max_speakers_limit=settings.max_speakers_limit,
                default_zh_script=settings.default_zh_script,
            )
            output = {"output_format": output_format, "max_line_width": max_line_width,
                      "max_line_count": max_line_count, "highlight_words": highlight_words}
            fmt = parse_output_format(output, request.query_params)
            options = parse_subtitle_options(output, request.query_params)
            if audio_file is None:
                raise MissingFile("send the recording as the multipart file field 'audio_file'",
                                  param="audio_file")
            audio = await decode_upload(audio_file, clock)
            response = await self.run_pipeline(audio, params, clock, request_id)
            logger.info("transcribed %.1f s in %.2f s: %d segments, language %s",
                        response.duration, clock.now(), len(response.segments), response.language)
            if fmt != "json":
                rendered = render_transcribe(response, fmt, options)
                return Response(rendered.body, media_type=rendered.media_type)
            return response

    async def run_pipeline(
        self, audio: np.ndarray, params: TranscribeParams, clock: StageClock, request_id: str,
        progress: JobRecord | None = None,
    ) -> TranscriptionResponse:
        """The whole graph on decoded audio: (ASR -> alignment || diarization) -> speakers.

        With `progress` (async jobs), each stage and each transcribed chunk is recorded there.
        """
        duration = round(audio.shape[0] / SAMPLE_RATE, 3)
        diarization_info = DiarizationInfo(enabled=params.diarize)
        if audio.shape[0] == 0:
            return TranscriptionResponse(
                segments=[], word_segments=[], language=params.language or "", duration=0.0,
                alignment=AlignmentInfo(method=WordTimestampMethod.none,
                                        note="the recording holds no audio samples"),
                diarization=diarization_info, timings=clock.stages, request_id=request_id,
            )
        aligned_languages = await self._alignment_languages()
        if progress is not None:
            progress.stage("asr")

        async def words() -> tuple[AsrResult, list[Segment], AlignmentInfo]:
            # Alignment follows ASR at once, while diarization may still be running.
            asr = AsrResult.model_validate(await clock.run("asr", self.transcribe_audio(
                audio, params, aligned_languages, request_id,
                on_chunk=progress.transcribed if progress is not None else None,
            )))
            convert_asr_segments(asr.segments, asr.language, params.zh_script)
            if progress is not None:
                progress.stage("align")
            return (asr, *await self._timed_words(audio, asr, aligned_languages, clock, request_id))

        if params.diarize:
            diarize_call = clock.run("diarize", call_runner(lambda: self.diarizer.to_async.diarize(
                audio=audio, num_speakers=params.num_speakers, min_speakers=params.min_speakers,
                max_speakers=params.max_speakers, request_id=request_id,
            )))
            (asr, segments, alignment), diarization = await _gather_both(words(), diarize_call)
        else:
            (asr, segments, alignment), diarization = await words(), None

        if diarization is not None:
            result = DiarizationResult.model_validate(diarization)
            labelled = await clock.run("assign", call_runner(
                lambda: self.diarizer.to_async.assign(segments=segments, turns=result.turns)))
            segments = [Segment.model_validate(s) for s in labelled]
            diarization_info = DiarizationInfo(
                enabled=True, backend=result.backend, num_speakers=result.num_speakers,
                speaker_turns=result.turns,
            )
        for stage, timing in clock.stages.items():
            self.metrics.stage(stage, timing.end - timing.start)
        self.metrics.audio_seconds.inc(duration)
        return TranscriptionResponse(
            segments=segments, word_segments=word_segments(segments), language=asr.language,
            language_probability=asr.language_probability, duration=duration,
            alignment=alignment, diarization=diarization_info, timings=clock.stages,
            request_id=request_id,
        )

    async def transcribe_audio(
        self, audio: np.ndarray, params: TranscribeParams, aligned_languages: list[str],
        request_id: str, on_chunk: Callable[[float], None] | None = None,
    ) -> AsrResult:
        """ASR as two runner steps: plan (VAD chunks), then one `decode` call per chunk.

        The decode calls of every in-flight request meet in the ASR runner's adaptive batcher;
        a semaphore bounds how many chunks one request has in flight (memory, fairness). When
        the language is to be detected, the first chunk goes alone and detects it on its own
        encoder output; the others follow in that language.
        """
        plan = AsrPlan.model_validate(await call_runner(lambda: self.asr.to_async.plan(
            audio=audio, language=params.language, request_id=request_id)))
        language, probability = plan.language, plan.language_probability  # given, English-only, or None
        in_flight = asyncio.Semaphore(2 * settings.asr_batch_size)
        done, speech = 0.0, sum(span.end - span.start for span in plan.chunks) or 1.0

        async def decode(span: TimeSpan) -> ChunkText:
            nonlocal done
            job = ChunkJob(
                audio=audio[int(span.start * SAMPLE_RATE):int(span.end * SAMPLE_RATE)],
                offset=span.start, language=language, task=params.task, initial_prompt=params.prompt,
                aligned_languages=aligned_languages,
            )
            async with in_flight:
                (text,) = await call_runner(lambda: self.asr.to_async.decode([job]))
            if on_chunk is not None:  # progress in audio seconds, by the share of speech decoded
                done += span.end - span.start
                on_chunk(audio.shape[0] / SAMPLE_RATE * done / speech)
            return ChunkText.model_validate(text)

        texts: list[ChunkText] = []
        if language is None and plan.chunks:
            texts.append(await decode(plan.chunks[0]))
            language, probability = texts[0].language, texts[0].language_probability
        texts += await asyncio.gather(*(decode(span) for span in plan.chunks[len(texts):]))
        segments = [
            AsrSegment(start=span.start, end=span.end, text=text.text, avg_logprob=text.avg_logprob,
                       words=text.words)
            for span, text in zip(plan.chunks, texts, strict=True) if text.text
        ]
        return AsrResult(segments=segments, language=language or "",
                         language_probability=probability, model=plan.model)

    async def _timed_words(
        self, audio: np.ndarray, asr: AsrResult, aligned_languages: list[str],
        clock: StageClock, request_id: str,
    ) -> tuple[list[Segment], AlignmentInfo]:
        if not asr.segments:
            return [], AlignmentInfo(method=WordTimestampMethod.none, note="no speech found")
        if asr.language in aligned_languages:
            aligned = await clock.run("align", call_runner(lambda: self.aligner.to_async.align(
                audio=audio, segments=asr.segments, language=asr.language, request_id=request_id,
            )))
            aligned = AlignResult.model_validate(aligned)
            return list(aligned.segments), AlignmentInfo(
                method=WordTimestampMethod.wav2vec2, model=aligned.model
            )
        segments = [s for seg in asr.segments for s in sentences_from_whisper_words(seg)]
        return segments, AlignmentInfo(
            method=WordTimestampMethod.whisper, model=asr.model,
            note=f"no wav2vec2 alignment model for {asr.language!r}: "
                 "word timestamps come from Whisper's cross-attention",
        )


def _current_gateway() -> Gateway | None:
    """The gateway instance of this worker, once BentoML has made it (None while starting)."""
    try:
        return bentoml.get_current_service()  # type: ignore[no-any-return]
    except BentoMLException:
        return None


# Auth, size limits, content types, admission and drain, in front of every route (module doc of guard).
Gateway.add_asgi_middleware(  # type: ignore[attr-defined]  # a bentoml Service at runtime
    GatewayGuard, settings=settings, gateway=_current_gateway)


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
