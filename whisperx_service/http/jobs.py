"""Async jobs for long recordings, on BentoML's task support (`@bentoml.task`).

`JobTasks` is a mixin of the gateway service: each task is a BentoML task endpoint, so BentoML
gives it ``<route>/submit`` (a task id at once), ``<route>/status`` and ``<route>/get`` (results
in BentoML's result store, kept for 24 h). Each job takes the same form model as its sync route
and goes through the same envelope; ``GET /jobs/{task_id}`` reads its progress record. A job
with ``callback_url`` is called back when it ends (`whisperx_service.callbacks`), once BentoML has
stored its answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bentoml
from bentoml import IODescriptor
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response

from ..audio import check_upload_type, decode_pcm
from ..callbacks import CallbackSender, CallbackTarget, callback_body
from ..errors import JobNotFound, ServiceError, internal_error
from ..jobs import JobBoard, JobRecord, result_stored, stored_status
from ..logs import bind_request_id
from ..schema import CallbackProgress, JobProgress, JobState
from ..writers import render_transcribe
from .callback_check import CallbackFields
from .envelope import Gateway, GatewayDep, answer, transcribe
from .forms import UPLOAD_DESCRIPTION
from .openai import TranscriptionForm, openai_transcription
from .transcribe import TranscribeForm

logger = logging.getLogger("whisperx_service.jobs")


class JobFormFields(BaseModel):
    """What BentoML's reading of a job's form loses, put back before the fields are validated.

    - BentoML parses every text field as JSON first: ``diarize=true`` arrives as True and
      ``min_speakers=2`` as 2, which the string fields refused (the job failed unread). Scalars
      go back to the strings the client sent, for the same parsers as the sync routes.
    - BentoML spools the file part to a path and drops its headers: the content type it declared
      is kept in `declared_type` for the job's 415 check, the one the sync routes make.
    - BentoML keeps one value of a field sent more than once (``known_speaker_ids[]``), and hands
      the task its fields by name, not by the ``name[]`` alias: every value of each list field is
      read from the form here, and fields are taken by name too.
    """

    model_config = ConfigDict(populate_by_name=True)
    declared_type: SkipJsonSchema[str | None] = None

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> Any:
        form = await request.form()  # Starlette keeps it: BentoML's own parse reads the same
        lists = {field.alias: [v for v in form.getlist(field.alias) if isinstance(v, str)]
                 for field in cls.model_fields.values()
                 if field.alias and field.alias.endswith("[]") and field.alias in form}
        token = _LIST_VALUES.set(lists)
        try:
            return await super().from_http_request(request, serde)  # type: ignore[misc]  # IODescriptor's
        finally:
            _LIST_VALUES.reset(token)

    @model_validator(mode="before")
    @classmethod
    def _as_sent(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {**{key: _as_text(value) for key, value in data.items()}, **(_LIST_VALUES.get() or {})}
        part = data.get("audio_file", data.get("file"))
        if isinstance(part, UploadFile):
            data["declared_type"] = part.content_type
        return data


# The list fields of the form being parsed (JobFormFields.from_http_request), all their values.
_LIST_VALUES: contextvars.ContextVar[dict[str, list[str]] | None] = contextvars.ContextVar("job_list_values",
                                                                                           default=None)


def _as_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


class TranscribeJobInput(TranscribeForm, JobFormFields, CallbackFields, IODescriptor):
    """/transcribe's form as a job: the same fields, and the recording BentoML spools."""

    audio_file: Path = Field(description=UPLOAD_DESCRIPTION)  # type: ignore[assignment]  # spooled by BentoML


class TranscriptionJobInput(TranscriptionForm, JobFormFields, CallbackFields, IODescriptor):
    """/v1/audio/transcriptions' form as a job; granularities comma-separated."""

    file: Path = Field(description=UPLOAD_DESCRIPTION)  # type: ignore[assignment]  # spooled by BentoML
    timestamp_granularities: str | None = Field(  # type: ignore[assignment]  # comma-separated here
        None, description="Comma-separated: word, segment (verbose_json).", examples=["word,segment"])

    def granularities(self) -> list[str]:
        return (self.timestamp_granularities or "").split(",")


JOB_INPUTS: dict[str, type[TranscribeJobInput] | type[TranscriptionJobInput]] = {
    "transcribe": TranscribeJobInput, "transcription": TranscriptionJobInput}


async def run_job(gateway: Any, form: TranscribeJobInput | TranscriptionJobInput, request_id: str,
                  record: Any) -> Response:
    """One job's work, whichever store holds it: the same parsing, pipeline and rendering as its sync route."""
    check_upload_type(form.declared_type, gateway.settings.accepted_upload_types)

    def decode(path: Path) -> Awaitable[Any]:
        return decode_pcm(Path(path), max_seconds=gateway.settings.max_audio_seconds)

    if isinstance(form, TranscribeJobInput):
        params, fmt, options = form.parse(gateway, {})
        done = await transcribe(gateway, request_id, decode(form.audio_file), params, record)
        return answer(render_transcribe(done.response, fmt, options), request_id)
    oparams, ooptions = form.parse(gateway, "transcribe")
    return await openai_transcription(gateway, request_id, "transcribe", decode(form.file), oparams, ooptions,
                                      record)


