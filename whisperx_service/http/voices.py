"""Stored voices: ``POST /v1/speakers`` (a name and a 2-10 s sample), ``GET /v1/speakers``,
``GET /v1/speakers/{id}``, ``DELETE /v1/speakers/{id}``; requests then name speakers with
``known_speaker_ids[]`` (`whisperx_service.voices`). The same API-key rules as every /v1 route
(the guard's)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Request, UploadFile
from pydantic import Field
from starlette.responses import JSONResponse, Response

from ..audio import SAMPLE_RATE
from ..errors import (
    MissingFile,
    SpeakerNotFound,
    UnsupportedValue,
    VoicePrintsUnavailable,
    VoiceStoreFull,
)
from ..logs import bind_request_id
from ..params import MAX_NAME_CHARS
from ..uploads import decode_voice_sample, discard_spool, spool_upload
from ..voices import Speaker, SpeakerList, VoiceStore
from .envelope import REQUEST_ID_HEADER, GatewayDep, request_id_of
from .forms import MULTIPART, FormFields, form_field

logger = logging.getLogger("whisperx_service.voices")
router = APIRouter(tags=["Stored voices"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Missing name or file, or a sample that is not 2-10 s of audio (`param` names the field)."},
    409: {"description": "The store holds WXS_MAX_STORED_VOICES voices (`voice_store_full`)."},
    415: {"description": "The file part declares a type that is not audio."},
    501: {"description": "The diarization backend has no speaker-embedding model (`voice_prints_unavailable`)."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No stored voice has that id (`speaker_not_found`)."}}


class SpeakerForm(FormFields):
    name: str | None = form_field("The person's name: diarized speakers whose voice matches are labelled with it.",
                                  "Alice")
    file: UploadFile | None = Field(None, description="2-10 s of that person speaking alone (any audio container).")


def _store(gateway: Any) -> VoiceStore:
    store: VoiceStore = gateway.voices
    return store


def _not_found(speaker_id: str) -> SpeakerNotFound:
    return SpeakerNotFound(f"no stored voice has the id {speaker_id[:60]!r}", param="speaker_id")


@router.post("/v1/speakers", status_code=201, response_model=Speaker, responses=_ERRORS)
async def create_speaker(gateway: GatewayDep, request: Request,
                         form: Annotated[SpeakerForm, MULTIPART]) -> Response:
    """Store a voice: its print is made now by the diarization model, the sample is not kept."""
    request_id = request_id_of(request)
    name = (form.name or "").strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise UnsupportedValue(f"send the person's name (1-{MAX_NAME_CHARS} characters) as the field 'name'",
                               param="name")
    if form.file is None:
        raise MissingFile("send 2-10 s of the voice as the multipart file field 'file'", param="file")
    store = _store(gateway)
    with bind_request_id(request_id):
        most = gateway.settings.max_stored_voices
        if len(await store.all()) >= most:
            raise VoiceStoreFull(f"the store holds {most} voices, its most (WXS_MAX_STORED_VOICES): "
                                 "delete some first")
        path = await spool_upload(form.file, gateway.settings)
        try:
            pcm = await decode_voice_sample(path, gateway.settings, label="the voice sample", param="file")
        finally:
            discard_spool(path)
        model = await gateway.pipeline.voice_model()
        voice_print = await gateway.pipeline.voice_print(pcm, request_id)
        if not model or voice_print.size == 0:
            raise VoicePrintsUnavailable("the diarization backend has no speaker-embedding model: "
                                         "voices cannot be stored (use the pyannote backend)")
        voice = await store.add(name, pcm.shape[0] / SAMPLE_RATE, model, voice_print)
        logger.info("stored voice %s (%.1f s, %s)", voice.id, voice.duration, model)
    return JSONResponse(voice.public().model_dump(mode="json"), status_code=201,
                        headers={REQUEST_ID_HEADER: request_id})


@router.get("/v1/speakers", response_model=SpeakerList)
async def list_speakers(gateway: GatewayDep) -> SpeakerList:
    """Every stored voice, oldest first."""
    return SpeakerList(data=[voice.public() for voice in await _store(gateway).all()])


@router.get("/v1/speakers/{speaker_id}", response_model=Speaker, responses=_NOT_FOUND)
async def retrieve_speaker(speaker_id: str, gateway: GatewayDep) -> Speaker:
    voice = await _store(gateway).get(speaker_id)
    if voice is None:
        raise _not_found(speaker_id)
    return voice.public()


@router.delete("/v1/speakers/{speaker_id}", status_code=204, response_class=Response, responses=_NOT_FOUND)
async def delete_speaker(speaker_id: str, gateway: GatewayDep) -> Response:
    """Forget a voice: requests naming its id get 400 from now on."""
    if not await _store(gateway).delete(speaker_id):
        raise _not_found(speaker_id)
    return Response(status_code=204)
