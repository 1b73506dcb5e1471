"""The shared job store on a real redis-server: one gateway gets each new job, a heartbeat keeps it,
a job whose gateway went silent is claimed again with its delivery counted, answers expire with
their retention and take the upload with them, and the setting switches it on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from tests.redis_server import redis_server
from whisperx_service.config import Settings
from whisperx_service.jobstore import STREAM, RedisJobStore, StoredAnswer, job_key, upload_key
from whisperx_service.schema import JobState


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _store(url: str, retention_s: float = 60, visibility_s: float = 1.0) -> RedisJobStore:
    return RedisJobStore(url, retention_s=retention_s, visibility_timeout_s=visibility_s)


def test_setting_switches_the_store() -> None:
    assert Settings().redis_job_store() is None  # the local default
    assert Settings(job_store="redis://redis:6379/0").redis_job_store() == "redis://redis:6379/0"
    with pytest.raises(ValidationError, match="Redis URL"):
        Settings(job_store="postgres://db")


def test_one_gateway_per_job_then_reclaimed_after_silence(redis_url: str) -> None:
    async def scenario() -> None:
        store = _store(redis_url, visibility_s=1.0)
        await store.redis.flushdb()
        await store.ensure_group()
        await store.ensure_group()  # idempotent (every gateway calls it)
        task_id = await store.submit("transcribe", {"language": "en"}, "audio/flac", b"RIFF...")
        job = await store.job(task_id)
        assert job is not None and job.fields == {"language": "en"} and job.declared_type == "audio/flac"
        assert job.progress.state == JobState.queued and job.progress.result_url.endswith(task_id)
        assert (await store.status(task_id) or {})["status"] == "in_progress"

        first = await store.claim("gateway-a", block_ms=100)
        assert first is not None and (first.task_id, first.deliveries) == (task_id, 1)
        assert await store.claim("gateway-b", block_ms=100) is None  # one gateway per job
        # a live gateway's heartbeat keeps its job past the visibility timeout
        for _ in range(4):
            await asyncio.sleep(0.4)
            await store.heartbeat("gateway-a", first.entry_id)
        assert await store.claim("gateway-b", block_ms=100) is None
        # gateway A goes silent (killed): after the timeout B takes it over, the run counted
        await asyncio.sleep(1.3)
        second = await store.claim("gateway-b", block_ms=100)
        assert second is not None and (second.task_id, second.entry_id) == (task_id, first.entry_id)
        assert second.deliveries == 2
        assert await store.upload(task_id) == b"RIFF..."

        progress = job.progress.model_copy(update={"state": JobState.completed, "stage": "done"})
        await store.finish(task_id, progress, StoredAnswer(200, "application/json", b'{"segments": []}'))
        await store.ack(second.entry_id)
        assert await store.upload(task_id) is None  # dropped with the answer
        assert await store.answer(task_id) == StoredAnswer(200, "application/json", b'{"segments": []}')
        assert (await store.status(task_id) or {})["status"] == "completed"
        assert await store.redis.xlen(STREAM) == 0
        assert (await store.redis.xpending(STREAM, "gateways"))["pending"] == 0
        await store.close()

    asyncio.run(scenario())


def test_answers_and_uploads_expire_with_the_retention(redis_url: str) -> None:
    async def scenario() -> None:
        store = _store(redis_url, retention_s=1)
        await store.redis.flushdb()
        await store.ensure_group()
        done = await store.submit("transcription", {}, None, b"x" * 1000)
        waiting = await store.submit("transcription", {}, None, b"y" * 1000)  # never run
        job = await store.job(done)
        assert job is not None
        await store.finish(done, job.progress, StoredAnswer(200, "text/plain", b"hi"))
        deadline = time.monotonic() + 10
        while await store.redis.exists(job_key(done), job_key(waiting), upload_key(waiting)):
            assert time.monotonic() < deadline, await store.redis.keys("wxs:*")
            await asyncio.sleep(0.2)
        assert await store.progress(done) is None and await store.status(waiting) is None
        # the expired job's stream entry: claimed, found gone, acknowledged by the gateway
        claimed = await store.claim("gateway-a", block_ms=100)
        assert claimed is not None and await store.job(claimed.task_id) is None
        await store.close()

    asyncio.run(scenario())


def test_a_job_whose_gateways_keep_dying_ends_failed_with_a_reason(redis_url: str) -> None:
    """After `job_max_attempts` runs cut off, the next gateway to claim it stores job_worker_lost."""
    from whisperx_service.http.shared_jobs import SharedJobs
    from whisperx_service.lifecycle import Lifecycle

    class Gateway:
        lifecycle = Lifecycle(max_in_flight=4, retry_after_s=1, grace_s=1)

    async def scenario() -> None:
        settings = Settings(job_store=redis_url, job_visibility_timeout_s=0.2, job_max_attempts=2)
        shared = SharedJobs(Gateway(), settings, redis_url)
        await shared.store.redis.flushdb()
        await shared.store.ensure_group()
        task_id = await shared.store.submit("transcribe", {}, None, b"audio")
        for gateway in ("a", "b"):  # two gateways take it and die (no heartbeat, no answer)
            assert await shared.store.claim(gateway, block_ms=100) is not None
            await asyncio.sleep(0.3)
        claimed = await shared.store.claim(shared.consumer, block_ms=100)
        assert claimed is not None and claimed.deliveries == 3
        await shared._run(claimed)
        progress = await shared.store.progress(task_id)
        assert progress is not None and progress.state == JobState.failed
        assert progress.error is not None and progress.error["error"]["code"] == "job_worker_lost"
        answer = await shared.store.answer(task_id)
        assert answer is not None and answer.status_code == 503 and b"job_worker_lost" in answer.body
        assert await shared.store.upload(task_id) is None
        assert (await shared.store.redis.xpending(STREAM, "gateways"))["pending"] == 0
        assert Gateway.lifecycle.in_flight == 0
        await shared.stop()

    asyncio.run(scenario())


def test_a_jobs_list_fields_keep_every_value() -> None:
    from whisperx_service.http.shared_jobs import form_fields

    items = [("model", "whisper-1"), ("known_speaker_names[]", "Ann"), ("known_speaker_names[]", "Bob"),
             ("timestamp_granularities[]", "word"), ("language", "de"), ("language", "en"), ("file", object())]
    assert form_fields(items) == {"model": "whisper-1", "known_speaker_names[]": ["Ann", "Bob"],
                                  "timestamp_granularities[]": ["word"], "language": "en"}
