"""Speaker labels for segments and words from diarization turns, with numpy alone.

Gives the labels of whisperx 3.8.6's ``assign_word_speakers(turns, result, fill_nearest=True)``
without importing it: ``whisperx.diarize`` loads pandas, torch and pyannote, which the gateway must
not. The rules it follows, float for float and tie for tie, are those listed in `assign_speakers`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .schema import Segment, SpeakerTurn, Word

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]

NO_TURN = np.iinfo(np.intp).max
"""`Overlap.first_turn` where a speaker does not overlap the interval at all."""

# Bounds the (interval, turn) pairs materialised at once. Only a speaker whose own turns nest
# (one long turn over many short ones) makes the pairs outnumber the real overlaps.
_MAX_PAIRS = 1 << 20


@dataclass(frozen=True)
class Overlap:
    """How much each speaker's turns cover each of a batch of intervals."""

    speakers: list[str]
    """Column order of the arrays: labels in the order of their first turn by start time."""
    seconds: FloatArray
    """(intervals, speakers): sum of the positive intersections with the speaker's turns, added in
    turn order (by start time) so that the sums, and hence ties, are whisperx's to the last bit."""
    first_turn: IntArray
    """(intervals, speakers): position, in the turns sorted by start, of the speaker's first turn
    that intersects the interval; `NO_TURN` when none does."""


class TurnIndex:
    """Diarization turns arranged for batched overlap and nearest-midpoint queries.

    Intervals are answered in O(log turns) each plus the turns they actually meet, as long as a
    speaker's own turns do not overlap one another (diarizers emit them disjoint).
    """

    def __init__(self, turns: list[SpeakerTurn]) -> None:
        starts = np.array([t.start for t in turns], dtype=np.float64)
        ends = np.array([t.end for t in turns], dtype=np.float64)
        # whisperx sorts by start with Python's stable sort: equal starts keep the caller's order,
        # and that order is what breaks ties between speakers.
        order = np.argsort(starts, kind="stable")
        self.starts: FloatArray = starts[order]
        self.ends: FloatArray = ends[order]
        labels = [turns[i].speaker for i in order]
        self.speakers: list[str] = list(dict.fromkeys(labels))
        code = {s: k for k, s in enumerate(self.speakers)}
        codes = np.array([code[s] for s in labels], dtype=np.intp)
        self.turn_speaker: IntArray = codes
        self._by_speaker: list[tuple[IntArray, FloatArray, FloatArray, FloatArray]] = []
        for k in range(len(self.speakers)):
            rank = np.flatnonzero(codes == k)
            # The running maximum of ends is sorted, so one search skips every earlier turn that
            # ends before an interval starts, even when a speaker's turns overlap each other.
            reach = np.maximum.accumulate(self.ends[rank])
            self._by_speaker.append((rank, self.starts[rank], self.ends[rank], reach))
        mids = (self.starts + self.ends) / 2
        self._mid_order: IntArray = np.argsort(mids, kind="stable")
        self._sorted_mids: FloatArray = mids[self._mid_order]

    def __len__(self) -> int:
        return len(self.starts)

    def overlaps(self, starts: FloatArray, ends: FloatArray) -> Overlap:
        """Per-speaker intersection of each interval [starts[i], ends[i]] with the turns.

        Only strictly positive intersections count, as in whisperx: a turn that merely touches an
        interval, or any turn against a zero-length interval, adds nothing.
        """
        n = len(starts)
        seconds = np.zeros((n, len(self.speakers)), dtype=np.float64)
        first_turn = np.full((n, len(self.speakers)), NO_TURN, dtype=np.intp)
        for k, (rank, s_k, e_k, reach) in enumerate(self._by_speaker):
            lo = np.searchsorted(reach, starts, side="right")  # before lo: all end by the start
            hi = np.searchsorted(s_k, ends, side="left")  # from hi on: all start at or after the end
            counts = np.maximum(hi - lo, 0)
            for block in _blocks(counts):
                q, j = _pairs(lo[block], counts[block])
                q += block.start
                cut = np.minimum(e_k[j], ends[q]) - np.maximum(s_k[j], starts[q])
                hit = cut > 0
                q, j, cut = q[hit], j[hit], cut[hit]
                # Pairs run interval by interval, turns in start order within each: bincount adds
                # them in that order, the order of whisperx's per-speaker running sums.
                seconds[block, k] = np.bincount(q - block.start, weights=cut, minlength=block.stop - block.start)
                met, first = np.unique(q, return_index=True)
                first_turn[met, k] = rank[j[first]]
        return Overlap(self.speakers, seconds, first_turn)

    def nearest(self, times: FloatArray) -> IntArray:
        """Position (in start order) of the turn whose midpoint is nearest each time.

        whisperx takes ``argmin(abs(mids - time))`` over the turns in start order, so among equally
        near midpoints (the same distance after rounding) the earliest-starting turn wins. Turn
        times are taken to be finite.
        """
        m = self._sorted_mids
        if not len(m):
            return np.full(len(times), NO_TURN, dtype=np.intp)
        pos = np.searchsorted(m, times, side="left")
        left = np.abs(m[np.maximum(pos - 1, 0)] - times)
        right = np.abs(m[np.minimum(pos, len(m) - 1)] - times)
        # Rounding keeps |mid - time| monotone on each side of `time`, so the closest midpoint on
        # either side attains the minimum distance...
        best = np.minimum(np.where(pos > 0, left, np.inf), np.where(pos < len(m), right, np.inf))
        # ... and every midpoint at that same rounded distance lies within this slightly wider window.
        reach = best * (1 + 1e-9)
        lo = np.searchsorted(m, times - reach, side="left")
        hi = np.searchsorted(m, times + reach, side="right")
        q, j = _pairs(lo, hi - lo)
        tied = np.abs(m[j] - times[q]) == best[q]
        found = np.full(len(times), NO_TURN, dtype=np.intp)
        np.minimum.at(found, q[tied], self._mid_order[j[tied]])
        # Only a NaN or infinite time finds no tie here; argmin over such distances gives turn 0.
        found[found == NO_TURN] = 0
        return found


