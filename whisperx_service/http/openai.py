"""OpenAI-compatible audio API: ``/v1/audio/transcriptions``, ``/v1/audio/translations``, ``/v1/models``.

Like OpenAI, an unknown model is 404 (`model_not_found`) and a bad field value 400, while the
speaker and language fields shared with /transcribe keep their 422.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import replace
from typing import Annotated, Any

import bentoml
from fastapi import APIRouter, Request, UploadFile
from fastapi.responses import Response
from pydantic import Field

from ..config import get_settings
from ..errors import MissingFile, ModelNotFound
from ..params import (
    OpenAIParams,
    SubtitleOptions,
    parse_openai_params,
    parse_stream,
    parse_subtitle_options,
    with_speaker_references,
)
from ..schema import ModelCard, ModelList, OpenAIVerboseTranscription
from ..uploads import decode_upload
from ..writers import openai_diarized, openai_json, render_openai
from .envelope import Gateway, GatewayDep, Transcribed, answer, request_id_of, transcribe
from .forms import MULTIPART, FormFields, SpeakerFields, SubtitleFields, form_field, upload_field
from .streaming import openai_events

logger = logging.getLogger("whisperx_service.openai")
router = APIRouter(tags=["OpenAI-compatible"])
OPENAI_ALIAS = "whisper-1"

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Missing/undecodable file or a bad field value (OpenAI's error envelope)."},
    404: {"description": "Unknown model (`model_not_found`)."},
    413: {"description": "Upload or recording over the limits."},
    422: {"description": "Bad speaker count or language."},
    502: {"description": "A runner failed (`asr_failed`, `diarize_failed`, `align_failed`)."},
}
_FORMATS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "json ({text, usage}), verbose_json (this schema), diarized_json "
                       "({task, duration, text, segments: [{id, type, start, end, text, speaker}]}); "
                       "text, srt, vtt and tsv are text.",
        "model": OpenAIVerboseTranscription,
        "content": {
            "text/plain": {"example": "And so, my fellow Americans, ask not what your country can do for you.\n"},
            "application/x-subrip": {"example": "1\n00:00:00,000 --> 00:00:02,000\n[SPEAKER_00]: And so,\n"},
            "text/vtt": {"example": "WEBVTT\n\n00:00.000 --> 00:02.000\n[SPEAKER_00]: And so,\n"},
        },
    },
}


def served_models() -> dict[str, str]:
    """Accepted `model` names -> the served model: its store name, and OpenAI's whisper-1 alias."""
    name = get_settings().asr_model
    return {name: name, OPENAI_ALIAS: name}


def _created(name: str) -> int:
    try:
        info = bentoml.models.get(name).info
    except bentoml.exceptions.NotFound:
        return 0
    created: datetime.datetime = info.creation_time
    return int(created.timestamp())


@router.get("/v1/models", response_model=ModelList)
async def list_models() -> ModelList:
    """The models this service holds: the ASR model in the store, and its alias whisper-1."""
    name = get_settings().asr_model
    created = _created(name)
    return ModelList(data=[ModelCard(id=model, created=created) for model in served_models()])


@router.get("/v1/models/{model}", response_model=ModelCard, responses={404: _ERRORS[404]})
async def retrieve_model(model: str) -> ModelCard:
    if model not in served_models():
        raise ModelNotFound(f"The model `{model[:60]}` does not exist", param="model")
    return ModelCard(id=model, created=_created(get_settings().asr_model))


class TranslationForm(FormFields):
    """The fields of /v1/audio/translations (OpenAI's names)."""

    file: UploadFile | None = upload_field()
    model: str | None = form_field("whisper-1 or the served model's name (GET /v1/models).", "whisper-1")
    prompt: str | None = form_field("Whisper's initial prompt: names, spelling, style.", "Kennedy, Americans")
    response_format: str | None = form_field(
        "json (default), text, srt, vtt, verbose_json, diarized_json (transcriptions only), or tsv.",
        "verbose_json")
    temperature: str | None = form_field("Accepted (0..1) and ignored: decoding is one beam search "
                                     "(WXS_BEAM_SIZE) with no temperature fallback.", "0")

    def granularities(self) -> list[str]:
        return []

    def parse(self, gateway: Gateway, task: str) -> tuple[OpenAIParams, SubtitleOptions]:
        fields = self.model_dump(exclude={"file", "timestamp_granularities", "known_speaker_names",
                                          "known_speaker_references", "known_speaker_ids"})
        settings = gateway.settings
        params = parse_openai_params(
            fields, self.granularities(), task=task, served_models=served_models(),
            max_speakers_limit=settings.max_speakers_limit, default_zh_script=settings.default_zh_script,
        )
        return params, parse_subtitle_options(fields, {})


