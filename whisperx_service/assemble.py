"""Turning runner outputs into WhisperX's result: sentence segments and word_segments.

Whisper-timed chunks are split into sentences the way WhisperX's aligner would.
"""

from __future__ import annotations

from .schema import AsrSegment, Segment, Word
from .text import join_words, source_spacing

_SENTENCE_END = (".", "?", "!", "。", "？", "！", "…")


def sentences_from_whisper_words(segment: AsrSegment, language: str | None = None) -> list[Segment]:
    """Split one ASR chunk (up to 30 s) into sentence segments using its timed words, their text
    joined by the language's rule (`text.join_words`); a chunk's own language, when it has one
    (language_mode=per_segment), wins over the recording's."""
    language = segment.language or language
    words = segment.words or []
    if not words:
        return [Segment(start=segment.start, end=segment.end, text=segment.text,
                        avg_logprob=segment.avg_logprob, language=segment.language)]
    # Whisper's text keeps the spaces its tokens carried ("I'm", not "I 'm"): read them there.
    spacing = source_spacing([w.word for w in words], segment.text)
    out: list[Segment] = []
    current: list[Word] = []
    first = 0
    for i, word in enumerate(words):
        current.append(word)
        if word.word.endswith(_SENTENCE_END):
            out.append(_segment_of(current, spacing[first:i + 1], language, segment))
            current, first = [], i + 1
    if current:
        out.append(_segment_of(current, spacing[first:], language, segment))
    return out


def _segment_of(words: list[Word], spacing: list[bool | None], language: str | None, chunk: AsrSegment) -> Segment:
    starts = [w.start for w in words if w.start is not None]
    ends = [w.end for w in words if w.end is not None]
    return Segment(
        start=min(starts) if starts else 0.0,
        end=max(ends) if ends else 0.0,
        text=join_words((w.word for w in words), language, spacing=spacing),
        words=[w.model_copy() for w in words],
        avg_logprob=chunk.avg_logprob,
        language=chunk.language,
    )


def word_segments(segments: list[Segment]) -> list[Word]:
    return [w for s in segments for w in s.words]
