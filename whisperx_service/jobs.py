"""Async jobs for long recordings, on BentoML's task support (`@bentoml.task`).

`JobTasks` is a mixin of the gateway service: each task is a BentoML task endpoint, so BentoML
gives it ``<route>/submit`` (returns a task id at once), ``<route>/status`` and ``<route>/get``
(results in BentoML's SQLite result store, kept for 24 h). A submitted task runs in the gateway
worker after the submit response went out, so the client may disconnect.

Progress: while a task runs, a `JobRecord` in the gateway instance (keyed by task id) is updated
between stages and after each speech chunk (<= 30 s) the ASR runner decodes, so the fraction of
audio transcribed grows as it goes; diarization runs on the whole recording beside it.
``GET /jobs/{task_id}`` reads that record.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import bentoml
from fastapi import APIRouter, Depends
from pydantic import Field
from starlette.responses import JSONResponse, Response

from .audio import SAMPLE_RATE, decode_audio
from .config import get_settings
from .errors import InvalidParameter, JobNotFound, MissingFile, ServiceError
from .logs import bind_request_id
from .params import (
    parse_openai_params,
    parse_output_format,
    parse_subtitle_options,
    parse_transcribe_params,
)
from .schema import JobProgress, JobState, TranscriptionResponse
from .writers import render_openai, render_transcribe

if TYPE_CHECKING:
    from service import StageClock

logger = logging.getLogger("whisperx_service.jobs")


class JobRecord:
    """Progress of one task; updated by the pipeline between stages and ASR chunks."""

    def __init__(self, task_id: str, kind: str, result_url: str) -> None:
        now = time.time()
        self.progress = JobProgress(task_id=task_id, kind=kind, state=JobState.running, stage="decode",
                                    created_at=now, updated_at=now, result_url=result_url)

    def _touch(self, **changes: Any) -> None:
        self.progress = self.progress.model_copy(update={**changes, "updated_at": time.time()})

    def stage(self, name: str) -> None:
        self._touch(stage=name)

    def audio(self, seconds: float) -> None:
        self._touch(audio_seconds=round(seconds, 3))

    def transcribed(self, seconds: float) -> None:
        total = self.progress.audio_seconds or 0.0
        done = round(min(seconds, total), 3)
        self._touch(transcribed_seconds=done, fraction=round(done / total, 4) if total else 1.0)

    def finish(self) -> None:
        total = self.progress.audio_seconds or 0.0
        self._touch(state=JobState.completed, stage="done", transcribed_seconds=total, fraction=1.0)

    def fail(self, body: dict[str, Any]) -> None:
        self._touch(state=JobState.failed, stage="failed", error=body)


class JobBoard:
    """The gateway's progress records, dropped `job_retention_s` after they finish."""

    def __init__(self, retention_s: float) -> None:
        self.retention_s = retention_s
        self.records: dict[str, JobRecord] = {}

    def start(self, task_id: str, kind: str, result_url: str) -> JobRecord:
        self.prune()
        record = JobRecord(task_id, kind, result_url)
        self.records[task_id] = record
        return record

    def get(self, task_id: str) -> JobRecord:
        self.prune()
        record = self.records.get(task_id)
        if record is None:
            raise JobNotFound(f"no job with task id {task_id[:64]!r} (unknown, or expired)", param="task_id")
        return record

    def prune(self) -> None:
        horizon = time.time() - self.retention_s
        for task_id, record in list(self.records.items()):
            if record.progress.state in (JobState.completed, JobState.failed) and record.progress.updated_at < horizon:
                del self.records[task_id]


# --- the task endpoints --------------------------------------------------------------------------

def _field(description: str, example: str) -> Any:
    return Field(None, description=description, examples=[example])


