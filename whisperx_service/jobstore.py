"""The shared job store (``WXS_JOB_STORE=redis://...``): async jobs every gateway replica sees.

Why Redis Streams and not a queue library: a job must be run again when the gateway running it
dies (SIGKILL, node lost), and must not be run twice while its gateway lives. A stream with one
consumer group gives exactly that with no extra process: ``XREADGROUP`` hands a new job to one
gateway, the gateway refreshes the entry's idle time while it works (``XCLAIM ... JUSTID``, a
heartbeat), and any gateway takes over an entry idle for longer than the visibility timeout
(``XAUTOCLAIM``), counting deliveries (after ``job_max_attempts`` the job is failed with
``job_worker_lost``). arq would also need its own worker process per gateway, re-pickles the
upload per retry and has no progress record of its own; the stream is ~200 lines here.

Keys, all under ``wxs:`` (`KEY_PREFIX`):

- ``wxs:jobs``: the stream (one field, ``task_id``), consumer group ``gateways``; entries are
  acknowledged and deleted once their job has an answer.
- ``wxs:job:<id>``: a hash: kind, the form's text fields (JSON), the declared content type, the
  progress record (JSON, `JobProgress`), BentoML's status fields, then the answer (status, media
  type, body). Expires `job_retention_s` after the job ends (and, while it waits, that long after
  it was submitted or last started).
- ``wxs:callbacks``: a sorted set of the jobs whose callback is still to be delivered, scored by
  the (Redis server) time from which a gateway may take it: 0 when the job ends, then the lease of
  the gateway delivering it, renewed while it delivers. A gateway that dies mid-delivery stops
  renewing and another takes the callback over; the job's hash keeps the callback (``callback``:
  url, Authorization value, base URL) and its delivery state (``callback_state``: pending,
  delivered or failed; ``callback_attempts``; ``callback_deadline``; ``callback_status``).
- ``wxs:job:<id>:upload``: the upload's bytes, until the job has an answer (then deleted; the
  same expiry as a safety net). Its size is bounded by ``WXS_JOB_UPLOAD_MAX_MB`` (413 above).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .schema import CallbackProgress, JobProgress, JobState

KEY_PREFIX = "wxs:"
STREAM = f"{KEY_PREFIX}jobs"
GROUP = "gateways"
CALLBACKS = f"{KEY_PREFIX}callbacks"
# Take the first callback due (score <= server time) and lease it: one gateway gets each.
_CLAIM_CALLBACK = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, 1)
if #due == 0 then return false end
redis.call('ZADD', KEYS[1], 'XX', ms + tonumber(ARGV[1]), due[1])
return due[1]
"""
_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
"""
# Extend the lease of a callback still in the set (XX: one already done is not put back).
_RENEW_CALLBACK = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'XX', 'CH', ms + tonumber(ARGV[1]), ARGV[2])
"""
RESULT_PATHS = {"transcribe": "/jobs/transcribe/get", "transcription": "/v1/audio/transcriptions/jobs/get"}


def job_key(task_id: str) -> str:
    return f"{KEY_PREFIX}job:{task_id}"


def upload_key(task_id: str) -> str:
    return f"{KEY_PREFIX}job:{task_id}:upload"


@dataclass(frozen=True)
class StoredJob:
    """What a gateway needs to run a job: its kind, the form's text fields, the upload's declared type."""

    task_id: str
    kind: str
    fields: dict[str, str | list[str]]
    declared_type: str | None
    progress: JobProgress
    has_callback: bool = False


@dataclass(frozen=True)
class StoredCallback:
    """A job's callback as a delivering gateway reads it."""

    task_id: str
    url: str
    auth_header: str | None
    base_url: str
    state: str
    attempts: int
    deadline: float
    progress: JobProgress


@dataclass(frozen=True)
class StoredAnswer:
    status_code: int
    media_type: str
    body: bytes


@dataclass(frozen=True)
class Claimed:
    """A stream entry this gateway now holds: run the job, heartbeat, then `ack`."""

    entry_id: str
    task_id: str
    deliveries: int


