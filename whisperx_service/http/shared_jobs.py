"""Async jobs on the shared Redis job store (``WXS_JOB_STORE=redis://...``): any gateway replica.

With a Redis job store the job routes keep their paths and shapes, but are answered here instead
of by BentoML's per-process task store: `SharedJobRoutes` (an ASGI middleware inside the guard)
sends ``<route>/submit``, ``<route>/status``, ``<route>/get`` and ``GET /jobs/{task_id}`` of both
job APIs to `jobs_app`; everything else goes on to BentoML. `SharedJobs` is the gateway's side of
the store: it takes jobs from the queue (`whisperx_service.jobstore`), runs them through the same
`run_job` as the local store, keeps their progress records current in Redis, heartbeats while
they run, and stores their answers.

Uploads: a job's upload is kept in Redis until the job has an answer, so any replica can run it;
``WXS_JOB_UPLOAD_MAX_MB`` (default 64 MiB, about 1 h of 128-kbit/s MP3) bounds it with a 413.
Larger recordings go to the sync routes (``WXS_MAX_UPLOAD_MB``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response

from ..callbacks import CALLBACK_FIELDS, CallbackTarget, callback_body
from ..config import Settings
from ..errors import (
    CallbackRefused,
    InvalidParameter,
    InvalidRequest,
    JobNotFinished,
    JobNotFound,
    JobWorkerLost,
    MissingFile,
    PayloadTooLarge,
    ServiceError,
    Unavailable,
    internal_error,
)
from ..jobs import JobRecord
from ..jobstore import Claimed, RedisJobStore, StoredAnswer, StoredJob
from ..logs import bind_request_id
from ..schema import JobProgress, JobState
from ..uploads import discard_spool, write_spool
from . import install_error_handlers
from .callback_check import checked_submit
from .envelope import REQUEST_ID_HEADER, request_id_of
from .jobs import JOB_INPUTS, run_job

logger = logging.getLogger("whisperx_service.jobs")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

ROUTES = {"/jobs/transcribe": ("transcribe", "audio_file"),
          "/v1/audio/transcriptions/jobs": ("transcription", "file")}
_BLOCK = 1 << 20
PROGRESS_FLUSH_S = 0.5
CALLBACKS_AT_ONCE = 16
CALLBACK_POLL_S = 1.0


class SharedJobRecord(JobRecord):
    """A progress record whose changes a keep-alive task writes to the store."""

    def __init__(self, job: StoredJob) -> None:
        super().__init__(job.task_id, job.kind, job.progress.result_url)
        self.progress = self.progress.model_copy(update={"created_at": job.progress.created_at})
        self.version = 0

    def _touch(self, **changes: Any) -> None:
        super()._touch(**changes)
        self.version += 1


class SharedJobs:
    """One gateway's side of the Redis job store: its routes' reads and writes, and its consumer."""

    def __init__(self, gateway: Any, settings: Settings, url: str) -> None:
        self.gateway = gateway
        self.settings = settings
        self.store = RedisJobStore(url, retention_s=settings.job_retention_s,
                                   visibility_timeout_s=settings.job_visibility_timeout_s)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._consumer_task: asyncio.Task[None] | None = None
        self._callback_task: asyncio.Task[None] | None = None
        self._callback_due = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = False

    # --- lifetime (the gateway's startup and shutdown hooks) ---

    def start(self) -> None:
        self._consumer_task = asyncio.create_task(self._consume(), name="wxs-job-consumer")
        self._callback_task = asyncio.create_task(self._deliver_callbacks(), name="wxs-job-callbacks")
        logger.info("async jobs on the shared job store as consumer %s (%d at once, visibility %.0f s)",
                    self.consumer, self.settings.job_concurrency, self.settings.job_visibility_timeout_s)

    async def stop(self) -> None:
        self._stopping = True  # the consumer's own check: a cancellation can be swallowed (see _run)
        if self._consumer_task is not None:
            self._consumer_task.cancel()
        if self._callback_task is not None:  # a callback cut off here is taken over when its lease ends
            self._callback_task.cancel()
            await asyncio.wait([self._callback_task], timeout=5)
        for task in list(self._running):  # past the drain: their entries are run again elsewhere
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        await self.store.close()

    async def ready(self) -> bool:
        try:
            return await asyncio.wait_for(self.store.ping(), 3)
        except (RedisError, OSError, TimeoutError):
            return False

    # --- the consumer ---

    async def _consume(self) -> None:
        slots = asyncio.Semaphore(self.settings.job_concurrency)
        group_ready = False
        while not self._stopping:
            await slots.acquire()
            claimed: Claimed | None = None
            try:
                if self.gateway.lifecycle.draining:  # no new jobs once SIGTERM came
                    await asyncio.sleep(1)
                    continue
                if not group_ready:
                    await self.store.ensure_group()
                    group_ready = True
                claimed = await self.store.claim(self.consumer, block_ms=2000)
            except (RedisError, OSError) as exc:
                logger.warning("job store unreachable (%s); retrying in 2 s", type(exc).__name__)
                await asyncio.sleep(2)
            finally:
                if claimed is None:
                    slots.release()
            if claimed is None:
                continue
            task = asyncio.create_task(self._run(claimed), name=f"wxs-job-{claimed.task_id[:16]}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            task.add_done_callback(lambda _: slots.release())

    async def _run(self, claimed: Claimed) -> None:
        request_id = claimed.task_id[:16] or "job"
        with bind_request_id(request_id):
            try:
                job = await self.store.job(claimed.task_id) if claimed.task_id else None
                if job is None or job.progress.state in (JobState.completed, JobState.failed):
                    await self.store.ack(claimed.entry_id)  # expired, or answered before its gateway died
                    return
                with self.gateway.lifecycle.hold():
                    record = SharedJobRecord(job)
                    # Stopped by an event, never cancelled: redis-py 8.1 swallows a cancellation that
                    # lands mid-command (18 of 40 in a loop here), and a job whose keep-alive lived
                    # on heartbeated forever, unanswered.
                    done = asyncio.Event()
                    keepalive = asyncio.create_task(self._keepalive(claimed, record, done))
                    try:
                        answer = await self._work(job, claimed, record, request_id)
                    finally:
                        done.set()
                        await keepalive
                    deadline = time.time() + self.settings.callback_retry_total_s if job.has_callback else None
                    await self.store.finish(job.task_id, record.progress, answer, deadline)
                    await self.store.ack(claimed.entry_id)
                    if job.has_callback:
                        self._callback_due.set()
                logger.info("job %s %s (run %d, status %d)", job.task_id, record.progress.state.value,
                            claimed.deliveries, answer.status_code)
            except (RedisError, OSError) as exc:  # its entry stays pending: another run picks it up
                logger.error("job %s: job store lost (%s); it will be run again", claimed.task_id,
                             type(exc).__name__)

    # --- callbacks (any gateway delivers each once: `RedisJobStore.claim_callback`) ---

    async def _deliver_callbacks(self) -> None:
        slots = asyncio.Semaphore(CALLBACKS_AT_ONCE)
        running: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping:
                await slots.acquire()
                task_id: str | None = None
                try:
                    task_id = await self.store.claim_callback(self.consumer, self._callback_lease_s())
                except (RedisError, OSError) as exc:
                    logger.warning("job store unreachable for callbacks (%s)", type(exc).__name__)
                if task_id is None:
                    slots.release()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._callback_due.wait(), CALLBACK_POLL_S)
                    self._callback_due.clear()
                    continue
                task = asyncio.create_task(self._deliver(task_id), name=f"wxs-callback-{task_id[:16]}")
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _: slots.release())
        finally:  # deliveries cut off here are taken over by another gateway when their lease ends
            for task in list(running):
                task.cancel()

    def _callback_lease_s(self) -> float:
        return self.settings.job_visibility_timeout_s

    async def _deliver(self, task_id: str) -> None:
        with bind_request_id(task_id[:16]):
            try:
                stored = await self.store.callback(task_id)
                if stored is None or stored.state != "pending":  # its job expired, or it was delivered
                    await self.store.callback_done(task_id, None)
                    return
                done = asyncio.Event()
                lease = asyncio.create_task(self._renew_callback(task_id, done))
                try:
                    progress = stored.progress
                    body = callback_body(task_id, progress.state.value, stored.base_url + progress.result_url,
                                         progress.error)
                    outcome = await self.gateway.callbacks.deliver(
                        task_id, CallbackTarget(stored.url, stored.auth_header), body, deadline=stored.deadline,
                        first_attempt=stored.attempts + 1,
                        on_attempt=lambda _: self._callback_attempt(task_id))
                finally:
                    done.set()
                    await lease
                if outcome.reason != "taken_over":  # else the gateway that took it over ends it
                    await self.store.callback_done(task_id, outcome.state, outcome.status_code)
            except (RedisError, OSError) as exc:  # still in the set: taken over when its lease ends
                logger.error("callback of job %s: job store lost (%s)", task_id, type(exc).__name__)
            except Exception:  # noqa: BLE001 - a background task: logged, and ended (not retried forever)
                logger.exception("callback of job %s: unforeseen failure", task_id)
                with contextlib.suppress(RedisError, OSError):
                    await self.store.callback_done(task_id, "failed")

    async def _callback_attempt(self, task_id: str) -> bool:
        """Before each POST: still this gateway's (not taken over after a stall), then counted."""
        if await self.store.callback_owner(task_id) != self.consumer:
            return False
        await self.store.callback_attempt(task_id)
        return True

    async def _renew_callback(self, task_id: str, done: asyncio.Event) -> None:
        every = self._callback_lease_s() / 4
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), every)
            if not done.is_set():
                try:
                    await self.store.renew_callback(task_id, self._callback_lease_s())
                except (RedisError, OSError) as exc:
                    logger.warning("callback of job %s: lease not renewed (%s)", task_id, type(exc).__name__)

    async def _work(self, job: StoredJob, claimed: Claimed, record: SharedJobRecord,
                    request_id: str) -> StoredAnswer:
        if claimed.deliveries > self.settings.job_max_attempts:
            lost = JobWorkerLost(
                f"the gateway running this job stopped before it finished, {claimed.deliveries - 1} time(s) "
                "(a replica killed or restarted mid-job); nothing was computed: submit it again")
            return self._failed(record, lost, request_id)
        if claimed.deliveries > 1:
            logger.warning("job %s: run %d (its previous gateway stopped mid-job)", job.task_id,
                           claimed.deliveries)
        await self.store.started(job.task_id, record.progress,
                                 self.settings.job_retention_s + self.settings.stage_timeout_s)
        upload = await self.store.upload(job.task_id)
        if upload is None:
            return self._failed(record, JobWorkerLost("the job's upload expired before a gateway could run it; "
                                                      "submit it again", code="job_upload_expired"), request_id)
        kind_input = JOB_INPUTS[job.kind]
        file_field = "audio_file" if job.kind == "transcribe" else "file"
        path = write_spool(upload, self.settings)
        del upload
        try:
            form = kind_input.model_validate({**job.fields, file_field: path, "declared_type": job.declared_type})
            response = await run_job(self.gateway, form, request_id, record)
        except ValidationError:
            return self._failed(record, InvalidParameter(
                "the job's form could not be read (a field of the wrong type); nothing was computed",
                param="task_id", code="job_input_invalid"), request_id)
        except ServiceError as exc:
            logger.warning("job %s failed: %s", job.task_id, exc.message)
            return self._failed(record, exc, request_id)
        except (RedisError, asyncio.CancelledError):
            raise
        except Exception:  # noqa: BLE001 - stored as the job's 500; the details stay in the log
            logger.exception("job %s: unforeseen failure", job.task_id)
            return self._failed(record, internal_error(), request_id)
        finally:
            discard_spool(path)
        record.finish()
        media_type = response.headers.get("content-type", response.media_type or "application/json")
        return StoredAnswer(response.status_code, media_type, bytes(response.body))

    @staticmethod
    def _failed(record: SharedJobRecord, error: ServiceError, request_id: str) -> StoredAnswer:
        body = error.to_body(request_id)
        record.fail(body)
        return StoredAnswer(error.status_code, "application/json", json.dumps(body).encode())

    async def _keepalive(self, claimed: Claimed, record: SharedJobRecord, done: asyncio.Event) -> None:
        """Write progress as it changes; reset the entry's idle time well inside the visibility timeout."""
        beat_every = max(PROGRESS_FLUSH_S, self.settings.job_visibility_timeout_s / 4)
        written, since_beat = -1, 0.0
        while not done.is_set():
            try:
                # an end state is written by `finish` only, together with the answer
                if record.version != written and record.progress.state not in (JobState.completed,
                                                                                 JobState.failed):
                    version = record.version
                    await self.store.save_progress(claimed.task_id, record.progress)
                    written = version
                if since_beat >= beat_every:
                    await self.store.heartbeat(self.consumer, claimed.entry_id)
                    since_beat = 0.0
            except (RedisError, OSError) as exc:
                logger.warning("job %s: progress not written (%s)", claimed.task_id, type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), PROGRESS_FLUSH_S)
            since_beat += PROGRESS_FLUSH_S


