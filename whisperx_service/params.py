"""Request parameters of /transcribe: read from form fields first, then the query string.

The old FastAPI ``api.py`` took ``min_speakers``/``max_speakers`` as query parameters; clients
that send them as form fields work too. Every bad value becomes an `InvalidParameter` (422)
that names the parameter.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .chinese import ZhScript
from .errors import InvalidParameter
from .naming import MAX_KNOWN_SPEAKERS
from .schema import UNKNOWN_SPEAKERS, SpeakerCountError, SpeakerCounts

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_TASKS = frozenset({"transcribe", "translate"})
# language_mode: one language for the whole recording (default), or each chunk its own.
RECORDING, PER_SEGMENT = "recording", "per_segment"
_LANGUAGE_MODES = {"recording": RECORDING, "whole": RECORDING, "auto": RECORDING,
                   "per_segment": PER_SEGMENT, "per-segment": PER_SEGMENT, "segment": PER_SEGMENT}


@dataclass(frozen=True)
class SpeakerReference:
    """A known speaker's name and voice sample, as sent (any audio container; decoded later)."""

    name: str
    data: bytes


@dataclass(frozen=True)
class TranscribeParams:
    language: str | None = None
    speakers: SpeakerCounts = UNKNOWN_SPEAKERS
    diarize: bool = True
    zh_script: ZhScript = ZhScript.simplified
    task: str = "transcribe"
    prompt: str | None = None  # Whisper's initial prompt (OpenAI's `prompt`)
    speaker_references: tuple[SpeakerReference, ...] = ()  # names for diarized speakers
    speaker_ids: tuple[str, ...] = ()  # stored voices (POST /v1/speakers) naming them too
    # recording: one language, decided over the recording; per_segment: each speech chunk
    # detected and labelled on its own (code-switching). A given `language` wins over both.
    language_mode: str = RECORDING


def _pick(name: str, form: Mapping[str, str | None], query: Mapping[str, str]) -> str | None:
    value = form.get(name)
    if value is None or value == "":
        value = query.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _whole(name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw, 10)
    except ValueError:
        raise InvalidParameter(f"{name} must be a whole number, got {raw[:40]!r}", param=name) from None


def _count(name: str, raw: str | None, limit: int) -> int | None:
    value = _whole(name, raw)
    if value is not None and not 1 <= value <= limit:
        raise InvalidParameter(f"{name} must lie in 1..{limit}, got {value}", param=name)
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
    exact, low, high = (_whole(name, _pick(name, form, query))
                        for name in ("num_speakers", "min_speakers", "max_speakers"))
    try:
        speakers = SpeakerCounts(exact=exact, minimum=low, maximum=high).check(max_speakers_limit)
    except SpeakerCountError as error:
        raise InvalidParameter(str(error), param=error.param) from None
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
    mode_raw = (_pick("language_mode", form, query) or RECORDING).lower()
    if mode_raw not in _LANGUAGE_MODES:
        raise InvalidParameter(f"language_mode must be recording or per_segment, got {mode_raw[:40]!r}",
                               param="language_mode")
    return TranscribeParams(
        language=normalize_language(_pick("language", form, query)),
        speakers=speakers,
        diarize=_flag("diarize", _pick("diarize", form, query), True),
        zh_script=script,
        task=task,
        language_mode=_LANGUAGE_MODES[mode_raw],
    )


# --- output options of /transcribe and the OpenAI-compatible /v1/audio/* ----------------------

TRANSCRIBE_FORMATS = ("json", "text", "srt", "vtt", "tsv")
OPENAI_FORMATS = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json", "tsv")
GRANULARITIES = frozenset({"word", "segment"})


@dataclass(frozen=True)
class SubtitleOptions:
    """whisperx's subtitle options (whisperx.utils.SubtitlesWriter)."""

    max_line_width: int | None = None
    max_line_count: int | None = None
    highlight_words: bool = False

    def as_whisperx(self) -> dict[str, int | bool | None]:
        return {"max_line_width": self.max_line_width, "max_line_count": self.max_line_count,
                "highlight_words": self.highlight_words}


