from __future__ import annotations

import pytest

from whisperx_service.chinese import ZhScript
from whisperx_service.errors import InvalidParameter
from whisperx_service.params import normalize_language, parse_openai_params, parse_transcribe_params
from whisperx_service.schema import SpeakerCounts


def parse(form: dict[str, str | None] | None = None, query: dict[str, str] | None = None):
    return parse_transcribe_params(form or {}, query or {}, max_speakers_limit=32, default_zh_script="simplified")


def test_defaults() -> None:
    params = parse()
    assert params.language is None and params.diarize is True
    assert params.speakers.minimum is None and params.speakers.maximum is None and params.speakers.exact is None
    assert params.zh_script is ZhScript.simplified and params.task == "transcribe"


def test_query_parameters_like_the_seed_api() -> None:
    params = parse(query={"min_speakers": "2", "max_speakers": "4"})
    assert (params.speakers.minimum, params.speakers.maximum) == (2, 4)


def test_form_wins_over_query() -> None:
    params = parse(form={"max_speakers": "3"}, query={"max_speakers": "5"})
    assert params.speakers.maximum == 3


@pytest.mark.parametrize(
    "form, param",
    [
        ({"min_speakers": "3", "max_speakers": "2"}, "min_speakers"),
        ({"min_speakers": "-1"}, "min_speakers"),
        ({"max_speakers": "0"}, "max_speakers"),
        ({"num_speakers": "1.5"}, "num_speakers"),
        ({"num_speakers": "three"}, "num_speakers"),
        ({"num_speakers": "33"}, "num_speakers"),
        ({"num_speakers": "5", "max_speakers": "4"}, "num_speakers"),
        ({"language": "elvish"}, "language"),
        ({"zh_script": "latin"}, "zh_script"),
        ({"diarize": "perhaps"}, "diarize"),
        ({"task": "summarize"}, "task"),
        ({"overlapping_speakers": "some"}, "overlapping_speakers"),
    ],
)
def test_bad_values_name_their_parameter(form: dict[str, str | None], param: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse(form=form)
    assert info.value.param == param
    assert info.value.status_code == 422
    assert info.value.to_body()["error"]["param"] == param


@pytest.mark.parametrize("raw, code", [("zh", "zh"), ("Chinese", "zh"), ("EN", "en"), ("auto", None)])
def test_language_codes_and_names(raw: str, code: str | None) -> None:
    assert normalize_language(raw) == code


def test_diarize_false_and_script_choice() -> None:
    params = parse(form={"diarize": "false", "zh_script": "Traditional"})
    assert params.diarize is False and params.zh_script is ZhScript.traditional


def test_overlapping_speakers_on_both_apis() -> None:
    assert parse().overlapping_speakers is False
    assert parse(query={"overlapping_speakers": "true"}).overlapping_speakers is True
    assert parse(form={"overlapping_speakers": "false"}, query={"overlapping_speakers": "true"}).overlapping_speakers is False
    limits = {"served_models": {"whisper-1": "whisper-base"}, "max_speakers_limit": 32, "default_zh_script": "simplified"}
    plain = parse_openai_params({}, [], task="transcribe", **limits)  # type: ignore[arg-type]
    assert plain.transcribe.overlapping_speakers is False and plain.transcribe.diarize is False
    asked = parse_openai_params({"overlapping_speakers": "true"}, [], task="transcribe", **limits)  # type: ignore[arg-type]
    assert asked.transcribe.overlapping_speakers is True and asked.transcribe.diarize is True  # it diarizes


@pytest.mark.parametrize(
    "counts, found, expected",
    [
        (SpeakerCounts(), 1, None),
        (SpeakerCounts(minimum=2, maximum=4), 3, None),
        (SpeakerCounts(exact=3), 3, None),
        (SpeakerCounts(minimum=4), 2, "min_speakers=4 could not be met: 2 speakers found in 12.5 s of speech; "
                                       "too little speech or too few distinct voices to tell more apart"),
        (SpeakerCounts(exact=3), 1, "num_speakers=3 could not be met: 1 speaker found in 12.5 s of speech; "
                                    "too little speech or too few distinct voices to tell more apart"),
        (SpeakerCounts(maximum=2), 3, "max_speakers=2 could not be met: 3 speakers found in 12.5 s of speech"),
        (SpeakerCounts(exact=2), 3, "num_speakers=2 could not be met: 3 speakers found in 12.5 s of speech"),
    ],
)
def test_unmet_speaker_hints_are_explained(counts: SpeakerCounts, found: int, expected: str | None) -> None:
    assert counts.unmet(found, 12.5) == expected
