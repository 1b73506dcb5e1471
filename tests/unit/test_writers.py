"""The shared output writers (whisperx's writers underneath) and the OpenAI field parsing."""

from __future__ import annotations

import json

import pytest
import srt
import webvtt

from whisperx_service.errors import InvalidParameter, ModelNotFound, UnsupportedValue
from whisperx_service.params import SubtitleOptions, parse_openai_params, parse_output_format
from whisperx_service.schema import (
    AlignmentInfo,
    DiarizationInfo,
    Segment,
    SpeakerTurn,
    TranscriptionResponse,
    Word,
    WordTimestampMethod,
)
from whisperx_service.speakers import assign_speakers
from whisperx_service.writers import (
    full_text,
    openai_diarized,
    openai_verbose,
    render_openai,
    render_transcribe,
    speaker_letters,
)


def _segment(start: float, words: list[str], speaker: str | None, step: float = 0.5) -> Segment:
    timed = [Word(word=w, start=round(start + i * step, 3), end=round(start + i * step + 0.4, 3),
                  score=0.9, speaker=speaker) for i, w in enumerate(words)]
    return Segment(start=start, end=timed[-1].end or start, text=" ".join(words), speaker=speaker, words=timed)


def _response(segments: list[Segment], language: str = "en") -> TranscriptionResponse:
    return TranscriptionResponse(
        segments=segments, word_segments=[w for s in segments for w in s.words], language=language,
        duration=max((s.end for s in segments), default=0.0) + 1.0,
        alignment=AlignmentInfo(method=WordTimestampMethod.whisper), diarization=DiarizationInfo(enabled=True),
    )


MEETING = _response([
    _segment(0.5, "And so my fellow Americans".split(), "SPEAKER_00"),
    _segment(4.0, "ask not what your country can do for you".split(), "SPEAKER_01"),
    _segment(3700.0, "ask what you can do for your country".split(), "SPEAKER_00"),  # past one hour
])


def test_srt_cues_parse_with_speakers_and_times() -> None:
    text = render_transcribe(MEETING, "srt", SubtitleOptions()).body
    cues = list(srt.parse(text))
    assert [c.content.split("]:")[0] for c in cues] == ["[SPEAKER_00", "[SPEAKER_01", "[SPEAKER_00"]
    assert cues[0].start.total_seconds() == pytest.approx(0.5)
    assert cues[1].end.total_seconds() == pytest.approx(MEETING.segments[1].end)
    assert cues[2].start.total_seconds() == pytest.approx(3700.0)
    starts = [c.start for c in cues]
    assert starts == sorted(starts) and all(c.start < c.end for c in cues)


def test_vtt_parses_and_wraps_lines() -> None:
    options = SubtitleOptions(max_line_width=16, max_line_count=2)
    text = render_transcribe(MEETING, "vtt", options).body
    captions = webvtt.from_string(text).captions
    assert len(captions) > 3, "the width limit must split the segments into more cues"
    speaker_of = {w.word: s.speaker for s in MEETING.segments[:2] for w in s.words}
    for caption in captions[:-1]:
        speaker, body = caption.text.split("]: ", 1)
        lines = body.split("\n")
        assert len(lines) <= 2
        # whisperx counts word characters against the width (not the joining spaces)
        assert all(len(line.replace(" ", "")) <= 16 for line in lines), caption.text
        assert {speaker_of[w] for w in body.split()} == {speaker.lstrip("[")}, "a cue never mixes speakers"
    assert captions[0].text.startswith("[SPEAKER_00]: ")
    assert captions[-1].end == "01:01:43.900"  # hours appear past one hour


def test_highlight_words_underlines_each_word_once() -> None:
    one = _response([MEETING.segments[0]])
    text = render_transcribe(one, "srt", SubtitleOptions(highlight_words=True)).body
    cues = list(srt.parse(text))
    underlined = [c for c in cues if "<u>" in c.content]
    assert len(underlined) == len(one.segments[0].words)
    assert all(c.content.count("<u>") == 1 for c in underlined)


def test_segments_without_timed_words_are_written_whole() -> None:
    bare = Segment(start=1.0, end=2.0, text="untimed words", speaker="SPEAKER_00")
    response = _response([MEETING.segments[0], bare])
    cues = list(srt.parse(render_transcribe(response, "srt", SubtitleOptions()).body))
    assert cues[-1].content == "[SPEAKER_00]: untimed words"
    assert cues[-1].start.total_seconds() == 1.0


def test_text_and_tsv() -> None:
    text = render_transcribe(MEETING, "text", SubtitleOptions()).body
    assert text.splitlines()[1] == "[SPEAKER_01]: ask not what your country can do for you"
    rows = render_transcribe(MEETING, "tsv", SubtitleOptions()).body.splitlines()
    assert rows[0] == "start\tend\ttext"
    assert rows[3].split("\t")[:2] == ["3700000", str(round(MEETING.segments[2].end * 1000))]


