"""Form fields that more than one API family takes. Every field is a raw string: the parsers
of `whisperx_service.params` turn each bad value into one error naming it."""

from __future__ import annotations

from typing import Any

from fastapi import Form
from pydantic import BaseModel, ConfigDict, Field

from ..params import SpeakerReference, parse_speaker_ids, parse_speaker_references

# A route's one form model, file included, read as multipart (FastAPI documents every field only
# when the whole form is one model).
MULTIPART = Form(media_type="multipart/form-data")
UPLOAD_DESCRIPTION = "The recording (any common audio or video container: WAV, FLAC, MP3, Ogg, M4A, WebM...)."


def form_field(description: str, example: str) -> Any:
    return Field(None, description=description, examples=[example])


class FormFields(BaseModel):
    model_config = ConfigDict(extra="ignore")


def upload_field() -> Any:
    return Field(None, description=UPLOAD_DESCRIPTION)


class SpeakerFields(FormFields):
    min_speakers: str | None = form_field("Fewest speakers to find (diarizes).", "2")
    max_speakers: str | None = form_field("Most speakers to find (diarizes).", "4")
    num_speakers: str | None = form_field("Exact number of speakers (diarizes).", "2")
    known_speaker_names: list[str] | None = Field(
        None, alias="known_speaker_names[]", examples=[["Alice", "Bob"]],
        description="Names of up to 4 people who may speak (diarizes); each needs a voice sample "
                    "in known_speaker_references[], in the same order.")
    known_speaker_references: list[str] | None = Field(
        None, alias="known_speaker_references[]", examples=[["data:audio/wav;base64,UklGR..."]],
        description="2-10 s of each named person's voice, as a data URL of audio. A diarized "
                    "speaker whose voice matches a sample is labelled with that name.")

    known_speaker_ids: list[str] | None = Field(
        None, alias="known_speaker_ids[]", examples=[["spk_0f3c2a9b8d7e4f6a1b2c3d4e5f6a7b8c"]],
        description="Ids of stored voices (POST /v1/speakers) who may speak (diarizes); with the "
                    "samples above, at most 4 known speakers.")

    def speaker_references(self) -> tuple[SpeakerReference, ...]:
        return parse_speaker_references(self.known_speaker_names, self.known_speaker_references)

    def speaker_ids(self) -> tuple[str, ...]:
        return parse_speaker_ids(self.known_speaker_ids)


class SubtitleFields(FormFields):
    max_line_width: str | None = form_field("srt/vtt: characters per line.", "42")
    max_line_count: str | None = form_field("srt/vtt: lines per cue (needs max_line_width).", "2")
    highlight_words: str | None = form_field("srt/vtt: underline each word as it is spoken.", "false")
