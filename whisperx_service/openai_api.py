"""OpenAI-compatible audio API (``/v1/audio/transcriptions``, ``/v1/audio/translations``,
``/v1/models``) and ``/detect-language``, as FastAPI routes of the gateway's app.

The routes reach the gateway instance (its runner proxies and `run_pipeline`) through
``Depends(bentoml.get_current_service)``. Errors are `ServiceError`s, which the app answers in
OpenAI's envelope; like OpenAI, an unknown model is 404 (`model_not_found`) and a bad field
value 400, while the speaker and language fields shared with /transcribe keep their 422.
"""

from __future__ import annotations

import datetime
import logging
from typing import Annotated, Any

import bentoml
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response
from whisperx.utils import LANGUAGES

from .audio import SAMPLE_RATE
from .config import get_settings
from .errors import EmptyUpload, MissingFile, ModelNotFound
from .logs import bind_request_id, new_request_id
from .params import parse_openai_params, parse_subtitle_options
from .schema import (
    DetectLanguageResponse,
    LanguageDetection,
    ModelCard,
    ModelList,
    OpenAIVerboseTranscription,
)
from .writers import render_openai

logger = logging.getLogger("whisperx_service.openai")
openai_router = APIRouter()
Gateway = Annotated[Any, Depends(bentoml.get_current_service)]
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


@openai_router.get("/v1/models", response_model=ModelList, tags=["OpenAI-compatible"])
async def list_models() -> ModelList:
    """The models this service holds: the ASR model in the store, and its alias whisper-1."""
    name = get_settings().asr_model
    created = _created(name)
    return ModelList(data=[ModelCard(id=model, created=created) for model in served_models()])


@openai_router.get("/v1/models/{model}", response_model=ModelCard, tags=["OpenAI-compatible"],
                   responses={404: _ERRORS[404]})
async def retrieve_model(model: str) -> ModelCard:
    if model not in served_models():
        raise ModelNotFound(f"The model `{model[:60]}` does not exist", param="model")
    return ModelCard(id=model, created=_created(get_settings().asr_model))


_File = Annotated[UploadFile | None, File(description="The recording (any format ffmpeg reads).")]


def _text(description: str, example: str) -> Any:
    return Form(description=description, examples=[example])


async def _audio_api(
    gateway: Any, request: Request, task: str, file: UploadFile | None, form: dict[str, str | None],
    granularities: list[str] | None,
) -> Response:
    from service import StageClock, decode_upload

    settings = get_settings()
    request_id = request.headers.get("x-request-id") or new_request_id()
    with bind_request_id(request_id):
        params = parse_openai_params(
            form, granularities or [], task=task, served_models=served_models(),
            max_speakers_limit=settings.max_speakers_limit, default_zh_script=settings.default_zh_script,
        )
        options = parse_subtitle_options(form, {})
        if file is None:
            raise MissingFile("send the recording as the multipart file field 'file'", param="file")
        clock = StageClock()
        audio = await decode_upload(file, clock)
        response = await gateway.run_pipeline(audio, params.transcribe, clock, request_id)
        rendered = render_openai(response, params.response_format, task=task,
                                 granularities=params.granularities, temperature=params.temperature,
                                 options=options)
        logger.info("%s: %.1f s as %s in %.2f s", task, response.duration, params.response_format, clock.now())
        return Response(rendered.body, media_type=rendered.media_type, headers={"x-request-id": request_id})


@openai_router.post("/v1/audio/transcriptions", tags=["OpenAI-compatible"],
                    responses={**_FORMATS_DOC, **_ERRORS}, response_class=Response)
