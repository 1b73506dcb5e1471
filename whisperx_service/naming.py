"""Named speakers: diarized speakers matched to voice samples of known people.

A request may bring up to `MAX_KNOWN_SPEAKERS` names, each with a short recording of that person
(OpenAI's `known_speaker_names[]` / `known_speaker_references[]`). After diarization, each found
speaker's own speech (its turns less every stretch where someone else talks too) and each sample
are embedded by the diarization runner's own speaker-embedding model; speakers and names are then
paired one to one, most similar first (Hungarian assignment on cosine similarity), and a pair is
kept only at or above `NAMING_THRESHOLD`. Unmatched speakers keep their anonymous labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE
from .schema import SpeakerTurn

MAX_KNOWN_SPEAKERS = 4
REFERENCE_SECONDS = (2.0, 10.0)  # a sample's accepted length, as OpenAI's API
# Cosine similarity of the embedded CAM++ voice prints at or above which a speaker takes a name,
# chosen on the shared clips (bench/speaker_naming.py): the same person in another AMI clip
# 0.64-0.74, a stranger from another recording at most 0.51.
NAMING_THRESHOLD = 0.6
# Speech of one speaker embedded to compare: enough for a stable voice print, bounded cost.
SAMPLE_SECONDS = 20.0
MIN_PIECE_SECONDS = 0.4


@dataclass(frozen=True)
class KnownSpeaker:
    """A name and its voice sample (16-kHz mono 16-bit PCM), or the voice print already made of
    one (a stored voice, `whisperx_service.voices`)."""

    name: str
    audio: np.ndarray | None = None
    voice_print: np.ndarray | None = None


def solo_speech(turns: Sequence[SpeakerTurn], max_seconds: float = SAMPLE_SECONDS) -> dict[str, list[tuple[float, float]]]:
    """Each speaker's stretches where nobody else speaks, longest first, up to `max_seconds`."""
    pieces: dict[str, list[tuple[float, float]]] = {}
    for speaker, start, end in _solo_stretches(turns):
        if end - start >= MIN_PIECE_SECONDS:
            pieces.setdefault(speaker, []).append((start, end))
    chosen: dict[str, list[tuple[float, float]]] = {}
    for speaker, spans in pieces.items():
        total, kept = 0.0, []
        for start, end in sorted(spans, key=lambda s: s[0] - s[1]):
            if total >= max_seconds:
                break
            end = min(end, start + max_seconds - total)
            kept.append((start, end))
            total += end - start
        if kept:
            chosen[speaker] = sorted(kept)
    return chosen


def _solo_stretches(turns: Sequence[SpeakerTurn]) -> list[tuple[str, float, float]]:
    """Maximal (speaker, start, end) stretches with exactly one speaker talking: one sweep over
    the sorted turn boundaries, so an hour of turns costs milliseconds, not seconds."""
    events = sorted([(t.start, 1, t.speaker) for t in turns if t.end > t.start]
                    + [(t.end, -1, t.speaker) for t in turns if t.end > t.start])
    active: dict[str, int] = {}
    stretches: list[tuple[str, float, float]] = []
    index = 0
    while index < len(events):
        time = events[index][0]
        while index < len(events) and events[index][0] == time:
            _, step, speaker = events[index]
            active[speaker] = active.get(speaker, 0) + step
            if not active[speaker]:
                del active[speaker]
            index += 1
        if len(active) != 1 or index == len(events):
            continue
        (speaker,) = active
        following = events[index][0]
        if stretches and stretches[-1][0] == speaker and stretches[-1][2] == time:
            stretches[-1] = (speaker, stretches[-1][1], following)
        else:
            stretches.append((speaker, time, following))
    return stretches


def cut(audio: np.ndarray, spans: Sequence[tuple[float, float]]) -> np.ndarray:
    """The samples of `spans`, joined."""
    parts = [audio[int(s * SAMPLE_RATE):int(e * SAMPLE_RATE)] for s, e in spans]
    return np.concatenate(parts) if parts else audio[:0]


def match_names(speakers: Mapping[str, np.ndarray], known: Mapping[str, np.ndarray],
                threshold: float = NAMING_THRESHOLD) -> dict[str, tuple[str, float]]:
    """label -> (name, similarity) for the one-to-one pairing of most total similarity, each pair
    at or above `threshold`."""
    from scipy.optimize import linear_sum_assignment

    labels, names = list(speakers), list(known)
    if not labels or not names:
        return {}
    a = np.stack([_unit(speakers[label]) for label in labels])
    b = np.stack([_unit(known[name]) for name in names])
    similarity = a @ b.T
    rows, cols = linear_sum_assignment(-similarity)
    return {labels[r]: (names[c], round(float(similarity[r, c]), 3))
            for r, c in zip(rows, cols, strict=True) if similarity[r, c] >= threshold}


def _unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def renamed(turns: Sequence[SpeakerTurn], names: Mapping[str, str]) -> list[SpeakerTurn]:
    return [t.model_copy(update={"speaker": names.get(t.speaker, t.speaker)}) for t in turns]
