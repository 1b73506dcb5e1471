"""Diarizing only the speech islands: what is sent to the backend, and turns mapped back."""

from __future__ import annotations

import numpy as np
import pytest

from whisperx_service.diarization.islands import PAD_S, diarize_speech, speech_islands
from whisperx_service.schema import SpeakerTurn, TimeSpan

RATE = 16_000


class Backend:
    """Labels each second of its input by a tone's level: turns where the input is not silent."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, wave: np.ndarray) -> list[SpeakerTurn]:
        self.calls.append(wave.shape[0])
        turns = []
        for second in range(wave.shape[0] // RATE):
            level = float(np.abs(wave[second * RATE:(second + 1) * RATE]).max())
            if level > 0:
                speaker = "SPEAKER_00" if level < 0.5 else "SPEAKER_01"
                turns.append(SpeakerTurn(start=second, end=second + 1, speaker=speaker))
        return turns


def _recording(seconds: int, speech: list[tuple[int, int, float]]) -> np.ndarray:
    audio = np.zeros(seconds * RATE, dtype=np.float32)
    for start, end, level in speech:
        audio[start * RATE:end * RATE] = level
    return audio


def test_a_long_silence_is_never_diarized_and_turns_land_where_they_were_spoken() -> None:
    audio = _recording(600, [(10, 20, 0.3), (400, 410, 0.8)])  # ten minutes, twenty seconds of speech
    backend = Backend()
    turns = diarize_speech(backend, audio, [TimeSpan(start=10, end=20), TimeSpan(start=400, end=410)])
    assert backend.calls == [2 * int((10 + 2 * PAD_S) * RATE)]  # the two islands, padded: 24 s, not 600
    assert [(t.start, t.end, t.speaker) for t in turns] == [(10.0, 20.0, "SPEAKER_00"), (400.0, 410.0, "SPEAKER_01")]


def test_no_speech_means_no_diarization_and_mostly_speech_means_the_whole_recording() -> None:
    backend = Backend()
    assert diarize_speech(backend, _recording(3600, []), []) == [] and backend.calls == []
    audio = _recording(30, [(0, 28, 0.3)])
    diarize_speech(backend, audio, [TimeSpan(start=0.2, end=27.5)])
    diarize_speech(backend, audio, None)
    assert backend.calls == [30 * RATE, 30 * RATE]


@pytest.mark.parametrize("spans, expected", [
    ([(5, 6), (14, 15)], [(2.0, 18.0)]),              # closer than the join gap: one island
    ([(5, 6), (25, 26)], [(2.0, 9.0), (22.0, 29.0)]),
    ([(0.5, 2), (58.5, 59.5)], [(0.0, 5.0), (55.5, 60.0)]),  # padding stays inside the recording
])
def test_islands(spans: list[tuple[float, float]], expected: list[tuple[float, float]]) -> None:
    assert speech_islands([TimeSpan(start=s, end=e) for s, e in spans], 60.0) == expected
