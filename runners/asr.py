"""ASR runner: one Whisper model (`whisperx_service.whisper`) in two steps so chunks batch across
requests. `plan` finds the speech chunks; `decode` is a batchable BentoML API: the gateway sends
every chunk as its own call, and BentoML's adaptive batching merges the chunks of all in-flight
requests into Whisper batches.
"""

from __future__ import annotations

import logging
import time

import bentoml
import numpy as np
from bentoml.models import BentoModel

from whisperx_service.audio import SAMPLE_RATE
from whisperx_service.config import get_settings, runner_service_config
from whisperx_service.connections import bound_connections
from whisperx_service.lifecycle import outlive_gateway
from whisperx_service.logs import bind_request_id, configure_logging
from whisperx_service.schema import AsrPlan, ChunkJob, ChunkText, LanguageDetection
from whisperx_service.whisper import WhisperDecoder

logger = logging.getLogger("whisperx_service.asr")
# Read at import only for what BentoML needs then (resources, the batcher, the model to package);
# each instance reads the settings again when it starts.
_declared = get_settings()


# As many calls at once as workers: language probes and other requests' plans use them too.
@bentoml.service(name="asr", **runner_service_config(_declared.asr_threads, _declared.resolved_asr_workers()))
class ASR:
    whisper_model = BentoModel(_declared.asr_model)

    def __init__(self) -> None:
        configure_logging()
        settings = get_settings()
        outlive_gateway(settings.shutdown_grace_s)  # SIGTERM: serve until the gateway has drained
        stored = bentoml.models.get(settings.asr_model)  # the bento's own store when served from one
        self.whisper = WhisperDecoder(stored.path, str(stored.tag), settings)

    @bentoml.api
    def plan(self, audio: np.ndarray, request_id: str | None = None) -> AsrPlan:
        """Speech chunks of 16-kHz mono audio (the pipeline decides the language)."""
        with bind_request_id(request_id):
            started = time.perf_counter()
            chunks, pieces = self.whisper.speech_plan(audio)
            logger.info("planned %.1f s: %d chunks in %.2f s", audio.shape[0] / SAMPLE_RATE,
                        len(chunks), time.perf_counter() - started)
            return AsrPlan(chunks=chunks, pieces=pieces, multilingual=not self.whisper.english_only,
                           model=self.whisper.model_tag)

    # BentoML's batching takes at least 2 per batch: WXS_ASR_BATCH_SIZE=1 leaves a plain API.
    @bentoml.api(batchable=_declared.resolved_asr_batch_size() > 1, batch_dim=(0, 0),
                 max_batch_size=max(2, _declared.resolved_asr_batch_size()),
                 max_latency_ms=int(_declared.stage_timeout_s * 1000))
    def decode(self, jobs: list[ChunkJob]) -> list[ChunkText]:
        """Decode chunks (from any number of requests) in Whisper batches; results keep their order."""
        return self.whisper.decode(jobs)

    @bentoml.api
    def detect_language(self, audio: np.ndarray, top_k: int = 5) -> LanguageDetection:
        """Language of the first 30 s: the best guess and the top_k most likely languages."""
        return self.whisper.detect_language(audio, top_k)


# Bounded keep-alive connections: added replicas of this runner get their share of calls.
bound_connections(ASR)