# --- the routes ---

def jobs_app() -> FastAPI:
    """The job routes answered from the shared store (their shapes are the local store's)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    for route, (kind, file_field) in ROUTES.items():
        app.add_api_route(f"{route}/submit", _submit_route(kind, file_field), methods=["POST"])
        app.add_api_route(f"{route}/status", _status, methods=["GET"])
        app.add_api_route(f"{route}/get", _result, methods=["GET"])
    app.add_api_route("/jobs/{task_id}", _progress, methods=["GET"], response_model=JobProgress)
    return app


def _shared(request: Request) -> SharedJobs:
    return request.scope["wxs.shared_jobs"]  # type: ignore[no-any-return]


def _task_id(request: Request) -> str:
    task_id = request.query_params.get("task_id")
    if not task_id:
        raise InvalidRequest("task_id is required", param="task_id")
    return task_id


def _not_found(task_id: str) -> JobNotFound:
    return JobNotFound(f"no job with task id {task_id[:64]!r} (unknown, or expired)", param="task_id")


def _submit_route(kind: str, file_field: str) -> Callable[[Request], Awaitable[Response]]:
    async def submit(request: Request) -> Response:
        shared = _shared(request)
        limit_mb = shared.settings.job_upload_max_mb
        too_large = PayloadTooLarge(
            f"an async job's upload is kept in the shared job store: at most {limit_mb} MiB "
            "(WXS_JOB_UPLOAD_MAX_MB); send a larger recording to the sync route", param=file_field)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit_mb * _BLOCK + 64 * 1024:  # the form's own bytes
            raise too_large
        form = await request.form()
        try:
            upload = form.get(file_field)
            if not isinstance(upload, UploadFile):
                raise MissingFile(f"send the recording as the multipart file field {file_field!r}",
                                  param=file_field)
            data = bytearray()
            while block := await upload.read(_BLOCK):
                data += block
                if len(data) > limit_mb * _BLOCK:
                    raise too_large
            fields = form_fields(form.multi_items())
            callback = await _checked_callback(shared, request, fields)
            task_id = await shared.store.submit(kind, fields, upload.content_type, bytes(data), callback)
        except (RedisError, OSError) as exc:
            logger.error("job store unreachable at submit: %s", type(exc).__name__)
            raise _store_down(shared) from exc
        finally:
            await form.close()
        logger.info("job %s submitted (%s, %d bytes)", task_id, kind, len(data))
        return JSONResponse({"task_id": task_id, "status": "in_progress"},
                            headers={REQUEST_ID_HEADER: request_id_of(request)})

    return submit


async def _checked_callback(shared: SharedJobs, request: Request,
                            fields: dict[str, str | list[str]]) -> dict[str, str | None] | None:
    """The job's callback fields, checked (400 naming the field), taken out of its form fields."""
    url, auth = (fields.pop(name, None) for name in CALLBACK_FIELDS)
    if isinstance(url, list) or isinstance(auth, list):
        raise CallbackRefused("send callback_url and callback_auth_header once each")
    target = await shared.gateway.callbacks.policy.check(url, auth)
    if target is None:
        return None
    base_url = shared.settings.public_url or str(request.base_url)
    return {"url": target.url, "auth_header": target.auth_header, "base_url": base_url.rstrip("/")}


