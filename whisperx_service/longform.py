"""Rules for long recordings, as pure functions the pipeline applies (no runners, no models).

- **The language of a recording** is voted over several speech chunks spread over it, each
  chunk's detected language distribution weighted by its voiced seconds, not read off the first
  chunk alone (a crosstalk opening detected as German must not make an English hour German).
- **Coverage**: a decoded chunk whose text is far too short for the speech it holds (units of
  text per voiced second against what the language normally has), or with a long voiced piece
  that no word of its Whisper timings touches, is suspected of a silent drop; the pipeline
  decodes it again in smaller windows, and reports what still has no text as a warning.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from .schema import LanguageDecision, LanguageProbability, TimeSpan, Word
from .text import is_unspaced_char, is_unspaced_language

# Normal speaking rates (conversational speech is 2-3.5 words/s in English, 3-5 characters/s in
# Mandarin); a chunk is suspect below a quarter of them.
WORDS_PER_S = 2.5
CHARS_PER_S = 4.0
SUSPECT_SHARE = 0.25
SUSPECT_MIN_VOICED_S = 3.0  # shorter chunks are left alone (a "yes" in 3 s of voice is normal)
UNCOVERED_PIECE_S = 2.0  # a voiced piece this long with no word on it is a suspected drop
REDECODE_WINDOW_S = 10.0  # the smaller windows a suspect chunk is decoded again in
DETECT_WINDOW_S = 10.0  # the windows of voiced speech whose languages vote a recording's


def spread_indices(count: int, probes: int) -> list[int]:
    """`probes` of `count` items spread evenly from the first to the last (all when fewer)."""
    if count <= probes:
        return list(range(count))
    if probes <= 1:
        return [0]
    return sorted({round(i * (count - 1) / (probes - 1)) for i in range(probes)})


def spread_order(count: int) -> list[int]:
    """0..count-1 in an order whose every prefix is spread over the range: the two ends first,
    then the middle of the widest gap left, again and again."""
    if count <= 2:
        return list(range(count))
    order, gaps = [0, count - 1], [(0, count - 1)]
    while gaps:
        gaps.sort(key=lambda gap: gap[0] - gap[1])  # widest first (stable: earliest of equals)
        low, high = gaps.pop(0)
        if high - low < 2:
            continue
        middle = (low + high) // 2
        order.append(middle)
        gaps += [(low, middle), (middle, high)]
    return order


def _language_mass(votes: Sequence[tuple[float, Sequence[LanguageProbability]]]) -> tuple[dict[str, float], float, int]:
    """Each language's weighted mass, the seconds counted and the windows counted."""
    mass: dict[str, float] = defaultdict(float)
    seconds = 0.0
    counted = 0
    for weight, ranked in votes:
        if not ranked or weight <= 0:
            continue
        counted += 1
        seconds += weight
        for entry in ranked:
            mass[entry.language] += weight * entry.probability
    return mass, seconds, counted


def _vote_margin(votes: Sequence[tuple[float, Sequence[LanguageProbability]]]) -> float:
    """How far the leading language's weighted mass is ahead of the runner-up's (0: no votes)."""
    ranked_mass = sorted(_language_mass(votes)[0].values(), reverse=True) + [0.0, 0.0]
    return ranked_mass[0] - ranked_mass[1]


def probes_still_needed(votes: Sequence[tuple[float, Sequence[LanguageProbability]]],
                        pending_seconds: Sequence[float]) -> int:
    """How many of the pending windows (their seconds, in probing order) to detect next: 0 when
    they can no longer change `vote_language`'s winner, else the fewest that could settle it.

    Settled: the leader is ahead of the runner-up by more than all pending windows could give
    the runner-up, so the vote over every window would name the same language. Else the next
    windows are the fewest that would settle it if they all went to the leader."""
    margin, pending = _vote_margin(votes), sum(pending_seconds)
    if margin > pending:
        return 0
    taken = 0.0
    for count, seconds in enumerate(pending_seconds, start=1):
        taken += seconds
        if margin + taken > pending - taken:
            return count
    return len(pending_seconds)


def vote_language(votes: Sequence[tuple[float, Sequence[LanguageProbability]]]) -> LanguageDecision | None:
    """The recording's language from (voiced seconds, ranked languages) of each probed chunk."""
    mass, seconds, counted = _language_mass(votes)
    if not mass:
        return None
    ranked_all = sorted(mass.items(), key=lambda kv: -kv[1])
    best, best_mass = ranked_all[0]
    return LanguageDecision(
        language=best, probability=round(best_mass / seconds, 4), source="detected", chunks=counted,
        speech_seconds=round(seconds, 3),
        alternatives=[LanguageProbability(language=lang, probability=round(m / seconds, 4))
                      for lang, m in ranked_all[:5]],
    )


def voiced_seconds(pieces: Sequence[TimeSpan]) -> float:
    return sum(max(0.0, p.end - p.start) for p in pieces)


def text_units(text: str, language: str | None) -> int:
    """Characters of unspaced scripts plus words of spaced ones (punctuation not counted)."""
    unspaced = sum(1 for ch in text if is_unspaced_char(ch) and ch.isalnum())
    spaced = sum(1 for token in text.split() if any(ch.isalnum() and not is_unspaced_char(ch) for ch in token))
    return unspaced + spaced if is_unspaced_language(language) else spaced + (unspaced + 1) // 2


def expected_units(voiced_s: float, language: str | None) -> float:
    return voiced_s * (CHARS_PER_S if is_unspaced_language(language) else WORDS_PER_S)


def uncovered_pieces(pieces: Sequence[TimeSpan], words: Sequence[Word] | None,
                     min_length: float = UNCOVERED_PIECE_S) -> list[TimeSpan]:
    """Voiced pieces at least `min_length` long that no timed word touches."""
    if words is None:
        return []
    timed = [(w.start, w.end) for w in words if w.start is not None and w.end is not None]
    return [p for p in pieces if p.end - p.start >= min_length
            and not any(s < p.end and e > p.start for s, e in timed)]


def is_suspect(text: str, language: str | None, pieces: Sequence[TimeSpan], words: Sequence[Word] | None) -> bool:
    """Whether a decoded chunk probably lost speech: too little text for its voice, or a long
    voiced piece with no word on it."""
    voiced = voiced_seconds(pieces)
    if voiced >= SUSPECT_MIN_VOICED_S and text_units(text, language) < SUSPECT_SHARE * expected_units(voiced, language):
        return True
    return bool(uncovered_pieces(pieces, words))


def windows(pieces: Sequence[TimeSpan], span: TimeSpan, length: float = REDECODE_WINDOW_S,
            halve: bool = True) -> list[TimeSpan]:
    """The chunk cut into windows along its voiced pieces, each at most `length` seconds and,
    with `halve`, at most half the chunk (so that a window is always smaller than what was
    decoded): consecutive pieces grouped while they fit, a longer piece cut into equal parts."""
    if halve:
        length = max(0.5, min(length, (span.end - span.start) / 2))
    out: list[TimeSpan] = []
    for piece in pieces or [span]:
        parts = max(1, -int(-(piece.end - piece.start) // length))
        step = (piece.end - piece.start) / parts
        for i in range(parts):
            start, end = piece.start + i * step, piece.start + (i + 1) * step
            if out and end - out[-1].start <= length:
                out[-1] = TimeSpan(start=out[-1].start, end=round(end, 3))
            else:
                out.append(TimeSpan(start=round(start, 3), end=round(end, 3)))
    return out