def parse_subtitle_options(form: Mapping[str, str | None], query: Mapping[str, str]) -> SubtitleOptions:
    return SubtitleOptions(
        max_line_width=_count("max_line_width", _pick("max_line_width", form, query), 10_000),
        max_line_count=_count("max_line_count", _pick("max_line_count", form, query), 1_000),
        highlight_words=_flag("highlight_words", _pick("highlight_words", form, query), False),
    )


def parse_output_format(form: Mapping[str, str | None], query: Mapping[str, str]) -> str:
    """/transcribe's ``output_format`` (422 on a bad value, like its other parameters)."""
    value = (_pick("output_format", form, query) or "json").lower()
    if value not in TRANSCRIBE_FORMATS:
        raise InvalidParameter(
            f"output_format must be one of {', '.join(TRANSCRIBE_FORMATS)}, got {value[:40]!r}",
            param="output_format",
        )
    return value


@dataclass(frozen=True)
class OpenAIParams:
    model: str
    response_format: str
    granularities: frozenset[str]
    temperature: float
    transcribe: TranscribeParams


def parse_openai_params(
    form: Mapping[str, str | None],
    granularities: list[str],
    *,
    task: str,
    served_models: Mapping[str, str],
    max_speakers_limit: int,
    default_zh_script: str,
) -> OpenAIParams:
    """OpenAI's audio fields; like OpenAI, a bad model is 404 and a bad value 400.

    `served_models` maps each accepted model name (the store name, the ``whisper-1`` alias) to
    the served model. Speakers are diarized for diarized_json or when a speaker count is given.
    """
    from .errors import ModelNotFound, UnsupportedValue

    empty: dict[str, str] = {}
    model = _pick("model", form, empty) or next(iter(served_models))
    if model not in served_models:
        raise ModelNotFound(
            f"The model `{model[:60]}` does not exist; this service serves "
            f"{', '.join(sorted(served_models))}", param="model",
        )
    response_format = (_pick("response_format", form, empty) or "json").lower()
    allowed = OPENAI_FORMATS if task == "transcribe" else tuple(f for f in OPENAI_FORMATS if f != "diarized_json")
    if response_format not in allowed:
        raise UnsupportedValue(
            f"response_format must be one of {', '.join(allowed)}, got {response_format[:40]!r}",
            param="response_format",
        )
    wanted = {g.strip().lower() for g in granularities if g.strip()}
    if not wanted <= GRANULARITIES:
        raise UnsupportedValue(
            f"timestamp_granularities[] takes word and segment, got {sorted(wanted - GRANULARITIES)}",
            param="timestamp_granularities",
        )
    raw_temperature = _pick("temperature", form, empty) or "0"
    try:
        temperature = float(raw_temperature)
    except ValueError:
        raise UnsupportedValue(f"temperature must be a number, got {raw_temperature[:40]!r}",
                               param="temperature") from None
    if not 0.0 <= temperature <= 1.0:
        raise UnsupportedValue(f"temperature must lie in 0..1, got {temperature}", param="temperature")
    speaker_fields = ("num_speakers", "min_speakers", "max_speakers")
    diarize = response_format == "diarized_json" or any(_pick(f, form, empty) for f in speaker_fields)
    base = parse_transcribe_params(
        {**{f: form.get(f) for f in (*speaker_fields, "language", "language_mode")},
         "diarize": "true" if diarize else "false", "task": task},
        empty, max_speakers_limit=max_speakers_limit, default_zh_script=default_zh_script,
    )
    prompt = _pick("prompt", form, empty)
    return OpenAIParams(
        model=model, response_format=response_format,
        granularities=frozenset(wanted or {"segment"}), temperature=temperature,
        transcribe=TranscribeParams(**{**base.__dict__, "prompt": prompt}),
    )


# --- known speakers (OpenAI's known_speaker_names[] / known_speaker_references[]) -------------

MAX_NAME_CHARS = 64
MAX_REFERENCE_BYTES = 4 << 20  # 10 s of audio in any sane container
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=[^;,]*)*;base64,(?P<data>.*)", re.S)