async def _status(request: Request) -> Response:
    task_id = _task_id(request)
    status = await _read(request, _shared(request).store.status(task_id))
    if status is None:
        raise _not_found(task_id)
    return JSONResponse(status)


async def _result(request: Request) -> Response:
    task_id = _task_id(request)
    store = _shared(request).store
    answer = await _read(request, store.answer(task_id))
    if answer is not None:
        return Response(answer.body, status_code=answer.status_code, media_type=answer.media_type)
    if await _read(request, store.progress(task_id)) is None:
        raise _not_found(task_id)
    raise JobNotFinished(f"job {task_id[:64]!r} has not finished; poll GET /jobs/{{task_id}} until its "
                         "state is completed or failed", param="task_id")


async def _progress(task_id: str, request: Request) -> JobProgress:
    progress = await _read(request, _shared(request).store.progress(task_id))
    if progress is None:
        raise _not_found(task_id)
    return progress


async def _read(request: Request, call: Awaitable[Any]) -> Any:
    try:
        return await call
    except (RedisError, OSError) as exc:
        logger.error("job store unreachable: %s", type(exc).__name__)
        raise _store_down(_shared(request)) from exc


def _store_down(shared: SharedJobs) -> Unavailable:
    return Unavailable("the job store is unreachable; retry later", retry_after_s=shared.settings.retry_after_s,
                       code="job_store_unavailable")


