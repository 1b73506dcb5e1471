"""Named speakers: each speaker's own speech, one-to-one matching, and the request fields."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from whisperx_service.errors import InvalidParameter, UnsupportedValue
from whisperx_service.naming import match_names, renamed, solo_speech
from whisperx_service.params import TranscribeParams, parse_speaker_references, with_speaker_references
from whisperx_service.schema import SpeakerTurn


def turn(start: float, end: float, speaker: str) -> SpeakerTurn:
    return SpeakerTurn(start=start, end=end, speaker=speaker)


def test_solo_speech_leaves_out_overlap_and_takes_the_longest_stretches_first() -> None:
    turns = [turn(0, 10, "A"), turn(8, 12, "B"), turn(11, 20, "A"), turn(30, 30.3, "B")]
    own = solo_speech(turns)
    assert own["A"] == [(0, 8), (12, 20)]  # B's 8-12 is nobody's alone; 11-12 overlaps B too
    assert own["B"] == [(10, 11)]  # the 0.3-s turn is too short to tell a voice
    capped = solo_speech(turns, max_seconds=10)
    assert capped["A"] == [(0, 8), (12, 14)]  # longest first, cut at the cap


def test_solo_speech_agrees_with_a_sample_by_sample_count_on_random_meetings() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        starts = np.round(rng.uniform(0, 60, 40), 1)
        turns = [turn(float(s), float(s + round(rng.uniform(0.2, 6), 1)), f"S{rng.integers(4)}")
                 for s in starts]
        grid = np.arange(0, 70, 0.05) + 0.025  # midpoints of 50-ms steps
        talking = {sp: np.zeros(grid.size, bool) for sp in {t.speaker for t in turns}}
        for t in turns:
            talking[t.speaker] |= (grid > t.start) & (grid < t.end)
        count = sum(v.astype(int) for v in talking.values())
        own = solo_speech(turns, max_seconds=1e9)
        for speaker, mask in talking.items():
            alone = mask & (count == 1)
            covered = np.zeros(grid.size, bool)
            for start, end in own.get(speaker, []):
                assert end - start >= 0.4
                covered |= (grid > start) & (grid < end)
            assert not (covered & ~alone).any()  # never a moment someone else talks
            # everything alone is kept except stretches too short to tell a voice
            assert (alone & ~covered).sum() * 0.05 <= 0.4 * 40


def test_names_pair_one_to_one_and_only_above_the_threshold() -> None:
    speakers = {"S0": np.array([1.0, 0.0, 0.0]), "S1": np.array([0.8, 0.6, 0.0])}
    known = {"Ann": np.array([0.9, 0.1, 0.0]), "Bob": np.array([0.7, 0.7, 0.0]),
             "Eve": np.array([0.0, 0.0, 1.0])}
    matched = match_names(speakers, known, threshold=0.6)
    # Ann is closest to both speakers; the pairing of most total similarity gives Bob S1.
    assert {label: name for label, (name, _) in matched.items()} == {"S0": "Ann", "S1": "Bob"}
    assert match_names(speakers, {"Eve": known["Eve"]}, threshold=0.6) == {}
    turns = renamed([turn(0, 1, "S0"), turn(1, 2, "S2")], {"S0": "Ann"})
    assert [t.speaker for t in turns] == ["Ann", "S2"]


WAV_URL = "data:audio/wav;base64," + base64.b64encode(b"RIFF....WAVE").decode()


@pytest.mark.parametrize(("names", "references", "param"), [
    (["A", "B"], [WAV_URL], "known_speaker_references"),
    (["A", "B", "C", "D", "E"], [WAV_URL] * 5, "known_speaker_names"),
    (["A", "A"], [WAV_URL] * 2, "known_speaker_names"),
    (["A"], ["https://example.com/a.wav"], "known_speaker_references"),
    (["A"], ["data:text/plain;base64,aGVsbG8="], "known_speaker_references"),
    (["A"], ["data:audio/wav;base64,not base64!"], "known_speaker_references"),
])
def test_bad_known_speakers_are_400_naming_the_field(names: list[str], references: list[str], param: str) -> None:
    with pytest.raises(UnsupportedValue) as caught:
        parse_speaker_references(names, references)
    assert caught.value.status_code == 400 and caught.value.param == param


def test_known_speakers_diarize_unless_diarize_false_was_sent() -> None:
    (reference,) = parse_speaker_references(["Ann"], [WAV_URL])
    assert reference.name == "Ann" and reference.data == b"RIFF....WAVE"
    named = with_speaker_references(TranscribeParams(diarize=False), (reference,), diarize_given=False)
    assert named.diarize and named.speaker_references == (reference,)
    with pytest.raises(InvalidParameter) as caught:
        with_speaker_references(TranscribeParams(diarize=False), (reference,), diarize_given=True)
    assert caught.value.param == "diarize"
    assert parse_speaker_references(None, None) == ()
