from __future__ import annotations

from whisperx_service.chinese import ZhScript, convert_asr_segments, to_script
from whisperx_service.schema import AsrSegment, Word


def test_traditional_to_simplified_as_base_writes_it() -> None:
    # whisper base wrote an AISHELL clip's 广州市房地产 as 廣州市佛地產
    assert to_script("廣州市佛地產", ZhScript.simplified) == "广州市佛地产"
    assert to_script("广州市房地产", ZhScript.traditional) == "廣州市房地產"
    assert to_script("廣州", ZhScript.original) == "廣州"


def test_segments_and_words_are_converted_together() -> None:
    seg = AsrSegment(start=0, end=1, text="出現交易", words=[Word(word="出現", start=0, end=0.5), Word(word="交易", start=0.5, end=1)])
    convert_asr_segments([seg], "zh", ZhScript.simplified)
    assert seg.text == "出现交易"
    assert "".join(w.word for w in seg.words or []) == seg.text


def test_other_languages_are_untouched() -> None:
    seg = AsrSegment(start=0, end=1, text="廣州 is a city")
    convert_asr_segments([seg], "en", ZhScript.simplified)
    assert seg.text == "廣州 is a city"