def assign_speakers(segments: list[Segment], turns: list[SpeakerTurn], *,
                    overlapping: bool = False) -> list[Segment]:
    """Label each segment and each timed word with a speaker, as whisperx's
    ``assign_word_speakers(..., fill_nearest=True)`` does; the inputs are left untouched.

    - No turns or no segments: `segments` itself comes back.
    - Each segment [start, end], and each word that has a start ([start, end], or [start, start]
      without an end), goes to the speaker whose turns intersect it for the most seconds in total,
      counting only positive intersections. Equal totals: the speaker whose first intersecting turn
      comes first by start time (turns with equal starts in the order given).
    - Nothing intersects it (zero-length intervals never intersect anything): the speaker of the turn
      whose midpoint is nearest the interval's midpoint; equally near: the earliest-starting turn.
      Such a label is only set when it is not the empty string.
    - Words without a start keep whatever speaker they had. A segment's label does not depend on its
      words' labels, nor the other way round.
    - `overlapping`: each timed word also lists in ``speakers`` every speaker whose turns intersect
      it (overlapped speech), most-covering first, so ``speakers[0]`` is its ``speaker``; a word
      no turn intersects lists the nearest speaker it was given alone.
    """
    if not segments or not turns:
        return segments
    index = TurnIndex(turns)
    timed = [w for s in segments for w in s.words if w.start is not None]
    starts = np.array([s.start for s in segments] + [w.start for w in timed], dtype=np.float64)
    ends = np.array([s.end for s in segments] + [w.end if w.end is not None else w.start for w in timed],
                    dtype=np.float64)
    found = index.overlaps(starts, ends)
    labels = _labels(index, found, starts, ends)
    # Only when asked: it walks every interval's speakers in Python.
    active = _active(found) if overlapping else [[] for _ in labels]

    word_labels = iter(zip(labels[len(segments):], active[len(segments):], strict=True))
    out: list[Segment] = []
    for i, segment in enumerate(segments):
        # Timed words were queued segment by segment in order, so they take their labels in turn.
        words = [_labelled(w, *next(word_labels), overlapping=overlapping) if w.start is not None
                 else w.model_copy() for w in segment.words]
        update: dict[str, object] = {"words": words}
        if labels[i] is not None:
            update["speaker"] = labels[i]
        out.append(segment.model_copy(update=update))
    return out