class JobTasks:
    """Mixin of the gateway: the async-job task endpoints (see the module doc)."""

    run_pipeline: Any  # the gateway's
    lifecycle: Any  # the gateway's: a running job counts as in flight (drain waits for it)

    @property
    def job_board(self) -> JobBoard:
        board = self.__dict__.get("_job_board")
        if board is None:
            board = self.__dict__["_job_board"] = JobBoard(get_settings().job_retention_s)
        return board

    async def _run_job(
        self, ctx: bentoml.Context, kind: str, result_url: str, audio_path: Path | None,
        prepare: Any, render: Any,
    ) -> Response:
        """Shared body of both task shapes: validate, decode, pipeline with progress, render."""
        from service import StageClock

        task_id = str(getattr(ctx.request.state, "task_id", "") or "sync")
        request_id = task_id[:16]
        record = self.job_board.start(task_id, kind, f"{result_url}?task_id={task_id}")
        with bind_request_id(request_id), self.lifecycle.hold():
            try:
                params = prepare()
                if audio_path is None:
                    raise MissingFile("send the recording as the multipart file field", param="file")
                clock: StageClock = StageClock()
                settings = get_settings()
                audio = await decode_audio(Path(audio_path), max_seconds=settings.max_audio_seconds)
                record.audio(audio.shape[0] / SAMPLE_RATE)
                response: TranscriptionResponse = await self.run_pipeline(
                    audio, params[0], clock, request_id, progress=record)
                record.stage("render")
                rendered = render(response, params)
            except ServiceError as exc:
                logger.warning("job %s failed: %s", task_id, exc.message)
                record.fail(exc.to_body())
                return JSONResponse(exc.to_body(), status_code=exc.status_code)
            except BaseException:
                record.fail({"error": {"message": "internal error", "type": "server_error",
                                       "param": None, "code": "internal_error"}})
                raise
            record.finish()
            logger.info("job %s done: %.1f s of audio in %.1f s", task_id, response.duration, clock.now())
            return Response(rendered.body, media_type=rendered.media_type,
                            headers={"x-request-id": request_id})

    @bentoml.task(route="/jobs/transcribe")
    async def transcribe_job(
        self,
        ctx: bentoml.Context,
        audio_file: Annotated[Path, Field(description="The recording (any format ffmpeg reads).")],
        min_speakers: Annotated[str | None, _field("Fewest speakers to find.", "2")],
        max_speakers: Annotated[str | None, _field("Most speakers to find.", "4")],
        num_speakers: Annotated[str | None, _field("Exact number of speakers.", "2")],
        language: Annotated[str | None, _field("Language code or name; detected when absent.", "en")],
        diarize: Annotated[str | None, _field("false skips speaker diarization.", "true")],
        zh_script: Annotated[str | None, _field("simplified, traditional or original.", "simplified")],
        task: Annotated[str | None, _field("transcribe or translate.", "transcribe")],
        output_format: Annotated[str | None, _field("json, text, srt, vtt or tsv.", "srt")],
        max_line_width: Annotated[str | None, _field("Subtitle line width, characters.", "42")],
        max_line_count: Annotated[str | None, _field("Lines per subtitle cue (with max_line_width).", "2")],
        highlight_words: Annotated[str | None, _field("Underline each word as it is spoken.", "false")],
    ) -> Any:  # a starlette Response (BentoML passes it through)
        """/transcribe as an async job (seed shape): submit, poll GET /jobs/{task_id}, then get."""
        form = {"min_speakers": min_speakers, "max_speakers": max_speakers, "num_speakers": num_speakers,
                "language": language, "diarize": diarize, "zh_script": zh_script, "task": task,
                "output_format": output_format, "max_line_width": max_line_width,
                "max_line_count": max_line_count, "highlight_words": highlight_words}
        settings = get_settings()

        def prepare() -> tuple[Any, ...]:
            return (parse_transcribe_params(form, {}, max_speakers_limit=settings.max_speakers_limit,
                                            default_zh_script=settings.default_zh_script),
                    parse_output_format(form, {}), parse_subtitle_options(form, {}))

        def render(response: TranscriptionResponse, params: tuple[Any, ...]) -> Any:
            from .writers import MEDIA_TYPES, Rendered

            if params[1] == "json":
                return Rendered(response.model_dump_json(), MEDIA_TYPES["json"])
            return render_transcribe(response, params[1], params[2])

        return await self._run_job(ctx, "transcribe", "/jobs/transcribe/get", audio_file, prepare, render)

    @bentoml.task(route="/v1/audio/transcriptions/jobs")
    async def transcription_job(
        self,
        ctx: bentoml.Context,
        file: Annotated[Path, Field(description="The recording (any format ffmpeg reads).")],
        model: Annotated[str | None, _field("whisper-1 or the served model's name.", "whisper-1")],
        language: Annotated[str | None, _field("ISO-639-1 code; detected when absent.", "en")],
        prompt: Annotated[str | None, _field("Whisper's initial prompt (spelling, names).", "Kennedy")],
        response_format: Annotated[str | None, _field(
            "json, text, srt, vtt, verbose_json, diarized_json or tsv.", "verbose_json")],
        temperature: Annotated[str | None, _field("Accepted (0..1) and ignored.", "0")],
        timestamp_granularities: Annotated[str | None, _field(
            "Comma-separated: word, segment (verbose_json).", "word,segment")],
        min_speakers: Annotated[str | None, _field("Fewest speakers (diarizes).", "2")],
        max_speakers: Annotated[str | None, _field("Most speakers (diarizes).", "4")],
        num_speakers: Annotated[str | None, _field("Exact number of speakers (diarizes).", "2")],
    ) -> Any:  # a starlette Response
        """/v1/audio/transcriptions as an async job (OpenAI shape): submit, poll, get."""
        form = {"model": model, "language": language, "prompt": prompt, "response_format": response_format,
                "temperature": temperature, "min_speakers": min_speakers, "max_speakers": max_speakers,
                "num_speakers": num_speakers}
        settings = get_settings()

        def prepare() -> tuple[Any, ...]:
            from .openai_api import served_models

            parsed = parse_openai_params(
                form, (timestamp_granularities or "").split(","), task="transcribe",
                served_models=served_models(), max_speakers_limit=settings.max_speakers_limit,
                default_zh_script=settings.default_zh_script,
            )
            return parsed.transcribe, parsed

        def render(response: TranscriptionResponse, params: tuple[Any, ...]) -> Any:
            parsed = params[1]
            return render_openai(response, parsed.response_format, task="transcribe",
                                 granularities=parsed.granularities, temperature=parsed.temperature)

        return await self._run_job(ctx, "transcription", "/v1/audio/transcriptions/jobs/get",
                                   file, prepare, render)


