"""How words become text: the one joining rule, used by every path (Whisper timings, wav2vec2,
script conversion, plain text, subtitles).

Chinese, Japanese, Cantonese, Thai, Lao, Burmese and Tibetan are written without spaces between
words; elsewhere words are separated by one space (Whisper's tokens carry that leading space).
The rule is decided at each boundary between two words, from the language and the characters
that meet there:

- in a language written without spaces, no space where either side is a character of a script
  written without spaces ("我们用Python", "首先说一下"), one space between two words of a spaced
  script ("machine learning" inside Japanese text);
- in any other language, one space, except between two characters of unspaced scripts (a Chinese
  phrase quoted inside English text stays unspaced).

So no text this service writes holds a space between two CJK characters, whatever language the
recording was labelled with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# whisperx.utils.LANGUAGES_WITHOUT_SPACES plus Cantonese (written in Chinese characters).
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "yue", "th", "lo", "my", "bo"})

# Scripts written without spaces between words, with their punctuation.
_UNSPACED_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3000, 0x30FF),  # CJK symbols and punctuation, Hiragana, Katakana
    (0x3100, 0x31FF),  # Bopomofo, Kanbun, CJK strokes, Katakana extension (Hangul jamo excepted)
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFE30, 0xFE4F),  # CJK compatibility forms
    (0xFF00, 0xFFEF),  # half- and full-width forms (，。！？：)
    (0x20000, 0x3FFFF),  # CJK extensions B and later
)


def is_unspaced_char(ch: str) -> bool:
    """A character of a script written without spaces between words (CJK, kana, Thai...)."""
    code = ord(ch)
    if 0x3130 <= code <= 0x318F:  # Hangul compatibility jamo: Korean is written with spaces
        return False
    return any(low <= code <= high for low, high in _UNSPACED_RANGES)


def is_unspaced_language(language: str | None) -> bool:
    return (language or "") in UNSPACED_LANGUAGES


def _needs_space(left: str, right: str, language: str | None, spaced: bool | None = None) -> bool:
    """Whether a space goes between text ending in `left` and text starting with `right`;
    `spaced`: whether the decoded text had one there (Whisper's tokens carry their leading
    space: "I" + "'m" join without one), None when unknown."""
    if not left or not right:
        return False
    a, b = is_unspaced_char(left[-1]), is_unspaced_char(right[0])
    if a and b:
        return False
    if is_unspaced_language(language) and (a or b):
        return False
    return True if spaced is None else spaced


def source_spacing(words: list[str], source: str | None) -> list[bool | None]:
    """For each word, whether `source` (the text the words were cut from, in order) has
    whitespace right before it; None where the word is not found there (or no source)."""
    out: list[bool | None] = []
    cursor = 0
    text = source or ""
    for raw in words:
        word = raw.strip()
        at = text.find(word, cursor) if word else -1
        between = text[cursor:at] if at >= 0 else ""
        if at < 0 or between.strip():  # not the next thing in the text: unknown
            out.append(None)
            continue
        out.append(bool(between) if cursor else None)
        cursor = at + len(word)
    return out


def join_words(words: Iterable[str], language: str | None, source: str | None = None,
               spacing: Sequence[bool | None] | None = None) -> str:
    """Words (as Whisper or an aligner gave them, with or without their leading space) as text;
    `source`: the decoded text they come from, whose spaces are kept where the rule allows (or
    `spacing`, `source_spacing` computed beforehand)."""
    items = list(words)
    flags = list(spacing) if spacing is not None else source_spacing(items, source)
    out = ""
    for raw, spaced in zip(items, flags, strict=True):
        word = raw.strip()
        if not word:
            continue
        out = f"{out} {word}" if _needs_space(out, word, language, spaced) else out + word
    return out


def spaced_words(words: list[str], language: str | None, previous: str = "", source: str | None = None) -> list[str]:
    """Each word with the leading space the joining rule gives it after `previous` (the text
    before the first word, if any; `source`: the text the words spell), so that plain
    concatenation (what subtitle writers of unspaced languages do) spells the text."""
    out: list[str] = []
    for raw, spaced in zip(words, source_spacing(words, source), strict=True):
        word = raw.strip()
        out.append(f" {word}" if _needs_space(previous, word, language, spaced) else word)
        previous = word or previous
    return out


_SPACE_RUN = re.compile(r"\s+")
_UNSPACED_CLASS = "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in _UNSPACED_RANGES)
# A space between two unspaced-script characters, an underline tag (subtitles' highlighted
# word) allowed on either side of it.
_SPACE_INSIDE_UNSPACED = re.compile(f"(?<=[{_UNSPACED_CLASS}])((?:</u>)?)[ ]+((?:<u>)?)(?=[{_UNSPACED_CLASS}])")


def unspace_markup(text: str) -> str:
    """Spaces between two unspaced-script characters removed from written output (whisperx's
    highlighted subtitle cues join words with spaces whatever the language)."""
    return _SPACE_INSIDE_UNSPACED.sub(r"\1\2", text)


def tidy_text(text: str, language: str | None) -> str:
    """Text re-spaced by the rule: runs of spaces collapsed, and dropped where the rule says none
    (Whisper sometimes writes "首先说一下 刚刚经历" with a space between two phrases)."""
    return join_words(_SPACE_RUN.split(text.strip()), language)
