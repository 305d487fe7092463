"""The catalogs of a source: which locale serves which language, reading `.po`/`.mo` files, and the usable
(English, translation) pairs of one catalog.

Chinese (`zh`) means Simplified Chinese: locales `zh_Hans`, `zh_CN`, bare `zh`, `zh_SG`, `zh_MY`.
Traditional (`zh_Hant`, `zh_TW`, `zh_HK`) is excluded; ask for `zh_Hant` explicitly to get it. Other bare
codes take the bare locale first, then `xx_XX` (e.g. `fr_FR`), then other regional variants in name order.

An entry is kept only when it is translated, not fuzzy, not obsolete, and its English message has at least
`min_words` words once placeholders are gone (words are counted on the English side for every language, so
zh/ja/ko are filtered by the meaning's length, not by whitespace they do not use). A translation that is a
copy of the English, or whose letters are mostly not in the language's script, is dropped.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from jlang.data.corpora.common import tally
from jlang.data.corpora.gettext.clean import clean_message, count_words, is_code_block
from jlang.data.corpora.gettext.packages import CatalogFile, SourceInfo
from jlang.data.corpora.gettext.scripts import in_expected_script

__all__ = ["Pair", "extract_pairs", "list_catalogs", "locale_rank", "normalise_locale", "read_catalog"]

_LOCALE_IN_PATH = re.compile(r"(?:^|/)(?:locale|locales|i18n|translations)/([^/]+)/LC_MESSAGES/([^/]+)\.(po|mo)$")
_SIMPLIFIED_ZH = ("zh_hans", "zh_cn", "zh", "zh_sg", "zh_my")


def normalise_locale(name: str) -> str:
    """`zh-Hans`, `zh_CN.GB2312`, `sr@latin` -> `zh_hans`, `zh_cn`, `sr_latin` (lowercase, `_`-joined)."""
    name = name.split(".")[0].replace("@", "_").replace("-", "_")
    return "_".join(p for p in name.lower().split("_") if p)


def locale_rank(locale: str, language: str) -> int | None:
    """How well the locale directory `locale` serves the requested `language` (lower is better; None: not at all)."""
    loc = normalise_locale(locale)
    want = normalise_locale(language)
    if "_" in want:  # an explicit variant (pt_br, zh_hant): that one only
        return 0 if loc == want else None
    if want == "zh":
        return _SIMPLIFIED_ZH.index(loc) if loc in _SIMPLIFIED_ZH else None
    parts = loc.split("_")
    if parts[0] != want:
        return None
    if len(parts) == 1:
        return 0
    if len(parts) == 2 and parts[1] == want:
        return 1
    return 2


def list_catalogs(source: SourceInfo) -> list[CatalogFile]:
    """All `locale/<code>/LC_MESSAGES/*.po|mo` files of a source; a `.mo` is skipped when its `.po` exists."""
    found: dict[tuple[str, str], CatalogFile] = {}
    for name in source.reader.names():
        m = _LOCALE_IN_PATH.search(name)
        if not m:
            continue
        locale, kind = m.group(1), m.group(3)
        start, end = m.span(1)
        catalog = (name[:start] + "{}" + name[end:]).rsplit(".", 1)[0]
        key = (catalog, locale)
        if key in found and found[key].kind == "po":
            continue
        found[key] = CatalogFile(source.name, name, locale, catalog, kind)
    return sorted(found.values(), key=lambda c: (c.catalog, c.locale))


@dataclass(frozen=True)
class Pair:
    """One usable catalog entry: cleaned English and cleaned translation."""

    english: str
    translation: str


def read_catalog(data: bytes, kind: str) -> list:
    """Parse `.po` text or `.mo` bytes with polib; return its entries."""
    import polib  # optional (the `corpus` extra): only a corpus build needs it

    if kind == "po":
        text = data.decode("utf-8-sig", errors="strict") if _po_charset(data) in ("utf-8", "utf8") else None
        if text is None:
            text = data.decode(_po_charset(data) or "utf-8")
        return list(polib.pofile(text))
    fd, tmp = tempfile.mkstemp(suffix=".mo")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return list(polib.mofile(tmp))
    finally:
        os.unlink(tmp)


def _po_charset(data: bytes) -> str | None:
    m = re.search(rb"charset=([A-Za-z0-9_.:-]+)", data[:4096])
    return m.group(1).decode("ascii").lower() if m else None


def _entry_text(entry) -> str:
    """The singular translation of an entry (`msgstr`, or `msgstr[0]` for plural entries)."""
    if getattr(entry, "msgid_plural", ""):
        plural = getattr(entry, "msgstr_plural", {}) or {}
        return plural.get(0, plural.get("0", "")) or ""
    return entry.msgstr or ""


def extract_pairs(entries: Sequence, language: str, min_words: int, stats: dict[str, int]) -> Iterator[Pair]:
    """Filter and clean one catalog's entries for `language`; count rejections in `stats` by reason."""
    for entry in entries:
        if not entry.msgid:  # the header
            continue
        if getattr(entry, "obsolete", False):
            tally(stats, "obsolete")
            continue
        if is_code_block(entry.msgid):
            tally(stats, "code_block")
            continue
        english = clean_message(entry.msgid)
        if count_words(english) < min_words:
            tally(stats, "short")
            continue
        if "fuzzy" in (getattr(entry, "flags", None) or []):
            tally(stats, "fuzzy")
            continue
        raw = _entry_text(entry)
        translation = clean_message(raw) if raw else ""
        if not translation:
            tally(stats, "untranslated")
            continue
        if language != "en" and translation.casefold() == english.casefold():
            tally(stats, "copy_of_english")
            continue
        if not in_expected_script(translation, language):
            tally(stats, "wrong_script")
            continue
        tally(stats, "kept")
        yield Pair(english, translation)
