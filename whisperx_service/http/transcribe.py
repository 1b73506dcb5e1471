"""POST /transcribe: the seed's request shape (form fields, or query parameters as fallback)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import APIRouter, Request, UploadFile
from starlette.responses import Response

from ..errors import MissingFile
from ..params import (
    SubtitleOptions,
    TranscribeParams,
    parse_output_format,
    parse_stream,
    parse_subtitle_options,
    parse_transcribe_params,
    with_speaker_references,
)
from ..schema import TranscriptionResponse
from ..uploads import decode_upload
from ..writers import MEDIA_TYPES, render_transcribe
from .envelope import Gateway, GatewayDep, answer, request_id_of, transcribe
from .forms import MULTIPART, SpeakerFields, SubtitleFields, form_field, upload_field
from .streaming import ndjson_events

router = APIRouter()


class TranscribeForm(SpeakerFields, SubtitleFields):
    """The fields of /transcribe and of its async job; raw strings, parsed into one 422 each."""

    audio_file: UploadFile | None = upload_field()
    language: str | None = form_field("Language code or name (en, zh...); detected when absent.", "en")
    language_mode: str | None = form_field(
        "recording (default): one language, decided over the recording; per_segment: each speech "
        "chunk detected and labelled on its own (code-switching). A given language wins.", "recording")
    diarize: str | None = form_field("false skips speaker diarization.", "true")
    zh_script: str | None = form_field("simplified, traditional or original.", "simplified")
    task: str | None = form_field("transcribe (default) or translate.", "transcribe")
    stream: str | None = form_field("true: newline-delimited JSON, a `segment` line as each part is "
                                    "decoded, then the `result` line (output_format json only).", "false")
    output_format: str | None = form_field("json (default), text, srt, vtt or tsv; text/srt/vtt name speakers.",
                                       "srt")

    def parse(self, gateway: Gateway, query: Mapping[str, str]) -> tuple[TranscribeParams, str, SubtitleOptions]:
        """The pipeline's parameters and the output options (form first, then the query string)."""
        fields = self.model_dump(exclude={"audio_file", "known_speaker_names", "known_speaker_references",
                                          "known_speaker_ids"})
        settings = gateway.settings
        params = parse_transcribe_params(fields, query, max_speakers_limit=settings.max_speakers_limit,
                                         default_zh_script=settings.default_zh_script)
        params = with_speaker_references(params, self.speaker_references(), speaker_ids=self.speaker_ids(),
                                         diarize_given=bool(fields.get("diarize") or query.get("diarize")))
        return params, parse_output_format(fields, query), parse_subtitle_options(fields, query)


@router.post("/transcribe", response_model=TranscriptionResponse, responses={200: {"content": {
    MEDIA_TYPES[f].split(";")[0]: {} for f in ("text", "srt", "vtt", "tsv")}}})
async def transcribe_route(
    gateway: GatewayDep,
    request: Request,
    form: Annotated[TranscribeForm, MULTIPART],
) -> Response:
    """Transcript, word timestamps and speakers of one recording (WhisperX's JSON, or text/srt/vtt/tsv)."""
    request_id = request_id_of(request)
    params, fmt, options = form.parse(gateway, request.query_params)
    if form.audio_file is None:
        raise MissingFile("send the recording as the multipart file field 'audio_file'", param="audio_file")
    if parse_stream(form.stream, fmt, ("json",), openai=False):
        return ndjson_events(gateway, request_id, await decode_upload(form.audio_file, gateway.settings), params)
    done = await transcribe(gateway, request_id, decode_upload(form.audio_file, gateway.settings), params)
    return answer(render_transcribe(done.response, fmt, options), request_id)
