"""POST /detect-language: the language spoken in the first 30 s, and the likeliest alternatives."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, UploadFile
from pydantic import Field
from whisperx.utils import LANGUAGES

from ..audio import SAMPLE_RATE
from ..errors import EmptyUpload, MissingFile
from ..logs import bind_request_id
from ..pipeline import StageClock
from ..schema import DetectLanguageResponse
from ..uploads import decode_upload
from .envelope import GatewayDep, request_id_of
from .forms import MULTIPART, FormFields, upload_field

router = APIRouter(tags=["language"])


class DetectLanguageForm(FormFields):
    audio_file: UploadFile | None = upload_field()
    file: UploadFile | None = Field(None, description="Same as audio_file (OpenAI-style name).")
    top_k: int = Field(5, ge=1, le=20, description="How many alternatives to list.", examples=[5])


@router.post("/detect-language", response_model=DetectLanguageResponse, responses={
    400: {"description": "Missing or undecodable file (OpenAI's error envelope)."},
    413: {"description": "Upload or recording over the limits."}})
async def detect_language(
    gateway: GatewayDep, request: Request, form: Annotated[DetectLanguageForm, MULTIPART],
) -> DetectLanguageResponse:
    """The language spoken in the first 30 s, its probability, and the top alternatives."""
    request_id = request_id_of(request)
    with bind_request_id(request_id):
        upload = form.audio_file or form.file
        if upload is None:
            raise MissingFile("send the recording as the multipart file field 'audio_file'", param="audio_file")
        audio = await decode_upload(upload, gateway.settings)
        if audio.shape[0] == 0:
            raise EmptyUpload("the recording holds no audio samples", param="audio_file")
        found = await gateway.pipeline.detect_language(audio, form.top_k, StageClock())
        return DetectLanguageResponse(
            **found.model_dump(), language_name=LANGUAGES.get(found.language, found.language),
            analysed_seconds=round(min(audio.shape[0], 30 * SAMPLE_RATE) / SAMPLE_RATE, 3),
            duration=round(audio.shape[0] / SAMPLE_RATE, 3), model=gateway.settings.asr_model,
            request_id=request_id,
        )
