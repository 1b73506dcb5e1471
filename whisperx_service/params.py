"""Request parameters of /transcribe: read from form fields first, then the query string.

The old FastAPI ``api.py`` took ``min_speakers``/``max_speakers`` as query parameters; clients
that send them as form fields work too. Every bad value becomes an `InvalidParameter` (422)
that names the parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .chinese import ZhScript
from .errors import InvalidParameter

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_TASKS = frozenset({"transcribe", "translate"})


@dataclass(frozen=True)
class TranscribeParams:
    language: str | None = None
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    diarize: bool = True
    zh_script: ZhScript = ZhScript.simplified
    task: str = "transcribe"


def _pick(name: str, form: Mapping[str, str | None], query: Mapping[str, str]) -> str | None:
    value = form.get(name)
    if value is None or value == "":
        value = query.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _count(name: str, raw: str | None, limit: int) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw, 10)
    except ValueError:
        raise InvalidParameter(f"{name} must be a whole number, got {raw[:40]!r}", param=name) from None
    if value < 1:
        raise InvalidParameter(f"{name} must be at least 1, got {value}", param=name)
    if value > limit:
        raise InvalidParameter(f"{name} must be at most {limit}, got {value}", param=name)
    return value


def _flag(name: str, raw: str | None, default: bool) -> bool:
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise InvalidParameter(f"{name} must be true or false, got {raw[:40]!r}", param=name)


def normalize_language(raw: str | None) -> str | None:
    """Accept a Whisper language code ("zh") or name ("chinese", "Mandarin"); None = detect."""
    if raw is None or raw.lower() in {"auto", "detect"}:
        return None
    from whisperx.utils import LANGUAGES, TO_LANGUAGE_CODE

    key = raw.lower()
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return str(TO_LANGUAGE_CODE[key])
    raise InvalidParameter(
        f"unknown language {raw[:40]!r}: use a Whisper language code such as en, zh, de",
        param="language",
    )


def parse_transcribe_params(
    form: Mapping[str, str | None],
    query: Mapping[str, str],
    *,
    max_speakers_limit: int,
    default_zh_script: str,
) -> TranscribeParams:
    num = _count("num_speakers", _pick("num_speakers", form, query), max_speakers_limit)
    low = _count("min_speakers", _pick("min_speakers", form, query), max_speakers_limit)
    high = _count("max_speakers", _pick("max_speakers", form, query), max_speakers_limit)
    if low is not None and high is not None and low > high:
        raise InvalidParameter(
            f"min_speakers ({low}) is greater than max_speakers ({high})", param="min_speakers"
        )
    if num is not None and ((low is not None and num < low) or (high is not None and num > high)):
        raise InvalidParameter("num_speakers lies outside min_speakers..max_speakers", param="num_speakers")
    script_raw = _pick("zh_script", form, query) or default_zh_script
    try:
        script = ZhScript(script_raw.lower())
    except ValueError:
        raise InvalidParameter(
            f"zh_script must be simplified, traditional or original, got {script_raw[:40]!r}",
            param="zh_script",
        ) from None
    task = (_pick("task", form, query) or "transcribe").lower()
    if task not in _TASKS:
        raise InvalidParameter(f"task must be transcribe or translate, got {task[:40]!r}", param="task")
    return TranscribeParams(
        language=normalize_language(_pick("language", form, query)),
        num_speakers=num,
        min_speakers=low,
        max_speakers=high,
        diarize=_flag("diarize", _pick("diarize", form, query), True),
        zh_script=script,
        task=task,
    )
