"""The result schema: pydantic models of WhisperX's JSON, plus what the runners hand each other.

The public response (`TranscriptionResponse`) is WhisperX's own result (``segments`` with ``words``,
``word_segments``, ``language``) with a few extra keys that say how it was made.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

import numpy as np
from bentoml.validators import TensorSchema
from pydantic import BaseModel, ConfigDict, Field


class Word(BaseModel):
    word: str
    start: float | None = Field(None, description="Seconds from the start of the audio.")
    end: float | None = None
    score: float | None = Field(None, description="Alignment confidence, 0..1.")
    speaker: str | None = None
    # Only when asked for (overlapping_speakers=true): WhisperX's word keeps its shape otherwise.
    speakers: list[str] | None = Field(
        None, exclude_if=lambda value: value is None,
        description="overlapping_speakers=true: every speaker talking during the word (overlapped "
        "speech), the one in `speaker` first.")


class Segment(BaseModel):
    start: float
    end: float
    text: str
    speaker: str | None = None
    words: list[Word] = Field(default_factory=list)
    avg_logprob: float | None = None
    language: str | None = Field(
        None, description="The segment's own language (language_mode=per_segment only).")


class WordTimestampMethod(StrEnum):
    wav2vec2 = "wav2vec2"  # forced alignment with a per-language wav2vec2 CTC model
    whisper = "whisper"  # Whisper's cross-attention timings (no aligner for the language)
    none = "none"  # no speech: nothing to time


def word_timing_method(language: str, aligned_languages: list[str] | tuple[str, ...]) -> WordTimestampMethod:
    """The one word-timing rule: wav2vec2 where an aligner holds the language, else Whisper's own."""
    return WordTimestampMethod.wav2vec2 if language in aligned_languages else WordTimestampMethod.whisper


class SpeakerCountError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class SpeakerCounts(BaseModel):
    """What the client knows of how many people speak: the one speaker-count rule.

    Each count is at least 1 (and at most a limit), min <= max, an exact count lies inside them;
    a diarizer given an exact count ignores the bounds."""

    model_config = ConfigDict(frozen=True)

    exact: int | None = None
    minimum: int | None = None
    maximum: int | None = None

    def check(self, limit: int | None = None) -> SpeakerCounts:
        """Self, or a `SpeakerCountError` naming the request field at fault."""
        for name, value in (("num_speakers", self.exact), ("min_speakers", self.minimum),
                            ("max_speakers", self.maximum)):
            if value is not None and value < 1:
                raise SpeakerCountError(f"{name} must be at least 1, got {value}", name)
            if value is not None and limit is not None and value > limit:
                raise SpeakerCountError(f"{name} must be at most {limit}, got {value}", name)
        low, high, exact = self.minimum, self.maximum, self.exact
        if low is not None and high is not None and low > high:
            raise SpeakerCountError(f"min_speakers ({low}) is greater than max_speakers ({high})",
                                    "min_speakers")
        if exact is not None and ((low is not None and exact < low) or (high is not None and exact > high)):
            raise SpeakerCountError("num_speakers lies outside min_speakers..max_speakers", "num_speakers")
        return self

    def bounds(self) -> tuple[int | None, int | None, int | None]:
        """(exact, minimum, maximum) as a diarizer takes them: an exact count replaces the bounds."""
        self.check()
        if self.exact is not None:
            return self.exact, None, None
        return None, self.minimum, self.maximum

    def unmet(self, found: int, speech_s: float) -> str | None:
        """What to tell the client when the diarizer found a count outside what it asked for (a
        clustering cannot make more speakers than the voices it can tell apart in `speech_s`
        seconds of speech); None when the count fits."""
        exact, low, high = self.bounds()
        asked = (f"num_speakers={exact}" if exact is not None
                 else f"min_speakers={low}" if low is not None and found < low
                 else f"max_speakers={high}" if high is not None and found > high else None)
        if asked is None or (exact is not None and found == exact):
            return None
        heard = f"{found} speaker{'s' if found != 1 else ''} found in {speech_s:.1f} s of speech"
        if exact is not None and found > exact or high is not None and found > high:
            return f"{asked} could not be met: {heard}"
        return f"{asked} could not be met: {heard}; too little speech or too few distinct voices to tell more apart"


UNKNOWN_SPEAKERS = SpeakerCounts()


class AlignmentInfo(BaseModel):
    method: WordTimestampMethod
    model: str | None = Field(None, description="Model-store tag of the alignment model used.")
    note: str | None = None


class SpeakerTurn(BaseModel):
    start: float
    end: float
    speaker: str


class SpeakerMatch(BaseModel):
    """A known speaker (`known_speaker_names[]`) and the diarized speaker it named, if any."""

    name: str
    speaker: str | None = Field(None, description="The diarized label it replaced; null: no speaker "
                                "matched the voice sample.")
    similarity: float | None = Field(None, description="Cosine similarity of the two voice prints.")


