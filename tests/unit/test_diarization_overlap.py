"""Overlapped speech survives from pyannote's output to `speaker_turns` (and through the speech
islands' mapping back to the recording)."""

from __future__ import annotations

from pyannote.audio.pipelines.speaker_diarization import DiarizeOutput
from pyannote.core import Annotation, Segment

from whisperx_service.diarization.islands import _back_to_recording
from whisperx_service.diarization.pyannote_backend import turns_of
from whisperx_service.schema import SpeakerTurn


def _annotation(turns: list[tuple[float, float, str]]) -> Annotation:
    annotation = Annotation(uri="audio")
    for i, (start, end, label) in enumerate(turns):
        annotation[Segment(start, end), str(i)] = label
    return annotation


def test_the_full_diarization_is_used_not_the_exclusive_one() -> None:
    full = _annotation([(0.0, 5.0, "a"), (3.0, 8.0, "b"), (9.0, 12.0, "a")])
    exclusive = _annotation([(0.0, 4.0, "a"), (4.0, 8.0, "b"), (9.0, 12.0, "a")])
    output = DiarizeOutput(speaker_diarization=full, exclusive_speaker_diarization=exclusive,
                           speaker_embeddings=None)
    turns = turns_of(output, duration=11.5)
    assert turns == [SpeakerTurn(start=0.0, end=5.0, speaker="SPEAKER_00"),
                     SpeakerTurn(start=3.0, end=8.0, speaker="SPEAKER_01"),  # both over 3-5 s
                     SpeakerTurn(start=9.0, end=11.5, speaker="SPEAKER_00")]  # kept inside the recording
    assert turns_of(full, duration=12.0)[:2] == turns[:2]  # a legacy pipeline's Annotation alike


def test_overlap_is_kept_when_islands_are_mapped_back() -> None:
    # two islands: samples 0-10 s and 20-30 s of the recording, joined as 0-20 s
    rate = 16000
    bounds = [(0, 10 * rate), (20 * rate, 30 * rate)]
    turns = [SpeakerTurn(start=8.0, end=12.0, speaker="A"), SpeakerTurn(start=9.0, end=11.0, speaker="B")]
    mapped = sorted(_back_to_recording(turns, bounds))
    assert mapped == [(8.0, 10.0, "A"), (9.0, 10.0, "B"), (20.0, 21.0, "B"), (20.0, 22.0, "A")]
