"""Named speakers: voice samples cut from one AMI clip name the same people in the other clip
(dev00 and dev01 share speakers MEE009 and MEE012); a stranger's sample names nobody."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile

from tests.data import AMI_DIR, AMI_RTTM, JFK_FLAC, load_rttm
from tests.served.conftest import Served

pytestmark = pytest.mark.served
RATE = 16_000


def sample_url(path: Path, start: float, end: float) -> str:
    """A data URL of `path`'s start..end as a 16-kHz 16-bit WAV (what a client would send)."""
    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    assert rate == RATE
    buffer = io.BytesIO()
    soundfile.write(buffer, audio[int(start * RATE):int(end * RATE), 0], RATE, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()


# Stretches where only that person speaks (debug.development.rttm).
SAMPLES = {"dev00": {"MEE009": (2.0, 10.0), "MEE012": (13.2, 16.9)},
           "dev01": {"MEE009": (7.05, 11.75), "MEE012": (4.31, 6.75)}}


def overlap(turns: list[tuple[float, float, str]], start: float, end: float, speaker: str) -> float:
    return sum(max(0.0, min(end, e) - max(start, s)) for s, e, who in turns if who == speaker)


def assert_named_right(spans: list[tuple[float, float, str]], clip: str, names: set[str]) -> None:
    """Each name sits on the diarized speaker that the optimal one-to-one mapping of diarized
    speakers to the reference's (as DER scoring maps them) gives that person."""
    from scipy.optimize import linear_sum_assignment

    reference = load_rttm(AMI_RTTM, clip)
    labels, people = sorted({who for *_, who in spans}), sorted({who for *_, who in reference})
    assert names & set(labels), f"no speaker of {clip} was named: {labels}"
    shared = np.array([[sum(overlap(reference, s, e, person) for s, e, w in spans if w == label)
                        for person in people] for label in labels])
    rows, cols = linear_sum_assignment(-shared)
    mapping = {labels[r]: people[c] for r, c in zip(rows, cols, strict=True)}
    for label in names & set(labels):
        assert mapping.get(label) == label, (clip, mapping, shared.tolist())


def test_openai_client_names_speakers_from_samples_of_another_recording(served: Served) -> None:
    names = ["MEE009", "MEE012"]
    references = [sample_url(AMI_DIR / "dev00.wav", *SAMPLES["dev00"][n]) for n in names]
    with openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=900) as client, \
            (AMI_DIR / "dev01.wav").open("rb") as fh:
        result = client.audio.transcriptions.create(
            file=fh, model="whisper-1", response_format="diarized_json",
            known_speaker_names=names, known_speaker_references=references)
    spans = [(s.start, s.end, s.speaker) for s in result.segments]
    assert_named_right(spans, "dev01", set(names))


def test_transcribe_names_speakers_and_a_stranger_names_nobody(served: Served) -> None:
    names = ["MEE009", "MEE012", "Kennedy"]
    references = [sample_url(AMI_DIR / "dev01.wav", *SAMPLES["dev01"][n]) for n in names[:2]]
    audio, rate = soundfile.read(str(JFK_FLAC), dtype="float32", always_2d=True)
    buffer = io.BytesIO()
    soundfile.write(buffer, audio[rate:10 * rate].mean(axis=1), rate, format="FLAC")
    references.append("data:audio/flac;base64," + base64.b64encode(buffer.getvalue()).decode())
    with served.client() as client, (AMI_DIR / "dev00.wav").open("rb") as fh:
        response = client.post("/transcribe", files={"audio_file": ("dev00.wav", fh, "audio/wav")},
                               data={"known_speaker_names[]": names, "known_speaker_references[]": references})
    assert response.status_code == 200, response.text
    body = response.json()
    matches = {m["name"]: m for m in body["diarization"]["known_speakers"]}
    assert set(matches) == set(names)
    assert matches["Kennedy"]["speaker"] is None  # a stranger names nobody
    assert {matches["MEE009"]["speaker"], matches["MEE012"]["speaker"]} == {"SPEAKER_00", "SPEAKER_01"}
    turns = [(t["start"], t["end"], t["speaker"]) for t in body["diarization"]["speaker_turns"]]
    assert_named_right(turns, "dev00", {"MEE009", "MEE012"})
    assert {w["speaker"] for w in body["word_segments"]} <= {"MEE009", "MEE012"}


@pytest.mark.parametrize(("fields", "param"), [
    ({"known_speaker_names[]": ["A", "B"], "known_speaker_references[]": ["data:audio/wav;base64,AAAA"]},
     "known_speaker_references"),
    ({"known_speaker_names[]": ["A"], "known_speaker_references[]": ["data:audio/wav;base64,"
                                                                     + base64.b64encode(b"not audio").decode()]},
     "known_speaker_references"),
    ({"known_speaker_names[]": ["A"], "known_speaker_references[]": [sample_url(AMI_DIR / "dev00.wav", 2, 3)]},
     "known_speaker_references"),  # 1 s: too short to tell a voice
])
def test_bad_voice_samples_are_400_naming_the_field(served: Served, fields: dict[str, list[str]], param: str) -> None:
    with httpx.Client(base_url=served.url, timeout=120) as client, (AMI_DIR / "dev00.wav").open("rb") as fh:
        response = client.post("/v1/audio/transcriptions",
                               files={"file": ("dev00.wav", fh, "audio/wav")},
                               data={"model": "whisper-1", "response_format": "diarized_json", **fields})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert not [p for p in served.tmp_dir.iterdir() if p.name.startswith("wxs-upload-")]  # spools removed

