"""A long composed meeting through the served graph (tests/longform.py): the language decided
over the recording, word recall against the same clips transcribed alone, no silent drops, and
no space between two CJK characters in any segment; overlapped speech kept in the speakers, and
speaker-count hints the audio cannot meet explained.

``back_to_back`` (3.1 min, six speakers): clips of different speakers back to back, Mandarin
sentences among English ones, some joins overlapped. With the language read off the first speech
chunk (a 30-s window opening on the phone call, then a Mandarin sentence...), Whisper base called
this recording Mandarin and the English came out at 8 % word recall (bench/longform.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.composed import write_pcm16_wav
from tests.data import JFK_FLAC, PYANNOTE_SAMPLE, diarization_error_rate
from tests.longform import compositions, hits, overlapped_spans, placed_recall, words_in
from tests.served.conftest import Served
from tests.served.test_transcribe import check_word_invariants, transcribe

pytestmark = pytest.mark.served

CJK_SPACE_CJK = re.compile(r"[\u3000-\u30ff\u4e00-\u9fff\uff00-\uffef] +[\u3000-\u30ff\u4e00-\u9fff\uff00-\uffef]")


def _words(result: dict[str, Any]) -> list[tuple[str, float, float]]:
    return [(w["word"], w["start"], w["end"]) for w in result["word_segments"]]


def test_long_meeting_language_recall_and_no_silent_drops(served: Served, tmp_path: Path) -> None:
    comp = compositions()["back_to_back"]
    assert comp.duration >= 180 and len(comp.speakers) >= 4
    result = transcribe(served, write_pcm16_wav(tmp_path / f"{comp.name}.wav", comp.audio), diarize="false")
    check_word_invariants(result)

    # The language over the recording, with how it was decided.
    assert result["language"] == "en", result["language_detection"]
    detection = result["language_detection"]
    assert detection["source"] == "detected" and detection["chunks"] >= 6
    assert detection["alternatives"][0]["language"] == "en" and result["language_probability"] > 0.5

    # Word recall of the English clips within 3 points of the same clips transcribed alone.
    alone: dict[str, tuple[int, int]] = {}
    for placed in comp.placed:
        clip = placed.clip
        if clip.text is not None and clip.language == "en" and clip.name not in alone:
            single = transcribe(served, write_pcm16_wav(tmp_path / f"{clip.name}.wav", clip.audio), diarize="false")
            alone[clip.name] = hits(clip.text, " ".join(w for w, _, _ in _words(single)), "en")
    found = [alone[p.clip.name] for p in comp.placed if p.clip.text is not None and p.clip.language == "en"]
    recall_alone = sum(h for h, _ in found) / sum(n for _, n in found)
    h, n = placed_recall(comp, _words(result), "en")
    assert h / n >= recall_alone - 0.03, (h / n, recall_alone)

    # No silent drop: every English clip comes out (half its words at least) or is warned about.
    warnings = [(w["start"], w["end"]) for w in result["warnings"]]
    for placed in comp.placed:
        if placed.clip.text is None or placed.clip.language != "en":
            continue
        got, total = hits(placed.clip.text, words_in(_words(result), placed.start, placed.end), "en")
        warned = any(s < placed.end and e > placed.start for s, e in warnings)
        assert got >= 0.5 * total or warned, (placed.clip.name, placed.start, got, total, warnings)
    for warning in result["warnings"]:
        assert warning["code"] == "speech_without_text" and 0 <= warning["start"] < warning["end"] <= comp.duration

    # Whatever the language, no segment holds a space between two CJK characters.
    assert not [s["text"] for s in result["segments"] if CJK_SPACE_CJK.search(s["text"])]


def _seconds_in(spans: list[tuple[float, float]], others: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(e, f) - max(s, g)) for s, e in spans for g, f in others)


def test_overlapped_meeting_keeps_both_speakers(served: Served, tmp_path: Path) -> None:
    """``overlapped`` (3.3 min, six speakers, 18 s of two voices at once at its joins): the turns
    keep both speakers where two talk, within a meeting DER bound and the speaker count +-1; asked
    for, each word lists every speaker talking during it, its `speaker` first."""
    comp = compositions()["overlapped"]
    assert comp.duration >= 180 and len(comp.speakers) >= 4 and comp.overlap_seconds() >= 15
    result = transcribe(served, write_pcm16_wav(tmp_path / f"{comp.name}.wav", comp.audio), overlapping_speakers="true",
                        language="en")  # the language rule has its own test
    check_word_invariants(result)
    diarization = result["diarization"]
    turns = [(t["start"], t["end"], t["speaker"]) for t in diarization["speaker_turns"]]
    assert abs(diarization["num_speakers"] - len(comp.speakers)) <= 1, diarization["num_speakers"]
    der = diarization_error_rate(comp.turns, turns)
    assert der <= 0.35, der

    # Overlap kept: the turns hold two speakers at once over much of the reference's overlap.
    reference, found = overlapped_spans(comp.turns), overlapped_spans(turns)
    assert found, "no two turns overlap: overlapped speech was flattened to one speaker"
    kept = _seconds_in(reference, found) / comp.overlap_seconds()
    assert kept >= 0.3, kept

    # Each word's speakers are exactly the speakers whose turns it meets, its speaker first.
    words = [w for s in result["segments"] for w in s["words"]]
    for word in words:
        met = {k for s, e, k in turns if min(e, word["end"]) - max(s, word["start"]) > 0}
        assert word["speakers"][0] == word["speaker"], word
        assert set(word["speakers"]) == (met or {word["speaker"]}), (word, met)
    assert sum(len(w["speakers"]) >= 2 for w in words) >= 5, "no word inside an overlap lists two speakers"
    assert result["word_segments"] == words


def test_openai_words_list_overlapping_speakers(served: Served) -> None:
    """The same option on OpenAI's verbose_json words (it also turns diarization on there)."""
    with served.client() as client, PYANNOTE_SAMPLE.open("rb") as fh:
        response = client.post("/v1/audio/transcriptions", files={"file": (PYANNOTE_SAMPLE.name, fh)}, data={
            "model": "whisper-1", "response_format": "verbose_json", "timestamp_granularities[]": "word",
            "overlapping_speakers": "true"})
    assert response.status_code == 200, response.text
    words = response.json()["words"]
    assert words and all(w["speakers"] and w["speakers"][0] == w["speaker"] for w in words), words
    assert len({w["speaker"] for w in words}) == 2


def test_a_speaker_hint_the_audio_cannot_meet_is_explained(served: Served) -> None:
    """JFK alone (7 s of one voice): four speakers cannot be found, and the response says why."""
    result = transcribe(served, JFK_FLAC, num_speakers="4", language="en")
    diarization = result["diarization"]
    assert diarization["num_speakers"] == 1
    assert diarization["note"].startswith("num_speakers=4 could not be met: 1 speaker found in "), diarization
    assert {w["speaker"] for w in result["word_segments"]} == {diarization["speaker_turns"][0]["speaker"]}
    plain = transcribe(served, JFK_FLAC, language="en")
    assert plain["diarization"]["note"] is None
