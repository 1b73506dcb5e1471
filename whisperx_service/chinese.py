"""Chinese output in the script its readers use (Whisper often writes Mandarin in traditional).

OpenCC does the conversion; it is applied to segment text and to every word the same way, so
the words still spell the segment.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from functools import lru_cache

from .schema import AsrSegment

CHINESE_LANGUAGES = frozenset({"zh", "yue"})


class ZhScript(StrEnum):
    simplified = "simplified"
    traditional = "traditional"
    original = "original"


_OPENCC_CONFIG = {ZhScript.simplified: "t2s", ZhScript.traditional: "s2t"}


@lru_cache(maxsize=2)
def _converter(script: ZhScript) -> Callable[[str], str]:
    import opencc

    return opencc.OpenCC(_OPENCC_CONFIG[script]).convert  # type: ignore[no-any-return]


def to_script(text: str, script: ZhScript) -> str:
    if script is ZhScript.original or not text:
        return text
    return _converter(script)(text)


def convert_asr_segments(segments: list[AsrSegment], language: str, script: ZhScript) -> None:
    """Convert ASR output in place, before alignment, so aligned words inherit the script."""
    if language not in CHINESE_LANGUAGES or script is ZhScript.original:
        return
    for segment in segments:
        segment.text = to_script(segment.text, script)
        for word in segment.words or ():
            word.word = to_script(word.word, script)