class TranscriptionForm(TranslationForm, SpeakerFields, SubtitleFields):
    """The fields of /v1/audio/transcriptions: OpenAI's, plus (extras) speaker counts and subtitle options."""

    language: str | None = form_field("ISO-639-1 code of the speech; detected when absent.", "en")
    language_mode: str | None = form_field(
        "recording (default) or per_segment (each speech chunk in its own language).", "recording")
    stream: str | None = form_field("true: Server-Sent Events as each part is decoded (OpenAI's "
                                    "transcript.text.delta / .segment / .done); json, text, diarized_json.", "false")
    timestamp_granularities: list[str] | None = Field(
        None, alias="timestamp_granularities[]", description="word and/or segment (verbose_json); default segment.",
        examples=[["word", "segment"]])

    def granularities(self) -> list[str]:
        return self.timestamp_granularities or []

    def parse(self, gateway: Gateway, task: str) -> tuple[OpenAIParams, SubtitleOptions]:
        params, options = super().parse(gateway, task)
        named = with_speaker_references(params.transcribe, self.speaker_references(),
                                        speaker_ids=self.speaker_ids(), diarize_given=False)
        return replace(params, transcribe=named), options


async def openai_transcription(
    gateway: Gateway, request_id: str, task: str, decode: Any, params: OpenAIParams,
    options: SubtitleOptions, progress: Any = None,
) -> Response:
    """One OpenAI-shaped answer, for the routes and the async job alike."""
    done = await transcribe(gateway, request_id, decode, params.transcribe, progress)
    rendered = render_openai(done.response, params.response_format, task=task,
                             granularities=params.granularities, temperature=params.temperature,
                             options=options)
    return answer(rendered, request_id)


async def _audio_api(gateway: Gateway, request: Request, task: str, form: TranslationForm) -> Response:
    request_id = request_id_of(request)
    params, options = form.parse(gateway, task)
    streams = isinstance(form, TranscriptionForm) and parse_stream(
        form.stream, params.response_format, STREAMABLE_FORMATS, openai=True)
    if form.file is None:
        raise MissingFile("send the recording as the multipart file field 'file'", param="file")
    if streams:
        audio = await decode_upload(form.file, gateway.settings)
        return openai_events(gateway, request_id, audio, params.transcribe,
                             lambda done: _final_events(done, params.response_format))
    return await openai_transcription(gateway, request_id, task, decode_upload(form.file, gateway.settings),
                                      params, options)


# Formats whose answer can be streamed: plain text, and diarized segments once they are known.
STREAMABLE_FORMATS = ("json", "text", "diarized_json")


def _final_events(done: Transcribed, response_format: str) -> list[dict[str, Any]]:
    """After the deltas: each diarized segment (diarized_json), then the full text and usage."""
    events: list[dict[str, Any]] = []
    if response_format == "diarized_json":
        events += [{"type": "transcript.text.segment", "id": s.id, "start": s.start, "end": s.end,
                    "text": s.text, "speaker": s.speaker} for s in openai_diarized(done.response).segments]
    text = openai_json(done.response)
    events.append({"type": "transcript.text.done", "text": text.text,
                   "usage": text.usage.model_dump(mode="json") if text.usage else None})
    return events


@router.post("/v1/audio/transcriptions", responses={**_FORMATS_DOC, **_ERRORS}, response_class=Response)
async def create_transcription(
    gateway: GatewayDep, request: Request, form: Annotated[TranscriptionForm, MULTIPART],
) -> Response:
    """Speech to text in the language spoken (OpenAI's `audio.transcriptions.create`).

    Speakers are diarized for `diarized_json` or when a speaker count is given; srt/vtt/text
    cues then carry `[SPEAKER_00]: `.
    """
    return await _audio_api(gateway, request, "transcribe", form)


@router.post("/v1/audio/translations", responses={**_FORMATS_DOC, **_ERRORS}, response_class=Response)
async def create_translation(
    gateway: GatewayDep, request: Request, form: Annotated[TranslationForm, MULTIPART],
) -> Response:
    """Speech in any language to English text (OpenAI's `audio.translations.create`)."""
    return await _audio_api(gateway, request, "translate", form)