class RedisJobStore:
    """Jobs, their progress and answers, and the queue, in one Redis (see the module doc)."""

    def __init__(self, url: str, *, retention_s: float, visibility_timeout_s: float) -> None:
        self.redis: Redis = Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5,
                                           health_check_interval=15)
        self.retention_s = retention_s
        self.visibility_ms = int(visibility_timeout_s * 1000)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # --- submit, read ---

    async def submit(self, kind: str, fields: dict[str, str | list[str]], declared_type: str | None, upload: bytes,
                     callback: dict[str, str | None] | None = None) -> str:
        task_id = uuid.uuid4().hex
        now = time.time()
        progress = JobProgress(task_id=task_id, kind=kind, state=JobState.queued, stage="queued",
                               created_at=now, updated_at=now,
                               result_url=f"{RESULT_PATHS[kind]}?task_id={task_id}")
        ttl = self._ttl()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job_key(task_id), mapping={
                "kind": kind, "fields": json.dumps(fields), "declared_type": declared_type or "",
                "progress": progress.model_dump_json(), "status": "in_progress", "created_at": now,
                **({"callback": json.dumps(callback)} if callback else {}),
            })
            pipe.expire(job_key(task_id), ttl)
            pipe.set(upload_key(task_id), upload, ex=ttl)
            pipe.xadd(STREAM, {"task_id": task_id})
            await pipe.execute()
        return task_id

    async def job(self, task_id: str) -> StoredJob | None:
        raw: list[Any] = await self.redis.hmget(job_key(task_id), ["kind", "fields", "declared_type", "progress",
                                                                   "callback"])
        if raw[0] is None or raw[3] is None:
            return None
        return StoredJob(task_id=task_id, kind=raw[0].decode(), fields=json.loads(raw[1] or b"{}"),
                         declared_type=(raw[2] or b"").decode() or None,
                         progress=JobProgress.model_validate_json(raw[3]), has_callback=raw[4] is not None)

    async def progress(self, task_id: str) -> JobProgress | None:
        """The progress record, with its callback's delivery state when the job has a callback."""
        raw: list[Any] = await self.redis.hmget(job_key(task_id), [
            "progress", "callback", "callback_state", "callback_attempts", "callback_status"])
        if raw[0] is None:
            return None
        progress = JobProgress.model_validate_json(raw[0])
        if raw[1] is None:
            return progress
        callback = CallbackProgress(state=(raw[2] or b"pending").decode(), attempts=int(raw[3] or 0),
                                    status_code=int(raw[4]) if raw[4] and int(raw[4]) else None)
        return progress.model_copy(update={"callback": callback})

    async def status(self, task_id: str) -> dict[str, Any] | None:
        """BentoML's task status shape: task_id, status, created_at, executed_at (ISO times)."""
        raw: list[Any] = await self.redis.hmget(job_key(task_id), ["status", "created_at", "executed_at"])
        if raw[0] is None:
            return None
        return {"task_id": task_id, "status": raw[0].decode(), "created_at": _iso(raw[1]),
                "executed_at": _iso(raw[2]) if raw[2] else None}

    async def answer(self, task_id: str) -> StoredAnswer | None:
        raw: list[Any] = await self.redis.hmget(job_key(task_id), ["answer_status", "answer_type", "answer_body"])
        if raw[0] is None:
            return None
        return StoredAnswer(int(raw[0]), (raw[1] or b"application/json").decode(), raw[2] or b"")

    async def upload(self, task_id: str) -> bytes | None:
        data: Any = await self.redis.get(upload_key(task_id))
        return None if data is None else bytes(data)

    # --- a gateway running a job ---

    async def started(self, task_id: str, progress: JobProgress, ttl_s: float) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job_key(task_id), mapping={"progress": progress.model_dump_json(),
                                                 "executed_at": time.time()})
            pipe.expire(job_key(task_id), int(ttl_s) + 1)
            pipe.expire(upload_key(task_id), int(ttl_s) + 1)
            await pipe.execute()

    async def save_progress(self, task_id: str, progress: JobProgress) -> None:
        await self.redis.hset(job_key(task_id), "progress", progress.model_dump_json())

    async def finish(self, task_id: str, progress: JobProgress, answer: StoredAnswer,
                     callback_deadline: float | None = None) -> None:
        """Store the answer (BentoML status 'completed' even for an error envelope, as BentoML does),
        drop the upload, and let the record expire after the retention; with `callback_deadline`
        (unix time), queue the job's callback in the same transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job_key(task_id), mapping={
                "progress": progress.model_dump_json(), "status": "completed",
                "answer_status": answer.status_code, "answer_type": answer.media_type, "answer_body": answer.body,
            })
            pipe.expire(job_key(task_id), self._ttl())
            pipe.delete(upload_key(task_id))
            if callback_deadline is not None:
                pipe.hsetnx(job_key(task_id), "callback_state", "pending")
                pipe.hsetnx(job_key(task_id), "callback_deadline", callback_deadline)
                pipe.zadd(CALLBACKS, {task_id: 0}, nx=True)
            await pipe.execute()

    # --- callbacks ---

    async def claim_callback(self, consumer: str, lease_s: float) -> str | None:
        """A callback due for delivery, leased to `consumer` for `lease_s` (renew it while delivering)."""
        raw: Any = await self.redis.eval(_CLAIM_CALLBACK, 1, CALLBACKS, int(lease_s * 1000))
        if raw is None:
            return None
        task_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        # Who holds it now: a holder that stalled past its lease sees this before its next attempt.
        await self.redis.eval(_SET_IF_EXISTS, 1, job_key(task_id), "callback_owner", consumer)
        return task_id

    async def callback_owner(self, task_id: str) -> str | None:
        raw: Any = await self.redis.hget(job_key(task_id), "callback_owner")
        return None if raw is None else raw.decode()

    async def renew_callback(self, task_id: str, lease_s: float) -> None:
        await self.redis.eval(_RENEW_CALLBACK, 1, CALLBACKS, int(lease_s * 1000), task_id)

    async def callback(self, task_id: str) -> StoredCallback | None:
        raw: list[Any] = await self.redis.hmget(job_key(task_id), [
            "callback", "callback_state", "callback_attempts", "callback_deadline", "progress"])
        if raw[0] is None or raw[4] is None:
            return None
        target = json.loads(raw[0])
        return StoredCallback(task_id=task_id, url=target["url"], auth_header=target.get("auth_header"),
                              base_url=target.get("base_url") or "", state=(raw[1] or b"pending").decode(),
                              attempts=int(raw[2] or 0), deadline=float(raw[3] or 0),
                              progress=JobProgress.model_validate_json(raw[4]))

    async def callback_attempt(self, task_id: str) -> None:
        await self.redis.hincrby(job_key(task_id), "callback_attempts", 1)

    async def callback_done(self, task_id: str, state: str | None, status_code: int | None = None) -> None:
        """The callback's end (`state` delivered or failed; None: its job is gone), out of the set."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if state is not None:
                pipe.hset(job_key(task_id), mapping={"callback_state": state,
                                                     "callback_status": status_code or 0})
            pipe.zrem(CALLBACKS, task_id)
            await pipe.execute()

    # --- the queue ---

    async def claim(self, consumer: str, block_ms: int) -> Claimed | None:
        """One job for `consumer`: first an entry whose gateway stopped heartbeating, else a new one."""
        autoclaimed: Any = await self.redis.xautoclaim(STREAM, GROUP, consumer, self.visibility_ms, "0-0", count=1)
        stale = autoclaimed[1]
        if stale:
            entry_id, fields = stale[0]
            pending: Any = await self.redis.xpending_range(STREAM, GROUP, min=entry_id, max=entry_id, count=1)
            deliveries = int(pending[0]["times_delivered"]) if pending else 2
            return _claimed(entry_id, fields, deliveries)
        read: Any = await self.redis.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=1, block=block_ms)
        for _, entries in read or []:
            for entry_id, fields in entries:
                return _claimed(entry_id, fields, 1)
        return None

    async def heartbeat(self, consumer: str, entry_id: str) -> None:
        """Reset the entry's idle time (JUSTID: the delivery count stays)."""
        await self.redis.xclaim(STREAM, GROUP, consumer, 0, [entry_id], justid=True)

    async def ack(self, entry_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(STREAM, GROUP, entry_id)
            pipe.xdel(STREAM, entry_id)
            await pipe.execute()

    def _ttl(self) -> int:
        return max(1, int(self.retention_s + 0.999))


def _claimed(entry_id: Any, fields: Any, deliveries: int) -> Claimed:
    entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    task_id = (fields or {}).get(b"task_id")
    if task_id is None:  # an entry deleted while pending: nothing to run
        return Claimed(entry, "", deliveries)
    return Claimed(entry, task_id.decode(), deliveries)


def _iso(raw: bytes | None) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(float(raw or 0), tz=datetime.UTC).replace(tzinfo=None).isoformat()
