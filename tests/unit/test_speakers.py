"""whisperx_service.speakers against the whisperx function it replaces, label for label.

whisperx is imported here only, as the reference: the module under test must not need it.
"""

from __future__ import annotations

import random
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
from whisperx.diarize import assign_word_speakers

from whisperx_service import speakers
from whisperx_service.schema import Segment, SpeakerTurn, Word, segments_as_dicts
from whisperx_service.speakers import TurnIndex, assign_speakers


def _whisperx(segments: list[Segment], turns: list[SpeakerTurn]) -> list[Segment]:
    frame = pd.DataFrame([t.model_dump() for t in turns], columns=["start", "end", "speaker"])
    result: dict[str, Any] = {"segments": segments_as_dicts(segments)}
    return [Segment.model_validate(s) for s in assign_word_speakers(frame, result, fill_nearest=True)["segments"]]


def _labels(segments: list[Segment]) -> list[tuple[str | None, list[str | None]]]:
    return [(s.speaker, [w.speaker for w in s.words]) for s in segments]


def _assert_agrees(segments: list[Segment], turns: list[SpeakerTurn]) -> list[Segment]:
    before = [s.model_copy(deep=True) for s in segments]
    ours = assign_speakers(segments, turns)
    assert _labels(ours) == _labels(_whisperx(segments, turns))
    assert segments == before  # the caller's segments are not relabelled in place
    assert [(s.start, s.end, s.text, [(w.word, w.start, w.end) for w in s.words]) for s in ours] == [
        (s.start, s.end, s.text, [(w.word, w.start, w.end) for w in s.words]) for s in segments]
    return ours


def _time(rng: random.Random) -> float:
    # Mostly on a coarse grid, so that equal starts, equal totals and equally near midpoints
    # (whisperx's tie-breaking) come up all the time; sometimes any float.
    return rng.randrange(0, 41) * 0.25 if rng.random() < 0.8 else rng.uniform(0.0, 10.0)


def _random_turns(rng: random.Random) -> list[SpeakerTurn]:
    labels = rng.choice([["A"], ["A", "B"], ["A", "B", "C"], ["SPEAKER_01", "SPEAKER_00", "x"], ["A", ""]])
    turns = []
    for _ in range(rng.randint(1, 9)):
        start = _time(rng)
        # Zero-length turns, and turns of the same or other speakers overlapping these ones.
        length = rng.choice([0.0, 0.25, 0.5, 1.0, 2.0, 3.0, rng.uniform(0.0, 4.0)])
        turns.append(SpeakerTurn(start=start, end=start + length, speaker=rng.choice(labels)))
    if rng.random() < 0.2:  # an exact duplicate span under another label: a pure tie
        twin = rng.choice(turns)
        turns.append(SpeakerTurn(start=twin.start, end=twin.end, speaker=rng.choice(labels)))
    return turns


def _random_word(rng: random.Random) -> Word:
    kind = rng.random()
    if kind < 0.1:  # no timing at all, sometimes with a label from earlier: whisperx keeps it
        return Word(word="w", speaker=rng.choice([None, "OLD"]))
    start = _time(rng) + rng.choice([0.0, 0.0, 10.0])  # some far past every turn
    if kind < 0.2:
        return Word(word="w", start=start)  # start only: a zero-length span
    if kind < 0.23:
        return Word(word="w", start=start, end=start - 0.25)  # end before start
    return Word(word="w", start=start, end=start + rng.choice([0.0, 0.25, 0.5, rng.uniform(0.0, 2.0)]))


def _random_segments(rng: random.Random) -> list[Segment]:
    segments = []
    for _ in range(rng.randint(1, 4)):
        words = [_random_word(rng) for _ in range(rng.randint(0, 6))]
        timed = [t for w in words for t in (w.start, w.end) if t is not None]
        if timed and rng.random() < 0.7:
            start, end = min(timed), max(timed)
        else:
            start = _time(rng) + rng.choice([0.0, 12.0])
            end = start + rng.choice([0.0, 0.5, 1.5, rng.uniform(0.0, 5.0)])
        segments.append(Segment(start=start, end=end, text="t", words=words, speaker=rng.choice([None, "OLD"])))
    return segments


