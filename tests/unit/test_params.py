from __future__ import annotations

import pytest

from whisperx_service.chinese import ZhScript
from whisperx_service.errors import InvalidParameter
from whisperx_service.params import normalize_language, parse_transcribe_params


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