# BentoML's result routes of our two task endpoints (see `task_result_error`).
TASK_RESULT_PATHS = frozenset({"/jobs/transcribe/get", "/v1/audio/transcriptions/jobs/get"})


async def task_result_error(board: JobBoard, task_id: str) -> ServiceError | None:
    """What a result request must answer instead of BentoML's own 500s, or None to let it answer.

    BentoML parses a task's form only when the task runs: a submit without the file field is
    accepted, then fails before our code sees it, and its result route answers 500. That is the
    client's error: 422. An unknown id gets our 404 envelope.
    """
    if task_id in board.records:
        return None
    stored = await asyncio.to_thread(_stored_status, task_id)
    if stored is None:
        return JobNotFound(f"no job with task id {task_id[:64]!r} (unknown, or expired)", param="task_id")
    if stored[1] == "failed":
        return InvalidParameter("the job's request could not be read (a missing file field, or a field of the "
                                "wrong type); nothing was computed", param="task_id", code="job_input_invalid")
    return None


jobs_router = APIRouter(tags=["async jobs"])


@jobs_router.get("/jobs/{task_id}", response_model=JobProgress,
                 responses={404: {"description": "Unknown or expired task id (OpenAI's error envelope)."}})
async def job_progress(task_id: str, gateway: Annotated[Any, Depends(bentoml.get_current_service)]) -> JobProgress:
    """Progress of an async job: state, stage, and the fraction of the audio transcribed."""
    board: JobBoard = gateway.job_board
    try:
        return board.get(task_id).progress
    except JobNotFound:
        stored = await asyncio.to_thread(_stored_status, task_id)
        if stored is None:
            raise
    # Known to BentoML's result store but not (or no longer) to this worker: queued, or finished
    # before a worker restart.
    name, status, created = stored
    state = {"completed": JobState.completed, "failed": JobState.failed}.get(status, JobState.queued)
    kind, url = ("transcribe", "/jobs/transcribe/get") if name == "transcribe_job" else (
        "transcription", "/v1/audio/transcriptions/jobs/get")
    return JobProgress(task_id=task_id, kind=kind, state=state, stage=state.value if state != JobState.completed
                       else "done", fraction=1.0 if state == JobState.completed else 0.0,
                       created_at=created, updated_at=time.time(), result_url=f"{url}?task_id={task_id}")


def _stored_status(task_id: str) -> tuple[str, str, float] | None:
    """(task name, status, created unix time) from BentoML's task result store, if it holds the id."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    path = Path(BentoMLContainer.result_store_file.get())
    if not path.is_file():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
        row = conn.execute("SELECT name, status, created_at FROM result WHERE task_id = ?", (task_id,)).fetchone()
    if row is None:
        return None
    created = datetime.datetime.fromisoformat(str(row[2])).replace(tzinfo=datetime.UTC).timestamp()
    return str(row[0]), str(row[1]), created
