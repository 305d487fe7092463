"""Name, script and family of languages, by code: a small built-in table (prompts, corpora, overlap analyses).

Used to ask whether languages that share a writing system or a family also share
neurons (`jlang.analysis.overlap.group_relation`). Entries: ISO 639-1 code (or
639-3 where there is no 639-1 code) -> `LangInfo(name, script, family, branch)`.

* `script`: the main script of today's standard written language, by ISO 15924
  name (`Latin`, `Cyrillic`, `Arabic`, `Devanagari`, `Han`, ...). Japanese is
  `Japanese` (Han + kana) rather than `Han`: it shares kanji with Chinese but
  most of its tokens are kana. Serbian is listed as Cyrillic (its official
  script) although Latin is common.
* `family`: the top-level family (Glottolog / Ethnologue level), e.g.
  `Indo-European`, `Sino-Tibetan`, `Afro-Asiatic`; isolates name themselves
  (`Japonic`, `Koreanic`, `Basque`).
* `branch`: the major sub-group inside the family (`Germanic`, `Romance`,
  `Slavic`, `Indo-Aryan`, `Semitic`, ...); equal to `family` when there is none.

The table covers the 12 default languages and the languages of the papers jlang
reproduces (LAPE, PLND, ternary neurons, Language Arithmetics, culture neurons,
SAE-LAPE, the Aya-23 study, FLORES-style lists). Codes such as `zh_CN`, `pt-BR`,
`zh_Hant` or `fr_en_0.25` (a code-mixed set) are looked up by their first part.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "LANGUAGES",
    "LangInfo",
    "base_code",
    "family_of",
    "info",
    "same_group",
    "script_of",
    "text_script_share",
]


@dataclass(frozen=True)
class LangInfo:
    name: str
    script: str
    family: str
    branch: str


def _ie(branch: str) -> tuple[str, str]:
    return "Indo-European", branch


_ROWS: list[tuple[str, str, str, tuple[str, str]]] = [
    # code, name, script, (family, branch)
    ("en", "English", "Latin", _ie("Germanic")),
    ("de", "German", "Latin", _ie("Germanic")),
    ("nl", "Dutch", "Latin", _ie("Germanic")),
    ("af", "Afrikaans", "Latin", _ie("Germanic")),
    ("da", "Danish", "Latin", _ie("Germanic")),
    ("sv", "Swedish", "Latin", _ie("Germanic")),
    ("nb", "Norwegian Bokmål", "Latin", _ie("Germanic")),
    ("no", "Norwegian", "Latin", _ie("Germanic")),
    ("nn", "Norwegian Nynorsk", "Latin", _ie("Germanic")),
    ("is", "Icelandic", "Latin", _ie("Germanic")),
    ("fr", "French", "Latin", _ie("Romance")),
    ("es", "Spanish", "Latin", _ie("Romance")),
    ("pt", "Portuguese", "Latin", _ie("Romance")),
    ("it", "Italian", "Latin", _ie("Romance")),
    ("ca", "Catalan", "Latin", _ie("Romance")),
    ("gl", "Galician", "Latin", _ie("Romance")),
    ("ro", "Romanian", "Latin", _ie("Romance")),
    ("ru", "Russian", "Cyrillic", _ie("Slavic")),
    ("uk", "Ukrainian", "Cyrillic", _ie("Slavic")),
    ("be", "Belarusian", "Cyrillic", _ie("Slavic")),
    ("bg", "Bulgarian", "Cyrillic", _ie("Slavic")),
    ("mk", "Macedonian", "Cyrillic", _ie("Slavic")),
    ("sr", "Serbian", "Cyrillic", _ie("Slavic")),
    ("pl", "Polish", "Latin", _ie("Slavic")),
    ("cs", "Czech", "Latin", _ie("Slavic")),
    ("sk", "Slovak", "Latin", _ie("Slavic")),
    ("sl", "Slovenian", "Latin", _ie("Slavic")),
    ("hr", "Croatian", "Latin", _ie("Slavic")),
    ("bs", "Bosnian", "Latin", _ie("Slavic")),
    ("lt", "Lithuanian", "Latin", _ie("Baltic")),
    ("lv", "Latvian", "Latin", _ie("Baltic")),
    ("el", "Greek", "Greek", _ie("Hellenic")),
    ("hy", "Armenian", "Armenian", _ie("Armenian")),
    ("sq", "Albanian", "Latin", _ie("Albanian")),
    ("ga", "Irish", "Latin", _ie("Celtic")),
    ("cy", "Welsh", "Latin", _ie("Celtic")),
    ("hi", "Hindi", "Devanagari", _ie("Indo-Aryan")),
    ("mr", "Marathi", "Devanagari", _ie("Indo-Aryan")),
    ("ne", "Nepali", "Devanagari", _ie("Indo-Aryan")),
    ("bn", "Bengali", "Bengali", _ie("Indo-Aryan")),
    ("ur", "Urdu", "Arabic", _ie("Indo-Aryan")),
    ("pa", "Punjabi", "Gurmukhi", _ie("Indo-Aryan")),
    ("gu", "Gujarati", "Gujarati", _ie("Indo-Aryan")),
    ("si", "Sinhala", "Sinhala", _ie("Indo-Aryan")),
    ("fa", "Persian", "Arabic", _ie("Iranian")),
    ("ps", "Pashto", "Arabic", _ie("Iranian")),
    ("ku", "Kurdish", "Latin", _ie("Iranian")),
    ("ckb", "Central Kurdish", "Arabic", _ie("Iranian")),
    ("tg", "Tajik", "Cyrillic", _ie("Iranian")),
    ("ar", "Arabic", "Arabic", ("Afro-Asiatic", "Semitic")),
    ("he", "Hebrew", "Hebrew", ("Afro-Asiatic", "Semitic")),
    ("am", "Amharic", "Ethiopic", ("Afro-Asiatic", "Semitic")),
    ("mt", "Maltese", "Latin", ("Afro-Asiatic", "Semitic")),
    ("ha", "Hausa", "Latin", ("Afro-Asiatic", "Chadic")),
    ("so", "Somali", "Latin", ("Afro-Asiatic", "Cushitic")),
    ("zh", "Chinese", "Han", ("Sino-Tibetan", "Sinitic")),
    ("yue", "Cantonese", "Han", ("Sino-Tibetan", "Sinitic")),
    ("my", "Burmese", "Myanmar", ("Sino-Tibetan", "Lolo-Burmese")),
    ("bo", "Tibetan", "Tibetan", ("Sino-Tibetan", "Bodic")),
    ("ja", "Japanese", "Japanese", ("Japonic", "Japonic")),
    ("ko", "Korean", "Hangul", ("Koreanic", "Koreanic")),
    ("vi", "Vietnamese", "Latin", ("Austroasiatic", "Vietic")),
    ("km", "Khmer", "Khmer", ("Austroasiatic", "Khmeric")),
    ("th", "Thai", "Thai", ("Kra-Dai", "Tai")),
    ("lo", "Lao", "Lao", ("Kra-Dai", "Tai")),
    ("id", "Indonesian", "Latin", ("Austronesian", "Malayo-Polynesian")),
    ("ms", "Malay", "Latin", ("Austronesian", "Malayo-Polynesian")),
    ("jv", "Javanese", "Latin", ("Austronesian", "Malayo-Polynesian")),
    ("tl", "Tagalog", "Latin", ("Austronesian", "Malayo-Polynesian")),
    ("fil", "Filipino", "Latin", ("Austronesian", "Malayo-Polynesian")),
    ("mg", "Malagasy", "Latin", ("Austronesian", "Malayo-Polynesian")),
    ("tr", "Turkish", "Latin", ("Turkic", "Oghuz")),
    ("az", "Azerbaijani", "Latin", ("Turkic", "Oghuz")),
    ("uz", "Uzbek", "Latin", ("Turkic", "Karluk")),
    ("kk", "Kazakh", "Cyrillic", ("Turkic", "Kipchak")),
    ("ky", "Kyrgyz", "Cyrillic", ("Turkic", "Kipchak")),
    ("tt", "Tatar", "Cyrillic", ("Turkic", "Kipchak")),
    ("ug", "Uyghur", "Arabic", ("Turkic", "Karluk")),
    ("fi", "Finnish", "Latin", ("Uralic", "Finnic")),
    ("et", "Estonian", "Latin", ("Uralic", "Finnic")),
    ("hu", "Hungarian", "Latin", ("Uralic", "Ugric")),
    ("mn", "Mongolian", "Cyrillic", ("Mongolic", "Mongolic")),
    ("ka", "Georgian", "Georgian", ("Kartvelian", "Kartvelian")),
    ("eu", "Basque", "Latin", ("Basque", "Basque")),
    ("ta", "Tamil", "Tamil", ("Dravidian", "South Dravidian")),
    ("te", "Telugu", "Telugu", ("Dravidian", "South-Central Dravidian")),
    ("kn", "Kannada", "Kannada", ("Dravidian", "South Dravidian")),
    ("ml", "Malayalam", "Malayalam", ("Dravidian", "South Dravidian")),
    ("sw", "Swahili", "Latin", ("Niger-Congo", "Bantu")),
    ("zu", "Zulu", "Latin", ("Niger-Congo", "Bantu")),
    ("xh", "Xhosa", "Latin", ("Niger-Congo", "Bantu")),
    ("yo", "Yoruba", "Latin", ("Niger-Congo", "Volta-Niger")),
    ("ig", "Igbo", "Latin", ("Niger-Congo", "Volta-Niger")),
    ("eo", "Esperanto", "Latin", ("Constructed", "Constructed")),
]

LANGUAGES: dict[str, LangInfo] = {code: LangInfo(name, script, *fam) for code, name, script, fam in _ROWS}

_SPLIT = re.compile(r"[_\-@.]")


def base_code(code: str) -> str:
    """`zh_CN` -> `zh`, `pt-BR` -> `pt`, `fr_en_0.25` -> `fr` (lower-cased first part)."""
    return _SPLIT.split(str(code).strip(), maxsplit=1)[0].lower()


def language_name(code: str) -> str:
    """The English name of a language code ("fr" -> "French"); an unknown code stands as it is."""
    return LANGUAGES[code].name if code in LANGUAGES else code


def info(code: str) -> LangInfo | None:
    """The table entry of `code` (by its first part), or None when the language is not in the table."""
    return LANGUAGES.get(base_code(code))


def script_of(code: str) -> str | None:
    entry = info(code)
    return entry.script if entry else None


def family_of(code: str, level: str = "family") -> str | None:
    """Top-level family (`level="family"`) or major branch (`level="branch"`)."""
    entry = info(code)
    if entry is None:
        return None
    if level not in ("family", "branch"):
        raise ValueError(f"level must be 'family' or 'branch', got {level!r}")
    return getattr(entry, level)


def same_group(codes: Iterable[str], key: str) -> tuple[list[str | None], list[list[bool | None]]]:
    """Labels and the pairwise same-label matrix for `key` in {"script", "family", "branch"}; None where unknown."""
    codes = list(codes)
    if key == "script":
        labels = [script_of(c) for c in codes]
    elif key in ("family", "branch"):
        labels = [family_of(c, key) for c in codes]
    else:
        raise ValueError(f"key must be 'script', 'family' or 'branch', got {key!r}")
    matrix = [[None if a is None or b is None else a == b for b in labels] for a in labels]
    return labels, matrix


# Unicode character-name prefixes of the scripts in the table (what `unicodedata.name` starts with).
_NAME_PREFIX = {
    "Latin": ("LATIN",),
    "Cyrillic": ("CYRILLIC",),
    "Arabic": ("ARABIC",),
    "Devanagari": ("DEVANAGARI",),
    "Han": ("CJK",),
    "Japanese": ("CJK", "HIRAGANA", "KATAKANA"),
    "Hangul": ("HANGUL",),
    "Greek": ("GREEK",),
    "Hebrew": ("HEBREW",),
    "Thai": ("THAI",),
    "Lao": ("LAO",),
    "Bengali": ("BENGALI",),
    "Tamil": ("TAMIL",),
    "Telugu": ("TELUGU",),
    "Kannada": ("KANNADA",),
    "Malayalam": ("MALAYALAM",),
    "Gujarati": ("GUJARATI",),
    "Gurmukhi": ("GURMUKHI",),
    "Sinhala": ("SINHALA",),
    "Georgian": ("GEORGIAN",),
    "Armenian": ("ARMENIAN",),
    "Ethiopic": ("ETHIOPIC",),
    "Khmer": ("KHMER",),
    "Myanmar": ("MYANMAR",),
    "Tibetan": ("TIBETAN",),
}


def text_script_share(text: str, script: str) -> float:
    """Share of the letters of `text` that belong to `script` (1.0 for a text without letters)."""
    prefixes = _NAME_PREFIX.get(script)
    if prefixes is None:
        raise ValueError(f"unknown script {script!r}; known: {sorted(_NAME_PREFIX)}")
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 1.0
    hits = sum(1 for ch in letters if unicodedata.name(ch, "").startswith(prefixes))
    return hits / len(letters)