@pytest.mark.parametrize("seed", range(25))
def test_random_cases_label_like_whisperx(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(80):
        _assert_agrees(_random_segments(rng), _random_turns(rng))


def test_words_of_an_hour_label_like_whisperx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Diarizer-like turns over an hour: one speaker after another, with gaps and cross-talk, and a
    speaker whose long turn spans many of another's; pairs cut into small blocks on the way."""
    rng = random.Random(7)
    turns: list[SpeakerTurn] = []
    t = 0.0
    while t < 3600.0:
        length = rng.uniform(0.3, 12.0)
        turns.append(SpeakerTurn(start=round(t, 3), end=round(t + length, 3), speaker=f"SPEAKER_0{rng.randrange(4)}"))
        t += length + rng.choice([-0.5, 0.0, 0.2, 1.5])  # overlap, abut, short and long gaps
    turns.append(SpeakerTurn(start=100.0, end=400.0, speaker="SPEAKER_05"))  # background talker
    turns.append(SpeakerTurn(start=150.0, end=160.0, speaker="SPEAKER_05"))  # nested in its own turn
    segments: list[Segment] = []
    t = 0.0
    while t < 3700.0:  # runs past the last turn
        words = []
        for _ in range(rng.randint(1, 25)):
            length = round(rng.uniform(0.05, 0.8), 3)
            words.append(Word(word="w", start=round(t, 3), end=round(t + length, 3)))
            t += length + rng.choice([0.0, 0.02, 0.3])
        segments.append(Segment(start=words[0].start or 0.0, end=words[-1].end or 0.0, text="t", words=words))
        t += rng.uniform(0.0, 4.0)
    monkeypatch.setattr(speakers, "_MAX_PAIRS", 64)
    _assert_agrees(segments, turns)


def test_assemble_case_overlapping_or_nearest_speaker() -> None:
    """The case of test_assemble.test_every_word_gets_the_overlapping_or_nearest_speaker."""
    segments = [
        Segment(start=0.0, end=2.5, text="a b", words=[Word(word="a", start=0.0, end=0.9, score=0.9),
                                                       Word(word="b", start=1.1, end=2.5, score=0.9)]),
        Segment(start=5.0, end=6.0, text="c", words=[Word(word="c", start=5.0, end=6.0, score=0.9)]),  # in no turn
    ]
    turns = [SpeakerTurn(start=0.0, end=1.0, speaker="SPEAKER_00"), SpeakerTurn(start=1.0, end=3.0, speaker="SPEAKER_01")]
    labelled = _assert_agrees(segments, turns)
    assert [w.speaker for s in labelled for w in s.words] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_01"]
    assert labelled[0].speaker == "SPEAKER_01"  # 1.5 s of SPEAKER_01 against 1.0 s of SPEAKER_00
    assert labelled[1].speaker == "SPEAKER_01"  # nearest midpoint: 2.0 against 0.5


def test_ties_go_to_the_first_turn_by_start() -> None:
    turns = [SpeakerTurn(start=1.0, end=2.0, speaker="B"), SpeakerTurn(start=0.0, end=1.0, speaker="A"),
             SpeakerTurn(start=4.0, end=5.0, speaker="C"), SpeakerTurn(start=4.0, end=5.0, speaker="D")]
    segments = [
        Segment(start=0.5, end=1.5, text="equal totals", words=[
            Word(word="touching", start=2.0, end=3.0),  # touches B's turn: no overlap; nearest mid 1.5
            Word(word="between", start=3.0, end=3.0),  # mids 1.5 (B) and 4.5 (C, D): equally near
        ]),
        Segment(start=4.0, end=5.0, text="same span", words=[Word(word="inside", start=4.5)]),
    ]
    labelled = _assert_agrees(segments, turns)
    assert _labels(labelled) == [("A", ["B", "B"]), ("C", ["C"])]


def test_non_finite_word_times_label_like_whisperx() -> None:
    turns = [SpeakerTurn(start=3.0, end=4.0, speaker="B"), SpeakerTurn(start=1.0, end=2.0, speaker="A")]
    nan, inf = float("nan"), float("inf")
    words = [Word(word="nan", start=nan, end=nan), Word(word="inf", start=inf), Word(word="-inf", start=-inf),
             Word(word="open", start=1.5, end=inf)]
    labelled = _assert_agrees([Segment(start=0.0, end=5.0, text="odd", words=words)], turns)
    assert _labels(labelled) == [("A", ["A", "A", "A", "B"])]


def test_nothing_to_assign_returns_the_segments() -> None:
    segments = [Segment(start=0.0, end=1.0, text="a", words=[Word(word="a", start=0.0, end=1.0)])]
    assert assign_speakers(segments, []) is segments
    assert assign_speakers([], [SpeakerTurn(start=0.0, end=1.0, speaker="A")]) == []


def test_overlap_durations_per_speaker() -> None:
    """The intersection helper on its own, as an overlapping-speakers feature would read it."""
    index = TurnIndex([SpeakerTurn(start=0.0, end=2.0, speaker="A"), SpeakerTurn(start=1.0, end=3.0, speaker="B"),
                       SpeakerTurn(start=2.5, end=4.0, speaker="A")])
    found = index.overlaps(np.array([1.5, 5.0, 0.0]), np.array([3.0, 6.0, 4.0]))
    assert found.speakers == ["A", "B"]
    assert found.seconds.tolist() == [[1.0, 1.5], [0.0, 0.0], [3.5, 2.0]]
    assert found.first_turn.tolist() == [[0, 1], [speakers.NO_TURN, speakers.NO_TURN], [0, 1]]


def test_module_does_not_load_pandas_or_whisperx() -> None:
    probe = ("import sys, whisperx_service.speakers; "
             "sys.exit(sorted(m for m in ('pandas', 'whisperx', 'torch') if m in sys.modules) != [])")
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


# --- overlapped speech: the main speaker and, when asked, every speaker of a word ---------------


def _overlap_case() -> tuple[list[Segment], list[SpeakerTurn]]:
    """A talks 0-5 s, B 3-8 s, C 3.8-4.6 s (a third voice for a moment): 3-5 s is overlapped."""
    turns = [SpeakerTurn(start=0.0, end=5.0, speaker="A"), SpeakerTurn(start=3.0, end=8.0, speaker="B"),
             SpeakerTurn(start=3.8, end=4.6, speaker="C")]
    words = [Word(word="alone", start=1.0, end=1.5),  # A only
             Word(word="both", start=3.2, end=3.6),  # A and B cover it all: tie, A's turn starts first
             Word(word="three", start=4.0, end=4.4),  # A, B and C all over it
             Word(word="later", start=4.5, end=5.5),  # A 0.5 s, B 1.0 s, C 0.1 s
             Word(word="gap", start=9.0, end=9.5)]  # no turn: the nearest (B)
    return [Segment(start=1.0, end=9.5, text="t", words=words)], turns


def test_words_in_an_overlap_get_the_speaker_covering_them_most() -> None:
    segments, turns = _overlap_case()
    labelled = _assert_agrees(segments, turns)  # whisperx's rule, label for label
    assert [w.speaker for w in labelled[0].words] == ["A", "A", "A", "B", "B"]
    assert all(w.speakers is None for w in labelled[0].words)  # not asked for
    assert "speakers" not in labelled[0].words[0].model_dump()  # WhisperX's word keeps its shape


def test_overlapping_speakers_lists_every_voice_of_a_word() -> None:
    segments, turns = _overlap_case()
    plain = assign_speakers(segments, turns)
    listed = assign_speakers(segments, turns, overlapping=True)
    assert _labels(listed) == _labels(plain)  # the main speaker does not change
    assert [w.speakers for w in listed[0].words] == [["A"], ["A", "B"], ["A", "B", "C"], ["B", "A", "C"], ["B"]]
    assert listed[0].words[1].model_dump()["speakers"] == ["A", "B"]


@pytest.mark.parametrize("seed", range(10))
def test_overlapping_speakers_are_the_intersecting_turns_main_first(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for _ in range(60):
        segments, turns = _random_segments(rng), _random_turns(rng)
        listed = assign_speakers(segments, turns, overlapping=True)
        assert _labels(listed) == _labels(_whisperx(segments, turns))
        for segment in listed:
            for w in segment.words:
                if w.start is None:
                    assert w.speakers is None
                    continue
                end = w.end if w.end is not None else w.start
                met = {t.speaker for t in turns if min(t.end, end) - max(t.start, w.start) > 0}
                assert w.speakers is not None
                if met:
                    assert set(w.speakers) == met and len(w.speakers) == len(met)
                    assert w.speakers[0] == w.speaker
                else:  # nearest speaker alone (none when whisperx leaves a falsy label unset)
                    assert w.speakers == ([w.speaker] if w.speaker not in (None, "OLD") else [])


def test_speech_seconds_count_overlap_once() -> None:
    turns = [SpeakerTurn(start=0.0, end=5.0, speaker="A"), SpeakerTurn(start=3.0, end=8.0, speaker="B"),
             SpeakerTurn(start=4.0, end=4.5, speaker="C"), SpeakerTurn(start=10.0, end=11.0, speaker="A")]
    assert speakers.speech_seconds(turns) == pytest.approx(9.0)
    assert speakers.speech_seconds([]) == 0.0