class DiarizationInfo(BaseModel):
    enabled: bool
    backend: str | None = None
    model: str | None = Field(None, description="Model-store tag of the pyannote pipeline used.")
    num_speakers: int = 0
    speaker_turns: list[SpeakerTurn] = Field(
        default_factory=list, description="Who spoke when (with known speakers' names where matched)."
    )
    known_speakers: list[SpeakerMatch] = Field(
        default_factory=list, description="Each known speaker sent, and the speaker its sample matched.")
    note: str | None = Field(None, description="Why the speakers found differ from num_speakers, "
                             "min_speakers or max_speakers, when they do.")


class LanguageProbability(BaseModel):
    language: str = Field(examples=["en"])
    probability: float = Field(examples=[0.97])


class LanguageDecision(BaseModel):
    """How the recording's language was decided."""

    language: str = Field(examples=["en"])
    probability: float | None = Field(None, description="Share of the weighted evidence for it, 0..1.")
    source: str = Field(description="given (the request named it), model (an English-only model) or "
                        "detected (voted over speech chunks of the whole recording).", examples=["detected"])
    mode: str = Field("recording", description="recording: one language for all; per_segment: each "
                      "chunk decoded and labelled in its own language (language_mode=per_segment).")
    chunks: int = Field(0, description="Windows of speech whose detection was counted (detection stops "
                        "once the windows left could not change the language).")
    speech_seconds: float = Field(0.0, description="Seconds of speech those chunks hold.")
    alternatives: list[LanguageProbability] = Field(default_factory=list,
                                                    description="The most likely languages, best first.")


class TranscriptWarning(BaseModel):
    """Something the transcript may miss, with where it is."""

    code: str = Field(examples=["speech_without_text"])
    start: float
    end: float
    message: str


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
    language_detection: LanguageDecision | None = Field(
        None, description="How the language was decided (given, English-only model, or detected).")
    warnings: list[TranscriptWarning] = Field(
        default_factory=list, description="Speech the transcript may miss (time ranges), if any.")


# --- what runners exchange ----------------------------------------------------------------------


class AsrSegment(BaseModel):
    start: float
    end: float
    text: str
    avg_logprob: float | None = None
    words: list[Word] | None = Field(
        None, description="Whisper's own word timings, when the caller asked for them."
    )
    language: str | None = Field(None, description="Its own language (language_mode=per_segment only).")


class TimeSpan(BaseModel):
    start: float
    end: float


class AsrPlan(BaseModel):
    """What the ASR runner's first step finds: speech chunks (<= 30 s), and what its model is."""

    chunks: list[TimeSpan]
    pieces: list[list[TimeSpan]] = Field(
        default_factory=list, description="Each chunk's voiced pieces (the VAD's segments merged into it).")
    multilingual: bool = Field(description="False for an English-only model (tiny.en...).")
    model: str


class ChunkJob(BaseModel):
    """One speech chunk to decode. Chunks of all in-flight requests are batched together."""

    audio: Annotated[np.ndarray, TensorSchema(format="numpy-array", dtype="int16")] = Field(
        description="16-kHz mono 16-bit PCM (float32 is taken too).")
    offset: float = Field(description="Where the chunk starts in its recording, seconds.")
    language: str | None = Field(
        description="None: detect it on this chunk's own encoder output (no extra encoder pass)."
    )
    task: str = "transcribe"
    initial_prompt: str | None = None
    aligned_languages: list[str] = Field(
        [], description="Languages the alignment runner times with wav2vec2. A chunk in any other "
        "language (given or detected) gets its words timed by Whisper's cross-attention.",
    )


class ChunkText(BaseModel):
    text: str
    avg_logprob: float | None = None
    words: list[Word] | None = None
    language: str | None = Field(None, description="The language the chunk was decoded in.")
    language_probability: float | None = Field(None, description="Set when it was detected here.")
    languages: list[LanguageProbability] = Field(
        default_factory=list, description="When detected here: the most likely languages, best first.")


class AsrResult(BaseModel):
    segments: list[AsrSegment]
    language: str
    language_probability: float | None = None
    model: str
    detection: LanguageDecision | None = None
    warnings: list[TranscriptWarning] = Field(default_factory=list)


class DiarizationResult(BaseModel):
    turns: list[SpeakerTurn]
    backend: str
    model: str | None = None
    num_speakers: int


class AlignJob(BaseModel):
    """One decoded chunk to force-align. Jobs of all in-flight requests are batched together."""

    audio: Annotated[np.ndarray, TensorSchema(format="numpy-array", dtype="int16")] = Field(
        description="16-kHz mono 16-bit PCM of the chunk alone (float32 is taken too).")
    segments: list[AsrSegment] = Field(description="Its text, times in seconds from the chunk's start.")
    language: str = Field(description="One the alignment runner holds a model for (its `languages`).")
    request_id: str | None = None


