"""Diarize only where there is speech: the ASR plan's voice activity, as islands of audio.

Segmentation and speaker embeddings cost the same per second whether anyone speaks or not (an
hour of silence took minutes). When the speech the VAD found covers well under the whole
recording, the islands of speech (padded, close ones joined) are diarized as one joined recording,
so that clustering still sees every speaker at once, and the turns are mapped back to the
recording's own time. A recording that is mostly speech is diarized whole, exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from whisperx_service.schema import SpeakerTurn, TimeSpan

from .common import SAMPLE_RATE, finalize_turns

# Only long silences are cut out: the VAD misses quiet speech near what it finds, and every join
# of two islands is a boundary the segmentation model never heard (both cost DER when shorter).
PAD_S = 3.0  # context kept around each stretch of speech
JOIN_GAP_S = 10.0  # stretches closer than this stay one island
WHOLE_ABOVE = 0.85  # islands covering more than this share of the recording: diarize it whole

Island = tuple[float, float]


def speech_islands(speech: Sequence[TimeSpan], duration: float) -> list[Island]:
    """Padded, merged stretches of speech inside [0, duration], in order."""
    islands: list[list[float]] = []
    for span in sorted(speech, key=lambda s: s.start):
        start, end = max(0.0, span.start - PAD_S), min(duration, span.end + PAD_S)
        if end <= start:
            continue
        if islands and start - islands[-1][1] <= JOIN_GAP_S:
            islands[-1][1] = max(islands[-1][1], end)
        else:
            islands.append([start, end])
    return [(start, end) for start, end in islands]


def diarize_speech(
    diarize: Callable[[np.ndarray], list[SpeakerTurn]], audio: np.ndarray, speech: Sequence[TimeSpan] | None,
) -> list[SpeakerTurn]:
    """`diarize` (a backend on float samples) over the speech islands of `audio` only.

    `speech` None: no voice activity known, the whole recording is diarized."""
    duration = audio.shape[0] / SAMPLE_RATE
    if speech is None:
        return diarize(audio)
    islands = speech_islands(speech, duration)
    if not islands:
        return []
    if sum(end - start for start, end in islands) > WHOLE_ABOVE * duration:
        return diarize(audio)
    bounds = [(int(start * SAMPLE_RATE), int(end * SAMPLE_RATE)) for start, end in islands]
    joined = np.concatenate([audio[first:last] for first, last in bounds])
    turns = diarize(joined)
    return finalize_turns(_back_to_recording(turns, bounds))


def _back_to_recording(turns: list[SpeakerTurn], bounds: list[tuple[int, int]]) -> list[tuple[float, float, str]]:
    """Turns on the joined islands, as turns on the recording (split where two islands meet)."""
    offsets = np.cumsum([0] + [last - first for first, last in bounds]) / SAMPLE_RATE  # island starts, joined
    out: list[tuple[float, float, str]] = []
    for turn in turns:
        for i, (first, _) in enumerate(bounds):
            lo, hi = max(turn.start, offsets[i]), min(turn.end, offsets[i + 1])
            if hi > lo:
                shift = first / SAMPLE_RATE - offsets[i]
                out.append((float(lo + shift), float(hi + shift), turn.speaker))
    return out
