"""Output writers shared by /transcribe and the OpenAI-compatible /v1/audio/* endpoints.

Text, SRT, VTT and TSV come from whisperx's own writers (`whisperx.utils.WriteTXT`, `WriteSRT`,
`WriteVTT`, `WriteTSV`: speaker prefixes ``[SPEAKER_00]: ``, max line width/count, highlighted
words); the JSON shapes are the pydantic models of `schema.py`. Each function takes the one
`TranscriptionResponse` the pipeline produced.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from whisperx.utils import (
    LANGUAGES,
    ResultWriter,
    SubtitlesWriter,
    WriteSRT,
    WriteTSV,
    WriteTXT,
    WriteVTT,
    compression_ratio,
)

from .params import SubtitleOptions
from .schema import (
    OpenAIDiarizedSegment,
    OpenAIDiarizedTranscription,
    OpenAISegment,
    OpenAITranscription,
    OpenAIVerboseTranscription,
    OpenAIWord,
    TranscriptionResponse,
    UsageDuration,
    segments_as_dicts,
)
from .text import join_words, spaced_words, tidy_text, unspace_markup

# whisperx's subtitle writers join a cue's words with "" for these languages and " " otherwise;
# every word is handed over already carrying the space `text.join_words` gives it, so a cue is
# always built as plain concatenation (the first word of a line is stripped by whisperx).
_CONCATENATED = "zh"
_SPACED = "en"

MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "diarized_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
}


def speaker_runs(segments: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive segments of one speaker."""
    runs: list[list[dict[str, Any]]] = []
    for segment in segments:
        if runs and runs[-1][-1].get("speaker") == segment.get("speaker"):
            runs[-1].append(segment)
        else:
            runs.append([segment])
    return runs