def speech_seconds(turns: list[SpeakerTurn]) -> float:
    """Seconds in which anyone speaks (overlapped turns counted once)."""
    total, reach = 0.0, -np.inf
    for turn in sorted(turns, key=lambda t: t.start):
        if turn.end > reach:
            total += turn.end - max(turn.start, reach)
            reach = turn.end
    return total


def _labels(index: TurnIndex, found: Overlap, starts: FloatArray, ends: FloatArray) -> list[str | None]:
    """The speaker for each interval; None where whisperx would leave the label as it was."""
    best = found.seconds.max(axis=1, keepdims=True)
    # Any positive intersection makes the best total positive; ties go to the earliest first turn.
    chosen = np.where(found.seconds == best, found.first_turn, NO_TURN).argmin(axis=1)
    met = best[:, 0] > 0
    out: list[str | None] = [found.speakers[k] if hit else None for k, hit in zip(chosen.tolist(), met.tolist(),
                                                                                  strict=True)]
    alone = np.flatnonzero(~met)
    if len(alone):
        # whisperx computes the midpoint with the same float operations: (start + end) / 2.
        turn = index.nearest((starts[alone] + ends[alone]) / 2)
        for i, t in zip(alone.tolist(), turn.tolist(), strict=True):
            label = index.speakers[index.turn_speaker[t]]
            out[i] = label or None  # whisperx skips a falsy label here (`if nearest_speaker:`)
    return out


def _active(found: Overlap) -> list[list[str]]:
    """Per interval, the speakers with a positive intersection: most seconds first, ties by the
    earlier first turn (the order that makes the first one the speaker `_labels` chooses)."""
    out: list[list[str]] = []
    for seconds, first in zip(found.seconds.tolist(), found.first_turn.tolist(), strict=True):
        met = sorted((k for k, s in enumerate(seconds) if s > 0), key=lambda k: (-seconds[k], first[k]))
        out.append([found.speakers[k] for k in met])
    return out


def _labelled(word: Word, speaker: str | None, active: list[str], *, overlapping: bool) -> Word:
    update: dict[str, object] = {}
    if speaker is not None:
        update["speaker"] = speaker
    if overlapping:
        update["speakers"] = active or ([speaker] if speaker is not None else [])
    return word.model_copy(update=update)


def _pairs(lo: IntArray, counts: IntArray) -> tuple[IntArray, IntArray]:
    """Every (i, lo[i] + c) for c < counts[i], i ascending then c ascending."""
    q = np.repeat(np.arange(len(counts), dtype=np.intp), counts)
    offsets = np.cumsum(counts) - counts
    j = np.arange(int(counts.sum()), dtype=np.intp) - np.repeat(offsets - lo, counts)
    return q, j


def _blocks(counts: IntArray) -> Iterator[slice]:
    """Consecutive runs of intervals with at most `_MAX_PAIRS` pairs each (or one interval)."""
    total = np.cumsum(counts)
    begin = 0
    while begin < len(counts):
        done = int(total[begin - 1]) if begin else 0
        stop = max(begin + 1, int(np.searchsorted(total, done + _MAX_PAIRS, side="right")))
        yield slice(begin, stop)
        begin = stop