class AlignResult(BaseModel):
    segments: list[Segment]
    model: str


def segments_as_dicts(segments: list[Segment]) -> list[dict[str, Any]]:
    """WhisperX's functions take and return plain dicts; drop unset keys the way WhisperX does."""
    return [s.model_dump(exclude_none=True) for s in segments]


# --- OpenAI-compatible shapes (/v1/audio/*), language identification, async jobs ---------------


class UsageDuration(BaseModel):
    type: str = "duration"
    seconds: float


class OpenAITranscription(BaseModel):
    """response_format=json: OpenAI's `Transcription`."""

    text: str = Field(examples=["And so, my fellow Americans, ask not what your country can do for you."])
    usage: UsageDuration | None = None


class OpenAISegment(BaseModel):
    """One segment of verbose_json, OpenAI's `TranscriptionSegment` (plus the speaker when known)."""

    id: int
    seek: int = Field(description="Start of the segment in 10-ms frames.")
    start: float
    end: float
    text: str
    tokens: list[int] = Field(default_factory=list, description="Not kept by this service: always empty.")
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = Field(0.0, description="Not computed by whisperx's batched decoder: 0.")
    speaker: str | None = None


class OpenAIWord(BaseModel):
    word: str
    start: float
    end: float
    speaker: str | None = None
    speakers: list[str] | None = Field(None, description="overlapping_speakers=true: every speaker "
                                       "talking during the word, the one in `speaker` first.")


class OpenAIVerboseTranscription(BaseModel):
    """response_format=verbose_json: OpenAI's `TranscriptionVerbose`."""

    task: str = Field(examples=["transcribe"])
    language: str = Field(description="The language's English name, as OpenAI writes it.", examples=["english"])
    duration: float
    text: str
    segments: list[OpenAISegment] | None = None
    words: list[OpenAIWord] | None = None
    usage: UsageDuration | None = None


class OpenAIDiarizedSegment(BaseModel):
    id: str = Field(examples=["seg_0"])
    type: str = "transcript.text.segment"
    start: float
    end: float
    text: str
    speaker: str = Field(description="A, B, C... in order of first appearance.", examples=["A"])


class OpenAIDiarizedTranscription(BaseModel):
    """response_format=diarized_json: OpenAI's `TranscriptionDiarized`."""

    task: str = "transcribe"
    duration: float
    text: str
    segments: list[OpenAIDiarizedSegment]
    usage: UsageDuration | None = None


class ModelCard(BaseModel):
    id: str = Field(examples=["whisper-base"])
    object: str = "model"
    created: int = Field(description="Unix time the model was stored in the model store.")
    owned_by: str = "whisperx-service"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class LanguageDetection(BaseModel):
    """What the ASR runner hears in the first 30 s."""

    language: str = Field(examples=["en"])
    probability: float = Field(examples=[0.97])
    alternatives: list[LanguageProbability] = Field(
        default_factory=list, description="The most likely languages, best first (the top one included)."
    )


class DetectLanguageResponse(LanguageDetection):
    language_name: str = Field(examples=["english"])
    analysed_seconds: float = Field(description="How much audio was used (at most the first 30 s).")
    duration: float = Field(description="Length of the whole decoded recording, seconds.")
    model: str
    request_id: str | None = None


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"


class CallbackProgress(BaseModel):
    """Where a job's callback (callback_url) stands."""

    state: Literal["pending", "delivered", "failed"] = Field(
        description="pending (the job runs, or delivery is being tried), delivered (a 2xx), or failed "
        "(a 4xx, a redirect, refused by the allowlist, or retries exhausted).")
    attempts: int = Field(0, description="POSTs made so far.")
    status_code: int | None = Field(None, description="The receiver's last answer, if any.")


class JobProgress(BaseModel):
    """Where an async job stands (GET /jobs/{task_id}); enough for a progress bar."""

    task_id: str
    kind: str = Field(description="transcribe (seed shape) or transcription (OpenAI shape).")
    state: JobState
    stage: str = Field(description="queued, decode, waiting (for room in the audio budget), asr, align, "
                       "render, done or failed.",
                       examples=["asr"])
    audio_seconds: float | None = Field(None, description="Length of the recording once decoded.")
    transcribed_seconds: float = Field(0.0, description="Audio transcribed so far.")
    fraction: float = Field(0.0, ge=0.0, le=1.0, description="transcribed_seconds / audio_seconds.",
                            examples=[0.4])
    created_at: float = Field(description="Unix time.")
    updated_at: float
    error: dict[str, Any] | None = Field(None, description="OpenAI's error envelope when the job failed.")
    result_url: str = Field(description="Where the result is fetched once state is completed (or failed).")
    callback: CallbackProgress | None = Field(None, description="The job's callback, when it has one.")
