"""The result schema: pydantic models of WhisperX's JSON, plus what the runners hand each other.

The public response (`TranscriptionResponse`) is WhisperX's own result (``segments`` with ``words``,
``word_segments``, ``language``) with a few extra keys that say how it was made.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class Word(BaseModel):
    word: str
    start: float | None = Field(None, description="Seconds from the start of the audio.")
    end: float | None = None
    score: float | None = Field(None, description="Alignment confidence, 0..1.")
    speaker: str | None = None


class Segment(BaseModel):
    start: float
    end: float
    text: str
    speaker: str | None = None
    words: list[Word] = Field(default_factory=list)
    avg_logprob: float | None = None


class WordTimestampMethod(StrEnum):
    wav2vec2 = "wav2vec2"  # forced alignment with a per-language wav2vec2 CTC model
    whisper = "whisper"  # Whisper's cross-attention timings (no aligner for the language)
    none = "none"  # no speech: nothing to time


class AlignmentInfo(BaseModel):
    method: WordTimestampMethod
    model: str | None = Field(None, description="Model-store tag of the alignment model used.")
    note: str | None = None


class SpeakerTurn(BaseModel):
    start: float
    end: float
    speaker: str


class DiarizationInfo(BaseModel):
    enabled: bool
    backend: str | None = None
    num_speakers: int = 0
    speaker_turns: list[SpeakerTurn] = Field(
        default_factory=list, description="Who spoke when, as the diarization runner found it."
    )


class StageTiming(BaseModel):
    start: float = Field(description="Seconds since the request was received.")
    end: float


class TranscriptionResponse(BaseModel):
    """WhisperX's JSON result, plus how it was produced."""

    segments: list[Segment]
    word_segments: list[Word]
    language: str
    language_probability: float | None = None
    duration: float = Field(description="Length of the decoded audio, seconds.")
    alignment: AlignmentInfo
    diarization: DiarizationInfo
    timings: dict[str, StageTiming] = Field(
        default_factory=dict, description="When each stage ran, relative to the request's arrival."
    )
    request_id: str | None = None


# --- what runners exchange ----------------------------------------------------------------------


class AsrSegment(BaseModel):
    start: float
    end: float
    text: str
    avg_logprob: float | None = None
    words: list[Word] | None = Field(
        None, description="Whisper's own word timings, when the caller asked for them."
    )


class AsrResult(BaseModel):
    segments: list[AsrSegment]
    language: str
    language_probability: float | None = None
    model: str


class DiarizationResult(BaseModel):
    turns: list[SpeakerTurn]
    backend: str
    num_speakers: int


class AlignResult(BaseModel):
    segments: list[Segment]
    model: str


def segments_as_dicts(segments: list[Segment]) -> list[dict[str, Any]]:
    """WhisperX's functions take and return plain dicts; drop unset keys the way WhisperX does."""
    return [s.model_dump(exclude_none=True) for s in segments]
