"""The OpenAI-compatible API, driven with the official `openai` client (unmodified), plus
/detect-language and /transcribe's output formats, against the real served graph."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import srt
import webvtt

from tests.data import (
    AISHELL_DIR,
    AMI_DIR,
    JFK_FLAC,
    JFK_REFERENCE,
    PYANNOTE_SAMPLE,
    word_error_rate,
)
from tests.served.conftest import Served

pytestmark = pytest.mark.served
SPEAKER_PREFIX = re.compile(r"^\[(SPEAKER_\d+)\]: ")


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=900) as c:
        yield c


def transcribe(client: openai.OpenAI, path: Path, **kwargs: Any) -> Any:
    with path.open("rb") as fh:
        return client.audio.transcriptions.create(file=fh, model=kwargs.pop("model", "whisper-1"), **kwargs)


def assert_envelope(exc: openai.APIStatusError, status: int, param: str | None, code: str) -> None:
    assert exc.status_code == status
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code", "request_id"}, body
    assert body["error"]["request_id"] == exc.response.headers["x-request-id"]
    assert body["error"]["param"] == param and body["error"]["code"] == code, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]


def test_models_list(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert ids == {"whisper-1", "whisper-base"}  # the served store model and OpenAI's alias
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-4o-transcribe")
    assert_envelope(caught.value, 404, "model", "model_not_found")


def test_json_and_text(client: openai.OpenAI) -> None:
    reference = JFK_REFERENCE.read_text()
    result = transcribe(client, JFK_FLAC)  # default response_format: json
    assert isinstance(result, openai.types.audio.Transcription)
    assert word_error_rate(reference, result.text) <= 0.15, result.text
    assert result.usage is not None and abs(result.usage.seconds - 11.0) < 0.2  # type: ignore[union-attr]
    text = transcribe(client, JFK_FLAC, response_format="text", model="whisper-base")
    assert isinstance(text, str) and word_error_rate(reference, text) <= 0.15, text


def test_verbose_json_with_word_timestamps(client: openai.OpenAI) -> None:
    result = transcribe(client, JFK_FLAC, response_format="verbose_json",
                        timestamp_granularities=["word", "segment"], language="en")
    assert result.language == "english" and abs(result.duration - 11.0) < 0.2
    assert result.words and result.segments
    previous = 0.0
    for word in result.words:
        assert previous - 1e-6 <= word.start <= word.end <= result.duration + 0.05, word
        previous = word.start
    americans = [w for w in result.words if w.word.strip(",.").lower() == "americans"]
    assert americans and abs(americans[0].start - 1.8) <= 1.0, result.words
    assert " ".join(w.word for w in result.words).split() == result.text.split()
    assert all(s.start <= s.end for s in result.segments)
    segment_only = transcribe(client, JFK_FLAC, response_format="verbose_json")
    assert segment_only.segments and segment_only.words is None


@pytest.mark.parametrize(
    "path, extra",
    [
        (PYANNOTE_SAMPLE, {}),  # the speaker count found on its own
        # On the AMI excerpts the diarizer alone may give one speaker all the words (dev01: the
        # second speaker's only own turn is 0.3 s of overlap); the extra num_speakers fixes that.
        (AMI_DIR / "dev00.wav", {"num_speakers": "2"}),
        (AMI_DIR / "dev01.wav", {"num_speakers": "2"}),
    ],
    ids=["sample", "dev00", "dev01"],
)
def test_diarized_json_carries_two_speakers(client: openai.OpenAI, path: Path, extra: dict[str, str]) -> None:
    result = transcribe(client, path, response_format="diarized_json", extra_body=extra)
    assert isinstance(result, openai.types.audio.TranscriptionDiarized)
    assert result.task == "transcribe" and abs(result.duration - 30.0) < 0.5
    assert {s.speaker for s in result.segments} == {"A", "B"}, [s.speaker for s in result.segments]
    assert result.segments[0].speaker == "A"
    assert all(s.type == "transcript.text.segment" and s.start <= s.end for s in result.segments)
    assert [s.start for s in result.segments] == sorted(s.start for s in result.segments)
    assert result.text and all(s.text for s in result.segments)


def _check_cues(cues: list[tuple[float, float, str]], duration: float) -> set[str]:
    assert cues
    starts = [start for start, _, _ in cues]
    assert starts == sorted(starts), "cue start times must be monotonic"
    assert all(0 <= start <= end <= duration + 0.05 for start, end, _ in cues)
    speakers = set()
    for _, _, text in cues:
        match = SPEAKER_PREFIX.match(text)
        assert match, text
        speakers.add(match.group(1))
    return speakers


def test_srt_and_vtt_parse_with_speakers(client: openai.OpenAI) -> None:
    subtitles = transcribe(client, PYANNOTE_SAMPLE, response_format="srt", extra_body={"num_speakers": "2"})
    assert isinstance(subtitles, str)
    cues = [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in srt.parse(subtitles)]
    assert len(_check_cues(cues, 30.0)) == 2
    vtt = transcribe(client, PYANNOTE_SAMPLE, response_format="vtt", extra_body={"num_speakers": "2"})
    captions = webvtt.from_string(vtt).captions
    parsed = [(_seconds(c.start), _seconds(c.end), c.text) for c in captions]
    assert len(_check_cues(parsed, 30.0)) == 2


def _seconds(stamp: str) -> float:
    parts = [float(p) for p in stamp.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def test_tsv_extra_format(served: Served) -> None:
    with served.client() as http, JFK_FLAC.open("rb") as fh:
        response = http.post("/v1/audio/transcriptions", files={"file": ("jfk.flac", fh)},
                             data={"model": "whisper-1", "response_format": "tsv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/tab-separated")
    rows = [line.split("\t") for line in response.text.splitlines()]
    assert rows[0] == ["start", "end", "text"] and len(rows) >= 2
    times = [(int(a), int(b)) for a, b, _ in rows[1:]]
    assert all(a <= b <= 11_050 for a, b in times) and times == sorted(times)
    assert word_error_rate(JFK_REFERENCE.read_text(), " ".join(r[2] for r in rows[1:])) <= 0.15


def test_translation_to_english(client: openai.OpenAI) -> None:
    with (AISHELL_DIR / "BAC009S0764W0121.wav").open("rb") as fh:
        result = client.audio.translations.create(file=fh, model="whisper-1", response_format="verbose_json")
    assert result.language == "chinese"
    assert result.text.strip() and not re.search(r"[\u4e00-\u9fff]", result.text), result.text
    assert re.search(r"[A-Za-z]{3,}", result.text), result.text
    with (AISHELL_DIR / "BAC009S0764W0121.wav").open("rb") as fh:
        plain = client.audio.translations.create(file=fh, model="whisper-1", response_format="text")
    assert isinstance(plain, str) and not re.search(r"[\u4e00-\u9fff]", plain), plain


@pytest.mark.parametrize(
    "kwargs, error, status, param, code",
    [
        ({"model": "gpt-4o-transcribe"}, openai.NotFoundError, 404, "model", "model_not_found"),
        ({"response_format": "docx"}, openai.BadRequestError, 400, "response_format", "invalid_value"),
        ({"timestamp_granularities": ["sentence"]}, openai.BadRequestError, 400,
         "timestamp_granularities", "invalid_value"),
        ({"temperature": 3.0}, openai.BadRequestError, 400, "temperature", "invalid_value"),
        ({"language": "klingon"}, openai.UnprocessableEntityError, 422, "language", "invalid_parameter"),
        ({"extra_body": {"num_speakers": "0"}}, openai.UnprocessableEntityError, 422, "num_speakers",
         "invalid_parameter"),
    ],
)
def test_documented_errors_raise_matching_client_class(
    client: openai.OpenAI, kwargs: dict[str, Any], error: type[openai.APIStatusError], status: int,
    param: str, code: str,
) -> None:
    with pytest.raises(error) as caught:
        transcribe(client, JFK_FLAC, **kwargs)
    assert_envelope(caught.value, status, param, code)


def test_undecodable_upload_is_bad_request(client: openai.OpenAI, tmp_path: Path) -> None:
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio at all\n" * 100)
    with pytest.raises(openai.BadRequestError) as caught:
        transcribe(client, notes)
    assert_envelope(caught.value, 400, None, "invalid_audio")


def test_missing_file_is_400_envelope(served: Served) -> None:
    with served.client() as http:
        for path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
            response = http.post(path, data={"model": "whisper-1"})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "missing_file"
            assert response.json()["error"]["param"] == "file"


def test_detect_language(served: Served) -> None:
    expected = {JFK_FLAC: "en", AISHELL_DIR / "BAC009S0764W0122.wav": "zh"}
    with served.client() as http:
        for path, language in expected.items():
            with path.open("rb") as fh:
                response = http.post("/detect-language", files={"audio_file": (path.name, fh)})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["language"] == language and body["probability"] >= 0.5, body
            alternatives = body["alternatives"]
            assert alternatives[0]["language"] == language and 2 <= len(alternatives) <= 5
            probabilities = [a["probability"] for a in alternatives]
            assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
            assert body["analysed_seconds"] <= 30.0
        missing = http.post("/detect-language", data={"top_k": "3"})
        assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_file"


def test_transcribe_output_formats(served: Served) -> None:
    """The seed-compatible /transcribe: subtitles with speaker names and whisperx's line options."""
    with served.client() as http, PYANNOTE_SAMPLE.open("rb") as fh:
        response = http.post("/transcribe?output_format=srt&max_line_width=24&max_line_count=2",
                             files={"audio_file": ("sample.wav", fh)})
    assert response.status_code == 200, response.text
    cues = list(srt.parse(response.text))
    assert len(_check_cues([(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in cues],
                           30.0)) == 2
    for cue in cues:
        lines = SPEAKER_PREFIX.sub("", cue.content).split("\n")
        assert len(lines) <= 2 and all(len(line.replace(" ", "")) <= 24 for line in lines), cue.content
    with served.client() as http, JFK_FLAC.open("rb") as fh:
        text = http.post("/transcribe", files={"audio_file": ("jfk.flac", fh)},
                         data={"output_format": "text", "diarize": "false"})
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert word_error_rate(JFK_REFERENCE.read_text(), text.text) <= 0.15, text.text
    assert "[SPEAKER" not in text.text  # no diarization, no speaker names
    with served.client() as http, JFK_FLAC.open("rb") as fh:
        bad = http.post("/transcribe?output_format=docx", files={"audio_file": ("jfk.flac", fh)})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "output_format"


def test_openapi_documents_every_field(served: Served) -> None:
    with served.client() as http:
        spec = http.get("/docs.json").json()
    components = spec["components"]["schemas"]
    for path in ("/v1/audio/transcriptions", "/v1/audio/translations", "/transcribe", "/detect-language"):
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        fields = components[ref.rsplit("/", 1)[1]]["properties"]
        for name, field in fields.items():
            assert field.get("description"), (path, name)
    openai_fields = components[spec["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
                               ["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]["properties"]
    assert {"file", "model", "language", "prompt", "response_format", "temperature",
            "timestamp_granularities[]"} <= set(openai_fields)
    assert all(f.get("examples") for n, f in openai_fields.items() if n != "file")
    for path in ("/jobs/transcribe/submit", "/v1/audio/transcriptions/jobs/submit", "/jobs/{task_id}"):
        assert path in spec["paths"]
