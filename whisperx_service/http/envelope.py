"""The one request envelope of every transcription: sync routes and async jobs alike.

A request arrives with an id (the guard gives one to any request without ``x-request-id``), its
upload is decoded once, the pipeline runs, metrics and one log line record it, and the answer
carries the id. Errors leave as `ServiceError`s, answered by the app's handlers in one envelope.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import bentoml
import numpy as np
from fastapi import Depends, Request
from starlette.responses import Response

from ..audio import SAMPLE_RATE
from ..config import Settings
from ..lifecycle import AudioBudget
from ..logs import bind_request_id
from ..metrics import GatewayMetrics
from ..params import TranscribeParams
from ..pipeline import ChunkListener, Pipeline, Progress, StageClock
from ..schema import TranscriptionResponse
from ..uploads import decode_speaker_references
from ..voices import resolve_voices
from ..writers import Rendered

logger = logging.getLogger("whisperx_service.gateway")

REQUEST_ID_HEADER = "x-request-id"


class Gateway(Protocol):
    """What the HTTP layer needs of the gateway service instance."""

    settings: Settings
    pipeline: Pipeline
    metrics: GatewayMetrics
    lifecycle: Any
    audio_budget: AudioBudget
    job_board: Any
    voices: Any  # whisperx_service.voices.VoiceStore


# A route's handle on the gateway instance of this worker (its pipeline, settings, metrics).
GatewayDep = Annotated[Any, Depends(bentoml.get_current_service)]


class JobProgress(Progress, Protocol):
    def audio(self, seconds: float) -> None: ...


def request_id_of(request: Request) -> str:
    """The id the guard put on the request (a client's own ``x-request-id`` is kept)."""
    from ..logs import new_request_id

    return request.headers.get(REQUEST_ID_HEADER) or new_request_id()


@dataclass(frozen=True)
class Transcribed:
    response: TranscriptionResponse
    seconds: float  # wall time since the request arrived


async def transcribe(
    gateway: Gateway, request_id: str, decode: Awaitable[np.ndarray], params: TranscribeParams,
    progress: JobProgress | None = None, on_text: ChunkListener | None = None,
) -> Transcribed:
    """Decode (timed as the decode stage), run the pipeline, record metrics and one log line."""
    with bind_request_id(request_id):
        clock = StageClock()
        with clock.timed("decode"):
            audio = await decode
            known = await decode_speaker_references(params.speaker_references, gateway.settings)
            if params.speaker_ids:  # stored voices (POST /v1/speakers)
                known += await resolve_voices(gateway.voices, params.speaker_ids,
                                              await gateway.pipeline.voice_model(), [k.name for k in known])
        seconds = audio.shape[0] / SAMPLE_RATE
        if progress is not None:
            progress.audio(seconds)
            if not gateway.audio_budget.fits(seconds):
                progress.stage("waiting")  # for room in the audio budget
        async with gateway.audio_budget.hold(seconds, wait=progress is not None):  # jobs wait their turn
            response = await gateway.pipeline.run(audio, params, request_id=request_id, clock=clock,
                                                  progress=progress, known_speakers=known, on_text=on_text)
        gateway.metrics.observe(response)
        if progress is not None:
            progress.stage("render")
        logger.info("transcribed %.1f s in %.2f s: %d segments, language %s",
                    response.duration, clock.now(), len(response.segments), response.language)
        return Transcribed(response, clock.now())


def answer(rendered: Rendered, request_id: str) -> Response:
    return Response(rendered.body, media_type=rendered.media_type, headers={REQUEST_ID_HEADER: request_id})
