"""The gateway: the HTTP front of a `bentoml.depends` graph of three runners (ASR, alignment,
diarization). It builds the pipeline over the runners' proxies and mounts the HTTP layer; what a
request goes through is `whisperx_service.pipeline` (stages) and `whisperx_service.http` (routes).
"""

from __future__ import annotations

import bentoml
from bentoml.exceptions import BentoMLException

from runners.align import Aligner
from runners.asr import ASR
from runners.diarize import Diarizer
from whisperx_service.callbacks import CallbackSender
from whisperx_service.config import get_settings
from whisperx_service.guard import GatewayGuard
from whisperx_service.http import build_app
from whisperx_service.http.jobs import JobTasks
from whisperx_service.http.shared_jobs import SharedJobRoutes, SharedJobs
from whisperx_service.lifecycle import GATEWAY_SERVICE_NAME, AudioBudget, Lifecycle
from whisperx_service.logs import configure_logging
from whisperx_service.metrics import GatewayMetrics
from whisperx_service.pipeline import Pipeline, PipelineLimits
from whisperx_service.request_timeout import cancel_request_timers
from whisperx_service.voices import open_voice_store

# Every process of the graph (the gateway and each runner, also served apart) imports this module
# before BentoML builds its app.
cancel_request_timers()
app = build_app()


@bentoml.service(name=GATEWAY_SERVICE_NAME, workers=1, traffic={"timeout": get_settings().stage_timeout_s + 60})
@bentoml.asgi_app(app, path="/")
class Gateway(JobTasks):  # JobTasks: the async-job @bentoml.task endpoints
    asr = bentoml.depends(ASR)
    aligner = bentoml.depends(Aligner)
    diarizer = bentoml.depends(Diarizer)

    def __init__(self) -> None:
        configure_logging()
        self.settings = get_settings()
        self.pipeline = Pipeline(
            self.asr.to_async, self.aligner.to_async, self.diarizer.to_async,
            PipelineLimits(stage_timeout_s=self.settings.stage_timeout_s,
                           chunks_in_flight=2 * self.settings.resolved_asr_batch_size(),
                           language_probes=self.settings.language_probes,
                           redecode_suspect_chunks=self.settings.redecode_short_chunks),
        )
        self.metrics = GatewayMetrics()
        # Job callbacks: the allowlist (checked at submit and delivery) and the signing key.
        self.callbacks = CallbackSender.from_settings(
            self.settings, on_attempt=self.metrics.callback_attempts.inc,
            on_outcome=lambda outcome: self.metrics.callbacks.labels(outcome=outcome.reason).inc())
        self.lifecycle = Lifecycle(max_in_flight=self.settings.max_in_flight,
                                   retry_after_s=self.settings.retry_after_s,
                                   grace_s=self.settings.shutdown_grace_s, on_change=self.metrics.in_flight.set)
        self.lifecycle.install_drain_on_sigterm()
        self.audio_budget = AudioBudget(
            self.settings.audio_budget_s(), self.settings.retry_after_s,
            on_reject=lambda reason: self.metrics.rejected.labels(reason=reason).inc(),
            on_change=self.metrics.audio_in_flight.set)
        # Async jobs in this process's memory and BentoML's task store, or in a Redis every replica shares.
        store_url = self.settings.redis_job_store()
        self.shared_jobs = SharedJobs(self, self.settings, store_url) if store_url else None
        # Stored voices (POST /v1/speakers), in the same store as the jobs.
        self.voices = open_voice_store(self.settings)

    @bentoml.on_startup
    def _start_shared_jobs(self) -> None:
        if self.shared_jobs is not None:
            self.shared_jobs.start()

    @bentoml.on_shutdown
    async def _stop_shared_jobs(self) -> None:
        if self.shared_jobs is not None:
            await self.shared_jobs.stop()

    @bentoml.on_shutdown
    async def _close_voices(self) -> None:
        await self.voices.close()


def _current_gateway() -> Gateway | None:
    """The gateway instance of this worker, once BentoML has made it (None while starting)."""
    try:
        return bentoml.get_current_service()  # type: ignore[no-any-return]
    except BentoMLException:
        return None


# Request ids, auth, size limits, content types, admission and drain, in front of every route.
Gateway.add_asgi_middleware(  # type: ignore[attr-defined]  # a bentoml Service at runtime
    GatewayGuard, settings=get_settings(), gateway=_current_gateway)
# Inside the guard: the job routes, when jobs live in the shared (Redis) store.
Gateway.add_asgi_middleware(SharedJobRoutes, gateway=_current_gateway)  # type: ignore[attr-defined]
