"""Is a translation written in its language's script, and is a bare `zh` catalog Simplified or Traditional?

A translation whose letters are mostly not in the language's script is an untranslated or mis-filed
string. Chinese (`zh`) means Simplified Chinese; a bare `zh` catalog is kept only when its characters look
Simplified.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

__all__ = ["in_expected_script", "looks_traditional"]

# Scripts expected for a language's letters; languages not listed skip the check.
_LATIN_LANGUAGES = (
    "en fr es de id vi pt it nl pl tr sv da nb nn no fi cs sk sl hr ro hu ca eu gl et lv lt ms sw af sq az uz is ga "
    "cy eo"
).split()
_SCRIPTS: dict[str, tuple[str, ...]] = {
    **{c: ("LATIN",) for c in _LATIN_LANGUAGES},
    **{c: ("CYRILLIC",) for c in ("ru", "uk", "bg", "be", "mk", "sr", "kk", "ky", "tg", "mn", "tt")},
    **{c: ("ARABIC",) for c in ("ar", "fa", "ur", "ps", "ckb", "ug")},
    **{c: ("DEVANAGARI",) for c in ("hi", "mr", "ne")},
    "zh": ("CJK",),
    "ja": ("CJK", "HIRAGANA", "KATAKANA"),
    "ko": ("HANGUL", "CJK"),
    "el": ("GREEK",),
    "he": ("HEBREW",),
    "th": ("THAI",),
    "bn": ("BENGALI",),
    "ta": ("TAMIL",),
    "te": ("TELUGU",),
    "ka": ("GEORGIAN",),
    "hy": ("ARMENIAN",),
    "km": ("KHMER",),
}


def in_expected_script(text: str, language: str, min_share: float = 0.5) -> bool:
    """True when at least `min_share` of the letters are in the language's script (or it has no entry)."""
    scripts = _SCRIPTS.get(language.split("_")[0])
    if scripts is None:
        return True
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    hits = sum(1 for c in letters if unicodedata.name(c, "").startswith(scripts))
    return hits >= min_share * len(letters)


# A few very frequent characters whose Simplified and Traditional forms differ.
_SIMPLIFIED_ONLY = set("这个们来时会说对发没经过还进动关开问题实现请输删户设图页将应该选项为与数据无效错误种类")
_TRADITIONAL_ONLY = set("這個們來時會說對發沒經過還進動關開問題實現請輸刪戶設圖頁將應該選項為與數據無效錯誤種類")


def looks_traditional(texts: Iterable[str]) -> bool:
    """True when Traditional-only characters outnumber Simplified-only ones (for bare `zh` catalogs)."""
    simp = trad = 0
    for t in texts:
        for c in t:
            simp += c in _SIMPLIFIED_ONLY
            trad += c in _TRADITIONAL_ONLY
    return trad > simp
