from __future__ import annotations

from whisperx_service.assemble import sentences_from_whisper_words, word_segments
from whisperx_service.schema import AsrSegment, Segment, SpeakerTurn, Word
from whisperx_service.speakers import assign_speakers


def _words(spec: list[tuple[str, float, float]]) -> list[Word]:
    return [Word(word=w, start=s, end=e, score=0.9) for w, s, e in spec]


def test_chunk_is_split_into_sentences() -> None:
    chunk = AsrSegment(start=0.0, end=6.0, text="Hello there. How are you?", words=_words(
        [("Hello", 0.1, 0.5), ("there.", 0.5, 1.0), ("How", 2.0, 2.3), ("are", 2.3, 2.5), ("you?", 2.5, 3.0)]))
    sentences = sentences_from_whisper_words(chunk)
    assert [s.text for s in sentences] == ["Hello there.", "How are you?"]
    assert (sentences[0].start, sentences[0].end) == (0.1, 1.0)
    assert (sentences[1].start, sentences[1].end) == (2.0, 3.0)


def test_chinese_chunk_joins_without_spaces() -> None:
    chunk = AsrSegment(start=0.0, end=2.0, text="你好。再见", words=_words([("你好。", 0.0, 0.8), ("再见", 1.0, 1.8)]))
    assert [s.text for s in sentences_from_whisper_words(chunk)] == ["你好。", "再见"]


def test_every_word_gets_the_overlapping_or_nearest_speaker() -> None:
    segments = [
        Segment(start=0.0, end=2.5, text="a b", words=_words([("a", 0.0, 0.9), ("b", 1.1, 2.5)])),
        Segment(start=5.0, end=6.0, text="c", words=_words([("c", 5.0, 6.0)])),  # in no turn
    ]
    turns = [SpeakerTurn(start=0.0, end=1.0, speaker="SPEAKER_00"), SpeakerTurn(start=1.0, end=3.0, speaker="SPEAKER_01")]
    labelled = assign_speakers(segments, turns)
    assert [w.speaker for w in word_segments(labelled)] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_01"]
    assert labelled[0].speaker == "SPEAKER_01"  # 1.5 s of SPEAKER_01 against 1.0 s of SPEAKER_00
    assert all(s.speaker for s in labelled)


def test_no_turns_leaves_segments_alone() -> None:
    segments = [Segment(start=0.0, end=1.0, text="a", words=_words([("a", 0.0, 1.0)]))]
    assert assign_speakers(segments, []) == segments
