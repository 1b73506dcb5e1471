"""POST /transcribe: the seed's request shape (form fields, or query parameters as fallback)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ..errors import MissingFile
from ..params import (
    SubtitleOptions,
    TranscribeParams,
    parse_output_format,
    parse_subtitle_options,
    parse_transcribe_params,
)
from ..schema import TranscriptionResponse
from ..uploads import decode_upload
from ..writers import MEDIA_TYPES, render_transcribe
from .envelope import Gateway, GatewayDep, answer, request_id_of, transcribe

router = APIRouter()


def _field(description: str, example: str) -> Any:
    return Field(None, description=description, examples=[example])


class TranscribeForm(BaseModel):
    """The fields of /transcribe and of its async job; raw strings, parsed into one 422 each."""

    model_config = ConfigDict(extra="ignore")

    min_speakers: str | None = _field("Fewest speakers to find.", "2")
    max_speakers: str | None = _field("Most speakers to find.", "4")
    num_speakers: str | None = _field("Exact number of speakers.", "2")
    language: str | None = _field("Language code or name (en, zh...); detected when absent.", "en")
    diarize: str | None = _field("false skips speaker diarization.", "true")
    zh_script: str | None = _field("simplified, traditional or original.", "simplified")
    task: str | None = _field("transcribe (default) or translate.", "transcribe")
    output_format: str | None = _field("json (default), text, srt, vtt or tsv; text/srt/vtt name speakers.",
                                       "srt")
    max_line_width: str | None = _field("srt/vtt: characters per line.", "42")
    max_line_count: str | None = _field("srt/vtt: lines per cue (needs max_line_width).", "2")
    highlight_words: str | None = _field("srt/vtt: underline each word as it is spoken.", "false")

    def parse(self, gateway: Gateway, query: Mapping[str, str]) -> tuple[TranscribeParams, str, SubtitleOptions]:
        """The pipeline's parameters and the output options (form first, then the query string)."""
        fields = self.model_dump()
        settings = gateway.settings
        params = parse_transcribe_params(fields, query, max_speakers_limit=settings.max_speakers_limit,
                                         default_zh_script=settings.default_zh_script)
        return params, parse_output_format(fields, query), parse_subtitle_options(fields, query)


@router.post("/transcribe", response_model=TranscriptionResponse, responses={200: {"content": {
    MEDIA_TYPES[f].split(";")[0]: {} for f in ("text", "srt", "vtt", "tsv")}}})
async def transcribe_route(
    gateway: GatewayDep,
    request: Request,
    form: Annotated[TranscribeForm, Form()],
    audio_file: Annotated[UploadFile | None, File(description="The recording (any format ffmpeg reads).")] = None,
) -> Response:
    """Transcript, word timestamps and speakers of one recording (WhisperX's JSON, or text/srt/vtt/tsv)."""
    request_id = request_id_of(request)
    params, fmt, options = form.parse(gateway, request.query_params)
    if audio_file is None:
        raise MissingFile("send the recording as the multipart file field 'audio_file'", param="audio_file")
    done = await transcribe(gateway, request_id, decode_upload(audio_file, gateway.settings), params)
    return answer(render_transcribe(done.response, fmt, options), request_id)
