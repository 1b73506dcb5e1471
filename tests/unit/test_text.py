"""The one joining rule (text.py) on every output path: segments, plain text, SRT, VTT, TSV."""

from __future__ import annotations

import re

import pytest
import srt
import webvtt

from whisperx_service.assemble import sentences_from_whisper_words
from whisperx_service.params import SubtitleOptions
from whisperx_service.schema import (
    AlignmentInfo,
    AsrSegment,
    DiarizationInfo,
    Segment,
    TranscriptionResponse,
    Word,
    WordTimestampMethod,
)
from whisperx_service.text import join_words, tidy_text
from whisperx_service.writers import full_text, render_openai, render_transcribe

# Two CJK characters with a space between them (a highlighted word's tag allowed); line breaks are fine.
CJK_SPACE_CJK = re.compile(r"[\u3000-\u30ff\u4e00-\u9fff\uff00-\uffef](?:</u>)? +(?:<u>)?[\u3000-\u30ff\u4e00-\u9fff\uff00-\uffef]")


@pytest.mark.parametrize("words, language, text", [
    (["首先", "说", "一下", "刚", "刚", "经", "历"], "zh", "首先说一下刚刚经历"),
    (["我们", "用", "Python", "做", "machine", "learning。"], "zh", "我们用Python做machine learning。"),
    ([" And", " so", " my", " fellow", " Americans,"], "en", "And so my fellow Americans,"),
    (["He", "said", "你好", "世界"], "en", "He said 你好世界"),  # a CJK phrase in English stays unspaced
    (["สวัสดี", "ครับ"], "th", "สวัสดีครับ"),
    (["안녕하세요", "여러분"], "ko", "안녕하세요 여러분"),  # Korean is written with spaces
    (["こんにちは", "世界"], None, "こんにちは世界"),
])
def test_join_words(words: list[str], language: str | None, text: str) -> None:
    assert join_words(words, language) == text


def test_tidy_text_drops_spaces_inside_cjk_only() -> None:
    assert tidy_text("首先说一下 刚刚经历 了 一些 event planning", "zh") == "首先说一下刚刚经历了一些event planning"
    assert tidy_text("  so   my fellow ", "en") == "so my fellow"


def test_whisper_timed_words_of_a_chinese_chunk_never_get_spaces() -> None:
    # One space in Whisper's text used to flip the joiner for the whole segment.
    words = [Word(word=w, start=i * 0.3, end=i * 0.3 + 0.3) for i, w in enumerate(["首先", "说", "一下", "刚", "刚。", "好"])]
    chunk = AsrSegment(start=0.0, end=2.0, text="首先说一下 刚刚。好", words=words)
    assert [s.text for s in sentences_from_whisper_words(chunk, "zh")] == ["首先说一下刚刚。", "好"]


def _zh_response(language: str) -> TranscriptionResponse:
    def seg(start: float, words: list[str], speaker: str) -> Segment:
        timed = [Word(word=w, start=round(start + i * 0.4, 3), end=round(start + i * 0.4 + 0.35, 3), speaker=speaker)
                 for i, w in enumerate(words)]
        return Segment(start=start, end=timed[-1].end or start, text=" ".join(words), speaker=speaker, words=timed)

    segments = [seg(0.0, ["首先", "说", "一下", "刚", "刚", "经", "历"], "SPEAKER_00"),
                seg(3.0, ["我们", "用", "Python", "做", "machine", "learning"], "SPEAKER_00"),
                seg(6.0, ["好", "的", "谢", "谢"], "SPEAKER_01")]
    return TranscriptionResponse(
        segments=segments, word_segments=[w for s in segments for w in s.words], language=language,
        duration=9.0, alignment=AlignmentInfo(method=WordTimestampMethod.whisper),
        diarization=DiarizationInfo(enabled=True))


@pytest.mark.parametrize("language", ["zh", "en"])  # even a recording labelled English
@pytest.mark.parametrize("options", [SubtitleOptions(), SubtitleOptions(max_line_width=8, max_line_count=2),
                                     SubtitleOptions(highlight_words=True)])
def test_no_space_between_cjk_characters_on_any_output(language: str, options: SubtitleOptions) -> None:
    response = _zh_response(language)
    bodies = {fmt: render_transcribe(response, fmt, options).body for fmt in ("text", "srt", "vtt", "tsv")}
    bodies["openai_text"] = render_openai(response, "text", task="transcribe", granularities=frozenset(),
                                          temperature=0.0).body
    bodies["full"] = full_text(response)
    for fmt, body in bodies.items():
        assert not CJK_SPACE_CJK.search(body), (fmt, body)
    cues = [c.content for c in srt.parse(bodies["srt"])]
    plain = "".join(re.sub(r"</?u>|\[SPEAKER_\d\d\]: |\n", "", c) for c in cues)
    assert "首先说一下刚刚经历" in plain
    if language == "zh":  # Latin words inside Chinese: unspaced against CJK, spaced between them
        assert "用Python做machine" in plain
        if options.max_line_width is None:
            assert any("machine learning" in c for c in cues)
    captions = webvtt.from_string(bodies["vtt"]).captions
    assert captions and all(c.text.startswith("[SPEAKER_0") for c in captions)
    if language == "zh":
        assert bodies["full"] == "首先说一下刚刚经历我们用Python做machine learning好的谢谢"
    else:
        assert bodies["full"] == "首先说一下刚刚经历我们用 Python 做 machine learning 好的谢谢"


def test_whisper_spacing_is_kept_where_the_rule_allows() -> None:
    # Decoded in Chinese mode, Whisper cuts English into tokens: " I", "'m", " Yan", "kee".
    words = ["I", "'m", "Sheila", "a", "Yan", "kee", "我们", "用", "Python"]
    source = "I'm Sheila a Yankee 我们 用 Python"
    assert join_words(words, "zh", source) == "I'm Sheila a Yankee我们用Python"
    assert join_words(words, "en", source) == "I'm Sheila a Yankee 我们用 Python"
    chunk = AsrSegment(start=0.0, end=3.0, text="I'm Sheila. I don't know.", words=[
        Word(word=w, start=i * 0.2, end=i * 0.2 + 0.2) for i, w in enumerate(["I", "'m", "Sheila.", "I", "don", "'t", "know."])])
    assert [s.text for s in sentences_from_whisper_words(chunk, "zh")] == ["I'm Sheila.", "I don't know."]
