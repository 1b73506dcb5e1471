"""Async jobs' progress records, and what BentoML's task result store knows of a task id.

A submitted job runs in the gateway worker after its submit answer went out. Its `JobRecord`
(keyed by task id) is updated between stages and after each speech chunk the ASR runner decodes;
``GET /jobs/{task_id}`` reads it (whisperx_service.http.jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import sqlite3
import time
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidParameter, JobNotFinished, JobNotFound, ServiceError
from .schema import CallbackProgress, JobProgress, JobState


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

    def callback(self, state: Literal["pending", "delivered", "failed"], attempts: int = 0,
                 status_code: int | None = None) -> None:
        self._touch(callback=CallbackProgress(state=state, attempts=attempts, status_code=status_code))


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


# BentoML's result routes of our two task endpoints (see `task_result_error`).
TASK_RESULT_PATHS = frozenset({"/jobs/transcribe/get", "/v1/audio/transcriptions/jobs/get"})
TASK_RUNNING = frozenset({"pending", "in_progress"})  # BentoML's result store statuses before an answer


async def task_result_error(board: JobBoard, task_id: str) -> ServiceError | None:
    """What a result request must answer instead of BentoML's own errors, or None to let it answer.

    BentoML parses a task's form only when the task runs: a submit without the file field is
    accepted, then fails before our code sees it, and its result route answers 500. That is the
    client's error: 422. An unknown id gets our 404 envelope, a job still running our 409.
    """
    stored = await asyncio.to_thread(stored_status, task_id)
    if stored is None and task_id not in board.records:
        return JobNotFound(f"no job with task id {task_id[:64]!r} (unknown, or expired)", param="task_id")
    if stored is None or stored[1] in TASK_RUNNING:
        return JobNotFinished(f"job {task_id[:64]!r} has not finished; poll GET /jobs/{{task_id}} until its "
                              "state is completed or failed", param="task_id")
    if stored[1] == "failed":
        return InvalidParameter("the job's request could not be read (a missing file field, or a field of the "
                                "wrong type); nothing was computed", param="task_id", code="job_input_invalid")
    return None


def result_stored(task_id: str) -> bool:
    """Whether BentoML has stored the task's answer (the in-memory record can end a moment before)."""
    stored = stored_status(task_id)
    return stored is not None and stored[1] not in TASK_RUNNING


def stored_status(task_id: str) -> tuple[str, str, float] | None:
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