class SharedJobRoutes:
    """ASGI middleware (inside the guard): the job routes go to `jobs_app` when the gateway has a
    shared job store, everything else (and every route of a local-store gateway) to BentoML; a
    local-store submit with its callback fields checked on the way (`checked_submit`)."""

    def __init__(self, app: ASGIApp, gateway: Callable[[], Any]) -> None:
        self.app = app
        self.gateway = gateway
        self.jobs = jobs_app()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        gateway = self.gateway() if scope["type"] == "http" else None
        shared = getattr(gateway, "shared_jobs", None)
        if shared is not None and is_job_path(scope["path"]):
            scope["wxs.shared_jobs"] = shared
            await self.jobs(scope, receive, send)
            return
        if gateway is not None and scope["method"] == "POST" and is_submit_path(scope["path"]):
            # BentoML's own submit (the local job store): its callback fields checked on the way
            async def refuse(error: ServiceError) -> None:
                await JSONResponse(error.to_body(), status_code=error.status_code)(scope, receive, send)

            await checked_submit(self.app, scope, receive, send, gateway.callbacks.policy, refuse)
            return
        await self.app(scope, receive, send)


def is_submit_path(path: str) -> bool:
    return any(path == f"{route}/submit" for route in ROUTES)


def is_job_path(path: str) -> bool:
    if any(path == f"{route}/{verb}" for route in ROUTES for verb in ("submit", "status", "get")):
        return True
    parts = path.split("/")
    return len(parts) == 3 and parts[1] == "jobs" and parts[2] not in ("", "transcribe")


def form_fields(items: list[tuple[str, Any]]) -> dict[str, str | list[str]]:
    """A form's text fields as the job stores them: list fields (`name[]`, sent once per value)
    keep every value, the others their last one."""
    fields: dict[str, str | list[str]] = {}
    for key, value in items:
        if not isinstance(value, str):
            continue
        if key.endswith("[]"):
            listed = fields.get(key)
            fields[key] = [*listed, value] if isinstance(listed, list) else [value]
        else:
            fields[key] = value
    return fields