def test_openai_shapes() -> None:
    verbose = openai_verbose(MEETING, task="transcribe", granularities=frozenset({"word", "segment"}),
                             temperature=0.0)
    assert verbose.language == "english" and verbose.text == full_text(MEETING)
    assert verbose.words is not None and len(verbose.words) == len(MEETING.word_segments)
    assert verbose.segments is not None and [s.id for s in verbose.segments] == [0, 1, 2]
    only_words = openai_verbose(MEETING, task="transcribe", granularities=frozenset({"word"}), temperature=0)
    assert only_words.segments is None
    diarized = openai_diarized(MEETING)
    assert [s.speaker for s in diarized.segments] == ["A", "B", "A"]
    assert {s.type for s in diarized.segments} == {"transcript.text.segment"}
    body = json.loads(render_openai(MEETING, "json", task="transcribe", granularities=frozenset(),
                                    temperature=0).body)
    assert body["text"] == full_text(MEETING) and body["usage"]["seconds"] == MEETING.duration
    assert render_openai(MEETING, "text", task="transcribe", granularities=frozenset(),
                         temperature=0).body == full_text(MEETING) + "\n"


def test_chinese_text_joins_without_spaces() -> None:
    zh = _response([_segment(0.0, ["甚至", "出现"], None), _segment(2.0, ["交易"], None)], language="zh")
    # Words joined by the language rule: no space between two CJK characters, ever (text.py).
    assert full_text(zh) == "甚至出现交易"


def test_speaker_letters_beyond_z() -> None:
    labels = speaker_letters([f"S{i}" for i in range(28)] + ["S0"])
    assert labels["S0"] == "A" and labels["S25"] == "Z" and labels["S26"] == "AA" and labels["S27"] == "AB"


LIMITS = {"served_models": {"whisper-base": "whisper-base", "whisper-1": "whisper-base"},
          "max_speakers_limit": 32, "default_zh_script": "simplified"}


def test_openai_params() -> None:
    parsed = parse_openai_params({"model": "whisper-1", "response_format": "diarized_json", "prompt": "Kennedy"},
                                 ["word"], task="transcribe", **LIMITS)  # type: ignore[arg-type]
    assert parsed.transcribe.diarize and parsed.transcribe.prompt == "Kennedy"
    assert parsed.granularities == {"word"}
    plain = parse_openai_params({}, [], task="translate", **LIMITS)  # type: ignore[arg-type]
    assert plain.model == "whisper-base" and not plain.transcribe.diarize and plain.transcribe.task == "translate"
    assert plain.granularities == {"segment"}
    with_speakers = parse_openai_params({"num_speakers": "2"}, [], task="transcribe", **LIMITS)  # type: ignore[arg-type]
    assert with_speakers.transcribe.diarize and with_speakers.transcribe.speakers.exact == 2


@pytest.mark.parametrize(
    "form, granularities, task, error, param",
    [
        ({"model": "gpt-4o-transcribe"}, [], "transcribe", ModelNotFound, "model"),
        ({"response_format": "xml"}, [], "transcribe", UnsupportedValue, "response_format"),
        ({"response_format": "diarized_json"}, [], "translate", UnsupportedValue, "response_format"),
        ({}, ["sentence"], "transcribe", UnsupportedValue, "timestamp_granularities"),
        ({"temperature": "hot"}, [], "transcribe", UnsupportedValue, "temperature"),
        ({"temperature": "1.5"}, [], "transcribe", UnsupportedValue, "temperature"),
        ({"num_speakers": "0"}, [], "transcribe", InvalidParameter, "num_speakers"),
        ({"language": "klingon"}, [], "transcribe", InvalidParameter, "language"),
    ],
)
def test_openai_param_errors(
    form: dict[str, str], granularities: list[str], task: str, error: type[Exception], param: str
) -> None:
    with pytest.raises(error) as caught:
        parse_openai_params(form, granularities, task=task, **LIMITS)  # type: ignore[arg-type]
    assert getattr(caught.value, "param", None) == param
    status = {ModelNotFound: 404, UnsupportedValue: 400, InvalidParameter: 422}[error]  # type: ignore[index]
    assert getattr(caught.value, "status_code", None) == status


def test_output_format_is_checked() -> None:
    assert parse_output_format({"output_format": "SRT"}, {}) == "srt"
    assert parse_output_format({}, {"output_format": "vtt"}) == "vtt"
    with pytest.raises(InvalidParameter):
        parse_output_format({"output_format": "docx"}, {})


def test_overlapping_speakers_only_when_asked_in_json_and_verbose_json() -> None:
    turns = [SpeakerTurn(start=0.0, end=4.5, speaker="SPEAKER_00"), SpeakerTurn(start=4.0, end=9.0, speaker="SPEAKER_01")]
    for overlapping in (False, True):
        segments = assign_speakers(MEETING.segments[:2], turns, overlapping=overlapping)
        response = _response(segments)
        words = json.loads(render_transcribe(response, "json", SubtitleOptions()).body)["word_segments"]
        verbose = json.loads(render_openai(response, "verbose_json", task="transcribe",
                                           granularities=frozenset({"word"}), temperature=0).body)["words"]
        for listed in (words, verbose):
            if overlapping:  # "ask" (4.0-4.4 s) lies in both turns; 0.4 s of each: the earlier turn wins
                assert listed[5]["speakers"] == ["SPEAKER_00", "SPEAKER_01"] and listed[5]["speaker"] == "SPEAKER_00"
                assert all(w["speakers"][0] == w["speaker"] for w in listed)
            else:
                assert all("speakers" not in w for w in listed)