def parse_speaker_references(names: Sequence[str] | None, references: Sequence[str] | None,
                             ) -> tuple[SpeakerReference, ...]:
    """Names paired with their voice samples (data URLs of audio, 2-10 s); 400 naming the field
    for anything else."""
    from .errors import UnsupportedValue

    names = [n.strip() for n in names or [] if n.strip()]
    references = [r.strip() for r in references or [] if r.strip()]
    if not names and not references:
        return ()
    if len(names) > MAX_KNOWN_SPEAKERS:
        raise UnsupportedValue(f"at most {MAX_KNOWN_SPEAKERS} known speakers, got {len(names)} names",
                               param="known_speaker_names")
    if len(names) != len(references):
        raise UnsupportedValue(
            f"each known speaker needs one voice sample: got {len(names)} names and "
            f"{len(references)} samples", param="known_speaker_references")
    if len(set(names)) != len(names) or any(len(n) > MAX_NAME_CHARS for n in names):
        raise UnsupportedValue(f"known speaker names must be distinct, of at most {MAX_NAME_CHARS} "
                               "characters", param="known_speaker_names")
    out = []
    for name, reference in zip(names, references, strict=True):
        match = _DATA_URL.fullmatch(reference)
        kind = (match.group("type") or "") if match else ""
        if match is None or not kind.startswith(("audio/", "video/", "application/octet-stream")):
            raise UnsupportedValue(
                f"the voice sample of {name[:40]!r} must be a data URL of audio "
                "(data:audio/wav;base64,...)", param="known_speaker_references")
        if len(match.group("data")) > MAX_REFERENCE_BYTES * 4 // 3 + 4:
            raise UnsupportedValue(f"the voice sample of {name[:40]!r} is over "
                                   f"{MAX_REFERENCE_BYTES >> 20} MiB", param="known_speaker_references")
        try:
            data = base64.b64decode(match.group("data"), validate=True)
        except (binascii.Error, ValueError):
            raise UnsupportedValue(f"the voice sample of {name[:40]!r} is not valid base64",
                                   param="known_speaker_references") from None
        out.append(SpeakerReference(name=name, data=data))
    return tuple(out)


def parse_speaker_ids(ids: Sequence[str] | None) -> tuple[str, ...]:
    """`known_speaker_ids[]`: ids of stored voices, well formed and distinct (400 naming the field);
    whether each exists is known only to the store (`whisperx_service.voices.resolve_voices`)."""
    from .errors import UnsupportedValue
    from .voices import is_voice_id

    ids = [i.strip() for i in ids or [] if i.strip()]
    bad = [i for i in ids if not is_voice_id(i)]
    if bad:
        raise UnsupportedValue(f"{bad[0][:60]!r} is not a stored voice's id (POST /v1/speakers gives them)",
                               param="known_speaker_ids")
    if len(set(ids)) != len(ids):
        raise UnsupportedValue("known_speaker_ids[] names one voice twice", param="known_speaker_ids")
    return tuple(ids)


def with_speaker_references(params: TranscribeParams, references: tuple[SpeakerReference, ...],
                            *, diarize_given: bool, speaker_ids: tuple[str, ...] = ()) -> TranscribeParams:
    """`params` naming speakers from `references` and stored voices `speaker_ids` (together at
    most `MAX_KNOWN_SPEAKERS`): that diarizes, unless `diarize=false` was sent."""
    from .errors import UnsupportedValue

    if not references and not speaker_ids:
        return params
    if len(references) + len(speaker_ids) > MAX_KNOWN_SPEAKERS:
        raise UnsupportedValue(
            f"at most {MAX_KNOWN_SPEAKERS} known speakers, got {len(references)} samples and "
            f"{len(speaker_ids)} stored voices", param="known_speaker_ids" if speaker_ids else "known_speaker_names")
    if diarize_given and not params.diarize:
        raise InvalidParameter("known speakers are named by diarization: drop diarize=false",
                               param="diarize")
    return replace(params, diarize=True, speaker_references=references, speaker_ids=speaker_ids)


def parse_stream(raw: str | None, response_format: str, streamable: Sequence[str], *, openai: bool) -> bool:
    """`stream=true`: only for formats that can be sent piece by piece (400 as OpenAI, else 422)."""
    from .errors import UnsupportedValue

    wanted = _flag("stream", raw.strip() if raw else None, False)
    if wanted and response_format not in streamable:
        message = f"stream=true takes response formats {', '.join(streamable)}, not {response_format!r}"
        raise (UnsupportedValue if openai else InvalidParameter)(message, param="stream")
    return wanted
