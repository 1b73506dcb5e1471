"""A long composed meeting through the served graph (tests/longform.py): the language decided
over the recording, word recall against the same clips transcribed alone, no silent drops, and
no space between two CJK characters in any segment.

``back_to_back`` (3.1 min, six speakers): clips of different speakers back to back, Mandarin
sentences among English ones, some joins overlapped. With the language read off the first speech
chunk (a 30-s window opening on the phone call, then a Mandarin sentence...), Whisper base called
this recording Mandarin and the English came out at 8 % word recall (bench/longform.py).
"""

from __future__ import annotations

import re
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.longform import SAMPLE_RATE, compositions, hits, placed_recall, words_in
from tests.served.conftest import Served
from tests.served.test_transcribe import check_word_invariants, transcribe

pytestmark = pytest.mark.served

CJK_SPACE_CJK = re.compile(r"[\u3000-\u30ff\u4e00-\u9fff\uff00-\uffef] +[\u3000-\u30ff\u4e00-\u9fff\uff00-\uffef]")


def _wav(path: Path, audio: np.ndarray) -> Path:
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return path


def _words(result: dict[str, Any]) -> list[tuple[str, float, float]]:
    return [(w["word"], w["start"], w["end"]) for w in result["word_segments"]]


def test_long_meeting_language_recall_and_no_silent_drops(served: Served, tmp_path: Path) -> None:
    comp = compositions()["back_to_back"]
    assert comp.duration >= 180 and len(comp.speakers) >= 4
    result = transcribe(served, _wav(tmp_path / f"{comp.name}.wav", comp.audio), diarize="false")
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
            single = transcribe(served, _wav(tmp_path / f"{clip.name}.wav", clip.audio), diarize="false")
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