class JobTasks:
    """Mixin of the gateway: the async-job task endpoints (see the module doc)."""

    @property
    def job_board(self: Gateway) -> JobBoard:
        board = self.__dict__.get("_job_board")
        if board is None:
            board = self.__dict__["_job_board"] = JobBoard(self.settings.job_retention_s)
        return board

    async def _run_job(self: Any, ctx: bentoml.Context, kind: str, result_url: str,
                       work: Callable[[str, JobRecord], Awaitable[Response]], form: CallbackFields) -> Response:
        task_id = str(getattr(ctx.request.state, "task_id", "") or "sync")
        request_id = task_id[:16]
        record = self.job_board.start(task_id, kind, f"{result_url}?task_id={task_id}")
        if form.callback_url and task_id != "sync":
            record.callback("pending")
        with bind_request_id(request_id), self.lifecycle.hold():
            try:
                response = await work(request_id, record)
            except ServiceError as exc:
                logger.warning("job %s failed: %s", task_id, exc.message)
                record.fail(exc.to_body(request_id))
                self._callback_when_stored(ctx, form, record)
                return JSONResponse(exc.to_body(request_id), status_code=exc.status_code)
            except BaseException as exc:
                record.fail(internal_error().to_body(request_id))
                if isinstance(exc, Exception):  # not for a cancelled job or a stopping server
                    self._callback_when_stored(ctx, form, record)
                raise
            record.finish()
            logger.info("job %s done", task_id)
            self._callback_when_stored(ctx, form, record)
            return response

    def _callback_when_stored(self: Any, ctx: bentoml.Context, form: CallbackFields, record: JobRecord) -> None:
        """The job's callback, in the background once BentoML has stored its answer (local job store)."""
        if not form.callback_url:
            return
        if not getattr(ctx.request.state, "task_id", None):  # BentoML's sync call of the task: no job
            logger.info("callback_url ignored: %s was called synchronously, not submitted as a job",
                        ctx.request.url.path)
            return
        target = CallbackTarget(form.callback_url, form.callback_auth_header)
        base = self.settings.public_url or str(ctx.request.base_url)
        tasks: set[asyncio.Task[None]] = self.__dict__.setdefault("_callback_tasks", set())
        task = asyncio.create_task(_deliver_local(self.callbacks, record, target, base.rstrip("/")),
                                   name=f"wxs-callback-{record.progress.task_id[:16]}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    @bentoml.task(route="/jobs/transcribe", input_spec=TranscribeJobInput)
    async def transcribe_job(self: Any, ctx: bentoml.Context, **fields: Any) -> Any:
        """/transcribe as an async job (seed shape): submit, poll GET /jobs/{task_id}, then get."""
        form = TranscribeJobInput.model_validate(fields)

        async def work(request_id: str, record: JobRecord) -> Response:
            return await run_job(self, form, request_id, record)

        return await self._run_job(ctx, "transcribe", "/jobs/transcribe/get", work, form)

    @bentoml.task(route="/v1/audio/transcriptions/jobs", input_spec=TranscriptionJobInput)
    async def transcription_job(self: Any, ctx: bentoml.Context, **fields: Any) -> Any:
        """/v1/audio/transcriptions as an async job (OpenAI shape): submit, poll, get."""
        form = TranscriptionJobInput.model_validate(fields)

        async def work(request_id: str, record: JobRecord) -> Response:
            return await run_job(self, form, request_id, record)

        return await self._run_job(ctx, "transcription", "/v1/audio/transcriptions/jobs/get", work, form)


STORED_WAIT_S = 30.0


async def _deliver_local(sender: CallbackSender, record: JobRecord, target: CallbackTarget, base_url: str) -> None:
    """Wait (bounded) until BentoML's store holds the answer, so result_url answers at once; then deliver."""
    progress = record.progress
    with bind_request_id(progress.task_id[:16]):
        deadline = time.monotonic() + STORED_WAIT_S
        while not await asyncio.to_thread(result_stored, progress.task_id) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        body = callback_body(progress.task_id, progress.state.value, base_url + progress.result_url, progress.error)

        async def attempted(attempt: int) -> None:
            record.callback("pending", attempt)

        try:
            outcome = await sender.deliver(progress.task_id, target, body, deadline=time.time() + sender.retry_total_s,
                                           on_attempt=attempted)
        except Exception:  # noqa: BLE001 - a background task: its failure is logged, nothing else to tell
            logger.exception("callback of job %s: unforeseen failure", progress.task_id)
            record.callback("failed", (record.progress.callback or CallbackProgress(state="failed")).attempts)
            return
        record.callback(outcome.state, outcome.attempts, outcome.status_code)


router = APIRouter(tags=["async jobs"])


@router.get("/jobs/{task_id}", response_model=JobProgress,
            responses={404: {"description": "Unknown or expired task id (OpenAI's error envelope)."}})
async def job_progress(task_id: str, gateway: GatewayDep) -> JobProgress:
    """Progress of an async job: state, stage, and the fraction of the audio transcribed."""
    board: JobBoard = gateway.job_board
    try:
        progress = board.get(task_id).progress
        if progress.state in (JobState.completed, JobState.failed) and not await asyncio.to_thread(
                result_stored, task_id):
            # Done here, not yet in BentoML's store: its result route would answer "not completed".
            return progress.model_copy(update={"state": JobState.running, "stage": "render"})
        return progress
    except JobNotFound:
        stored = await asyncio.to_thread(stored_status, task_id)
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