async def create_transcription(
    gateway: Gateway,
    request: Request,
    file: _File = None,
    model: Annotated[str | None, _text("whisper-1 or the served model's name (GET /v1/models).", "whisper-1")] = None,
    language: Annotated[str | None, _text("ISO-639-1 code of the speech; detected when absent.", "en")] = None,
    prompt: Annotated[str | None, _text("Whisper's initial prompt: names, spelling, style.", "Kennedy, Americans")] = None,
    response_format: Annotated[str | None, _text(
        "json (default), text, srt, vtt, verbose_json, diarized_json, or tsv.", "verbose_json")] = None,
    temperature: Annotated[str | None, _text(
        "Accepted (0..1) and ignored: decoding uses Whisper's temperature fallback schedule.", "0")] = None,
    timestamp_granularities: Annotated[list[str] | None, Form(
        alias="timestamp_granularities[]", description="word and/or segment (verbose_json); default segment.",
        examples=[["word", "segment"]])] = None,
    min_speakers: Annotated[str | None, _text("Extra: fewest speakers (diarizes).", "2")] = None,
    max_speakers: Annotated[str | None, _text("Extra: most speakers (diarizes).", "4")] = None,
    num_speakers: Annotated[str | None, _text("Extra: exact number of speakers (diarizes).", "2")] = None,
    max_line_width: Annotated[str | None, _text("Extra: srt/vtt line width, characters.", "42")] = None,
    max_line_count: Annotated[str | None, _text("Extra: srt/vtt lines per cue (with max_line_width).", "2")] = None,
    highlight_words: Annotated[str | None, _text("Extra: srt/vtt underline each word as spoken.", "false")] = None,
) -> Response:
    """Speech to text in the language spoken (OpenAI's `audio.transcriptions.create`).

    Speakers are diarized for `diarized_json` or when a speaker count is given; srt/vtt/text
    cues then carry `[SPEAKER_00]: `.
    """
    form = {"model": model, "language": language, "prompt": prompt, "response_format": response_format,
            "temperature": temperature, "min_speakers": min_speakers, "max_speakers": max_speakers,
            "num_speakers": num_speakers, "max_line_width": max_line_width,
            "max_line_count": max_line_count, "highlight_words": highlight_words}
    return await _audio_api(gateway, request, "transcribe", file, form, timestamp_granularities)


@openai_router.post("/v1/audio/translations", tags=["OpenAI-compatible"],
                    responses={**_FORMATS_DOC, **_ERRORS}, response_class=Response)
async def create_translation(
    gateway: Gateway,
    request: Request,
    file: _File = None,
    model: Annotated[str | None, _text("whisper-1 or the served model's name.", "whisper-1")] = None,
    prompt: Annotated[str | None, _text("Whisper's initial prompt, in English.", "Meeting notes.")] = None,
    response_format: Annotated[str | None, _text(
        "json (default), text, srt, vtt, verbose_json, or tsv.", "json")] = None,
    temperature: Annotated[str | None, _text("Accepted (0..1) and ignored.", "0")] = None,
) -> Response:
    """Speech in any language to English text (OpenAI's `audio.translations.create`)."""
    form = {"model": model, "prompt": prompt, "response_format": response_format, "temperature": temperature}
    return await _audio_api(gateway, request, "translate", file, form, None)


@openai_router.post("/detect-language", response_model=DetectLanguageResponse, tags=["language"],
                    responses={400: _ERRORS[400], 413: _ERRORS[413]})
async def detect_language(
    gateway: Gateway,
    request: Request,
    audio_file: _File = None,
    file: Annotated[UploadFile | None, File(description="Same as audio_file (OpenAI-style name).")] = None,
    top_k: Annotated[int, Form(ge=1, le=20, description="How many alternatives to list.", examples=[5])] = 5,
) -> DetectLanguageResponse:
    """The language spoken in the first 30 s, its probability, and the top alternatives."""
    from service import StageClock, call_runner, decode_upload

    request_id = request.headers.get("x-request-id") or new_request_id()
    with bind_request_id(request_id):
        upload = audio_file or file
        if upload is None:
            raise MissingFile("send the recording as the multipart file field 'audio_file'", param="audio_file")
        clock = StageClock()
        audio = await decode_upload(upload, clock)
        duration = audio.shape[0] / SAMPLE_RATE
        if audio.shape[0] == 0:
            raise EmptyUpload("the recording holds no audio samples", param="audio_file")
        head = audio[:30 * SAMPLE_RATE]  # Whisper's one window
        raw = await clock.run("language", call_runner(
            lambda: gateway.asr.to_async.detect_language(audio=head, top_k=top_k)))
        found = LanguageDetection.model_validate(raw)
        return DetectLanguageResponse(
            **found.model_dump(), language_name=LANGUAGES.get(found.language, found.language),
            analysed_seconds=round(head.shape[0] / SAMPLE_RATE, 3), duration=round(duration, 3),
            model=get_settings().asr_model, request_id=request_id,
        )