class _BySpeaker(SubtitlesWriter):
    """whisperx's cue building run per speaker turn.

    With max_line_width and max_line_count whisperx packs words across segments and labels a
    cue with its first word's speaker; per turn, a cue never mixes two speakers.
    """

    def iterate_result(self, result: dict[str, Any], options: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
        for run in speaker_runs(result["segments"]):
            words = [w for segment in run for w in segment.get("words", [])]
            if all(w["word"].startswith(" ") for w in words[1:]):
                # Spaced text: stripped words joined with " " (whisperx's own widths and cues).
                run = [{**segment, "words": [{**w, "word": w["word"].strip()} for w in segment["words"]]}
                       if "words" in segment else segment for segment in run]
                yield from super().iterate_result({**result, "segments": run, "language": _SPACED}, options)
                continue
            # Some words join without a space: concatenated, each carrying its own space.
            for start, end, text in super().iterate_result({**result, "segments": run}, options):
                yield start, end, unspace_markup(text)


class _SRT(_BySpeaker, WriteSRT):
    pass


class _VTT(_BySpeaker, WriteVTT):
    pass


_WRITERS: dict[str, type[ResultWriter]] = {"text": WriteTXT, "srt": _SRT, "vtt": _VTT, "tsv": WriteTSV}


@dataclass(frozen=True)
class Rendered:
    body: str
    media_type: str


def whisperx_result(response: TranscriptionResponse) -> dict[str, Any]:
    """The dict whisperx's writers read: segments (words with times, speakers), language.

    whisperx cues on words when the first segment has a ``words`` key; a segment without timed
    words would lose its text there, so then every segment is written whole instead. Text and
    words are spaced by the one joining rule (`text.py`), the segment's own language first.
    """
    segments = segments_as_dicts(response.segments)
    previous = ""  # a cue may run on from one segment into the next
    for segment in segments:
        language = segment.get("language") or response.language
        segment["text"] = tidy_text(segment["text"], language)
        timed = [w for w in segment.get("words", []) if "start" in w and "end" in w]
        for word, spaced in zip(timed, spaced_words([w["word"] for w in timed], language, previous,
                                                    segment["text"]), strict=True):
            word["word"] = spaced
            previous = spaced.strip() or previous
        segment["words"] = timed
    if not all(segment["words"] for segment in segments):
        for segment in segments:
            segment.pop("words", None)
    return {"segments": segments, "language": _CONCATENATED}


def write_with_whisperx(response: TranscriptionResponse, fmt: str, options: SubtitleOptions) -> str:
    """text, srt, vtt or tsv through whisperx's writer of that format."""
    writer = _WRITERS[fmt](output_dir=".")  # output_dir unused: we write to a buffer
    buffer = io.StringIO()
    writer.write_result(whisperx_result(response), file=buffer, options=options.as_whisperx())
    return buffer.getvalue()


def full_text(response: TranscriptionResponse) -> str:
    """The whole transcript: segment texts joined by the language rule (`text.join_words`)."""
    return join_words((tidy_text(s.text, s.language or response.language) for s in response.segments),
                      response.language)


def render_transcribe(response: TranscriptionResponse, fmt: str, options: SubtitleOptions) -> Rendered:
    """/transcribe's output_format: WhisperX's JSON (the response model), or a whisperx writer's text."""
    if fmt == "json":
        return Rendered(response.model_dump_json(), MEDIA_TYPES["json"])
    return Rendered(write_with_whisperx(response, fmt, options), MEDIA_TYPES[fmt])


def _usage(response: TranscriptionResponse) -> UsageDuration:
    return UsageDuration(seconds=response.duration)


def openai_json(response: TranscriptionResponse) -> OpenAITranscription:
    return OpenAITranscription(text=full_text(response), usage=_usage(response))


def openai_verbose(
    response: TranscriptionResponse, *, task: str, granularities: frozenset[str], temperature: float
) -> OpenAIVerboseTranscription:
    segments = None
    if "segment" in granularities:
        segments = [
            OpenAISegment(
                id=i, seek=int(round(s.start * 100)), start=s.start, end=s.end, text=s.text,
                temperature=temperature, avg_logprob=s.avg_logprob or 0.0,
                compression_ratio=round(compression_ratio(s.text), 3) if s.text else 0.0,
                speaker=s.speaker,
            )
            for i, s in enumerate(response.segments)
        ]
    words = None
    if "word" in granularities:
        words = [
            OpenAIWord(word=w.word, start=w.start, end=w.end, speaker=w.speaker, speakers=w.speakers)
            for w in response.word_segments
            if w.start is not None and w.end is not None
        ]
    return OpenAIVerboseTranscription(
        task="translate" if task == "translate" else "transcribe",
        language=LANGUAGES.get(response.language, response.language), duration=response.duration,
        text=full_text(response), segments=segments, words=words, usage=_usage(response),
    )


def speaker_letters(speakers: list[str]) -> dict[str, str]:
    """OpenAI labels speakers A, B, C... in order of first appearance (then AA, AB...)."""
    letters: dict[str, str] = {}
    for speaker in speakers:
        if speaker not in letters:
            n, label = len(letters), ""
            while True:
                label = chr(ord("A") + n % 26) + label
                n = n // 26 - 1
                if n < 0:
                    break
            letters[speaker] = label
    return letters


def openai_diarized(response: TranscriptionResponse) -> OpenAIDiarizedTranscription:
    """Known speakers by their names, the others A, B, C... as OpenAI labels them."""
    named = {m.name for m in response.diarization.known_speakers if m.speaker is not None}
    labels = speaker_letters([s.speaker for s in response.segments if s.speaker and s.speaker not in named])
    labels.update((name, name) for name in named)
    return OpenAIDiarizedTranscription(
        duration=response.duration, text=full_text(response), usage=_usage(response),
        segments=[
            OpenAIDiarizedSegment(id=f"seg_{i}", start=s.start, end=s.end, text=s.text,
                                  speaker=labels.get(s.speaker or "", "unknown"))
            for i, s in enumerate(response.segments)
        ],
    )


def render_openai(
    response: TranscriptionResponse, fmt: str, *, task: str, granularities: frozenset[str],
    temperature: float, options: SubtitleOptions | None = None,
) -> Rendered:
    """One of OpenAI's response formats (plus tsv)."""
    if fmt == "json":
        body = openai_json(response).model_dump_json(exclude_none=True)
    elif fmt == "verbose_json":
        body = openai_verbose(
            response, task=task, granularities=granularities, temperature=temperature
        ).model_dump_json(exclude_none=True)
    elif fmt == "diarized_json":
        body = openai_diarized(response).model_dump_json(exclude_none=True)
    elif fmt == "text":
        body = full_text(response) + "\n"  # OpenAI's text is the bare transcript
    else:
        body = write_with_whisperx(response, fmt, options or SubtitleOptions())
    return Rendered(body, MEDIA_TYPES[fmt])
