"""Stored voices through the served graph: voices stored (POST /v1/speakers) from one AMI clip
name the same people in the other clip (dev01's samples name MEE009 and MEE012 in dev00, as in
test_named_speakers), on the OpenAI route and in an async /transcribe job; a stranger's stored
voice names nobody; a deleted voice's id is a 400. (The store surviving a gateway restart is proved
on both backends in tests/unit/test_voices.py; replicas sharing Redis in tests/deploy/test_topology.py.)"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import soundfile

from tests.data import AMI_DIR, JFK_FLAC
from tests.served.conftest import Served
from tests.served.test_jobs import poll
from tests.served.test_named_speakers import SAMPLES, assert_named_right

pytestmark = pytest.mark.served


def wav_bytes(path: Path, start: float, end: float) -> bytes:
    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    buffer = io.BytesIO()
    soundfile.write(buffer, audio[int(start * rate):int(end * rate)].mean(axis=1), rate, format="WAV",
                    subtype="PCM_16")
    return buffer.getvalue()


def store_voice(http: httpx.Client, name: str, sample: bytes) -> dict[str, Any]:
    response = http.post("/v1/speakers", data={"name": name}, files={"file": ("sample.wav", sample, "audio/wav")})
    assert response.status_code == 201, response.text
    voice: dict[str, Any] = response.json()
    assert voice["name"] == name and voice["model"].startswith("pyannote")
    return voice


def test_stored_voices_name_the_speakers_of_another_recording(served: Served) -> None:
    with served.client() as http:
        voices = {name: store_voice(http, name, wav_bytes(AMI_DIR / "dev01.wav", *SAMPLES["dev01"][name]))
                  for name in ("MEE009", "MEE012")}
        voices["Kennedy"] = store_voice(http, "Kennedy", wav_bytes(JFK_FLAC, 1.0, 10.0))  # a stranger to AMI
        listed = {v["id"] for v in http.get("/v1/speakers").json()["data"]}
        assert {v["id"] for v in voices.values()} <= listed
        ids = [v["id"] for v in voices.values()]

        # The official client sends extra_body's list as known_speaker_ids[]
        with openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=900) as client, \
                (AMI_DIR / "dev00.wav").open("rb") as fh:
            result = client.audio.transcriptions.create(file=fh, model="whisper-1", response_format="diarized_json",
                                                        extra_body={"known_speaker_ids": ids})
        spans = [(s.start, s.end, s.speaker) for s in result.segments]
        assert {who for *_, who in spans} & {"MEE009", "MEE012", "Kennedy"} == {"MEE009", "MEE012"}
        assert_named_right(spans, "dev00", {"MEE009", "MEE012"})

        # The same voices in an async job of /transcribe (the seed's shape), all three named
        with (AMI_DIR / "dev00.wav").open("rb") as fh:
            submitted = http.post("/jobs/transcribe/submit", files={"audio_file": ("dev00.wav", fh, "audio/wav")},
                                  data={"known_speaker_ids[]": ids})
        assert submitted.status_code == 200, submitted.text
        seen = poll(http, submitted.json()["task_id"])
        assert seen[-1]["state"] == "completed", seen[-1]
        body = http.get(seen[-1]["result_url"]).json()
        matches = {m["name"]: m["speaker"] for m in body["diarization"]["known_speakers"]}
        assert matches.keys() == {"MEE009", "MEE012", "Kennedy"} and matches["Kennedy"] is None
        assert {matches["MEE009"], matches["MEE012"]} == {"SPEAKER_00", "SPEAKER_01"}
        turns = [(t["start"], t["end"], t["speaker"]) for t in body["diarization"]["speaker_turns"]]
        assert_named_right(turns, "dev00", {"MEE009", "MEE012"})


def test_a_deleted_voice_is_gone(served: Served) -> None:
    with served.client() as http:
        voice = store_voice(http, "MEE012", wav_bytes(AMI_DIR / "dev00.wav", *SAMPLES["dev00"]["MEE012"]))
        assert http.get(f"/v1/speakers/{voice['id']}").json() == voice
        assert http.delete(f"/v1/speakers/{voice['id']}").status_code == 204
        gone = http.get(f"/v1/speakers/{voice['id']}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "speaker_not_found"
        assert voice["id"] not in {v["id"] for v in http.get("/v1/speakers").json()["data"]}
        with (AMI_DIR / "dev00.wav").open("rb") as fh:
            response = http.post("/v1/audio/transcriptions", files={"file": ("dev00.wav", fh, "audio/wav")},
                                 data={"model": "whisper-1", "response_format": "diarized_json",
                                       "known_speaker_ids[]": [voice["id"]]})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "known_speaker_ids"
    assert not [p for p in served.tmp_dir.iterdir() if p.name.startswith("wxs-upload-")]  # spools removed
