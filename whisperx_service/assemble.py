"""Turning runner outputs into WhisperX's result: sentence segments and word_segments.

Whisper-timed chunks are split into sentences the way WhisperX's aligner would.
"""

from __future__ import annotations

from .schema import AsrSegment, Segment, Word

_SENTENCE_END = (".", "?", "!", "。", "？", "！", "…")


def sentences_from_whisper_words(segment: AsrSegment) -> list[Segment]:
    """Split one ASR chunk (up to 30 s) into sentence segments using its timed words."""
    words = segment.words or []
    if not words:
        return [Segment(start=segment.start, end=segment.end, text=segment.text,
                        avg_logprob=segment.avg_logprob)]
    joiner = "" if _is_unspaced(segment.text) else " "
    out: list[Segment] = []
    current: list[Word] = []
    for word in words:
        current.append(word)
        if word.word.endswith(_SENTENCE_END):
            out.append(_segment_of(current, joiner, segment.avg_logprob))
            current = []
    if current:
        out.append(_segment_of(current, joiner, segment.avg_logprob))
    return out


def _is_unspaced(text: str) -> bool:
    """Chinese/Japanese text carries no spaces between words."""
    return " " not in text.strip() and any("\u3040" <= ch <= "\u9fff" for ch in text)


def _segment_of(words: list[Word], joiner: str, avg_logprob: float | None) -> Segment:
    starts = [w.start for w in words if w.start is not None]
    ends = [w.end for w in words if w.end is not None]
    return Segment(
        start=min(starts) if starts else 0.0,
        end=max(ends) if ends else 0.0,
        text=joiner.join(w.word for w in words),
        words=[w.model_copy() for w in words],
        avg_logprob=avg_logprob,
    )


def word_segments(segments: list[Segment]) -> list[Word]:
    return [w for s in segments for w in s.words]
