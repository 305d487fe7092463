"""Reading every catalog of the sources into per-language sentences keyed by their English message.

Within one package's catalog, one locale variant's translation is used per English message (the best
ranked variant first, `catalogs.locale_rank`). English sentences are the cleaned English messages
themselves: the union of the message ids of the `en*` catalogs and of every catalog read for another
language (a `.mo` holds translated ids only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from jlang.data.corpora.common import tally
from jlang.data.corpora.gettext.catalogs import (
    extract_pairs,
    list_catalogs,
    locale_rank,
    normalise_locale,
    read_catalog,
)
from jlang.data.corpora.gettext.clean import clean_message, count_words, english_key, is_code_block
from jlang.data.corpora.gettext.packages import CatalogFile, SourceInfo
from jlang.data.corpora.gettext.scripts import looks_traditional

__all__ = ["Collected", "collect_source", "split_language"]


@dataclass
class Collected:
    """Everything read from the catalogs, before splitting."""

    english: dict[str, str] = field(default_factory=dict)  # key -> first cleaned English text
    english_packages: dict[str, list[str]] = field(default_factory=dict)  # key -> packages, in order
    # language -> list of (english key, translation), in reading order
    translations: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    # language -> english key -> first translation (for the parallel file)
    first: dict[str, dict[str, str]] = field(default_factory=dict)
    rejected: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped_catalogs: list[dict[str, str]] = field(default_factory=list)

    def note_english(self, english: str, package: str) -> str:
        """Record a cleaned English message seen in `package`; return its key (`clean.english_key`)."""
        key = english_key(english)
        if key not in self.english:
            self.english[key] = english
            self.english_packages[key] = []
        if package not in self.english_packages[key]:
            self.english_packages[key].append(package)
        return key

    def skip_catalog(self, source: SourceInfo, catalog: CatalogFile, reason: str) -> None:
        self.skipped_catalogs.append({"source": source.name, "path": catalog.path, "reason": reason})


class CatalogEntries:
    """The entries of the catalogs of one source, each file read once; a broken catalog is skipped and
    noted (it must not stop the build)."""

    def __init__(self, col: Collected, source: SourceInfo):
        self.col, self.source = col, source
        self.entries: dict[str, list | None] = {}  # path -> entries, None when it could not be read

    def __call__(self, catalog: CatalogFile) -> list | None:
        if catalog.path not in self.entries:
            try:
                self.entries[catalog.path] = read_catalog(self.source.reader.read(catalog.path), catalog.kind)
            except Exception as exc:  # a broken catalog in a package must not stop the build
                self.col.skip_catalog(self.source, catalog, str(exc)[:200])
                self.entries[catalog.path] = None
        return self.entries[catalog.path]

    def tried(self, catalog: CatalogFile) -> bool:
        """Whether the file was read (or tried) already."""
        return catalog.path in self.entries


def collect_source(col: Collected, source: SourceInfo, languages: Sequence[str], min_words: int) -> None:
    """Read one source's catalogs for the requested languages into `col`."""
    source.files = []
    by_catalog: dict[str, list[CatalogFile]] = {}
    for c in list_catalogs(source):
        by_catalog.setdefault(c.catalog, []).append(c)
    for files in by_catalog.values():
        entries_of = CatalogEntries(col, source)
        for language in languages:
            if language != "en":  # English is the message ids; collected below from every catalog read
                _collect_translations(col, source, files, language, min_words, entries_of)
        if "en" in languages:
            _collect_english(col, source, files, min_words, entries_of)


def _collect_translations(
    col: Collected,
    source: SourceInfo,
    files: Sequence[CatalogFile],
    language: str,
    min_words: int,
    entries_of: CatalogEntries,
) -> None:
    """One language's translations from the locale variants of one catalog, best ranked variant first."""
    stats = col.rejected.setdefault(language, {})
    ranked = sorted(
        ((r, cf) for cf in files if (r := locale_rank(cf.locale, language)) is not None),
        key=lambda rc: (rc[0], rc[1].locale),
    )
    seen_here: set[str] = set()  # one translation per English message per package catalog
    for _, cf in ranked:
        entries = entries_of(cf)
        if entries is None:
            continue
        if normalise_locale(cf.locale) == "zh" and normalise_locale(language) == "zh":
            if looks_traditional(e.msgstr for e in entries if getattr(e, "msgstr", "")):
                col.skip_catalog(source, cf, "bare zh catalog is Traditional")
                continue
        source.files.append(cf)
        for pair in extract_pairs(entries, language, min_words, stats):
            key = col.note_english(pair.english, source.name)
            if key in seen_here:
                continue
            seen_here.add(key)
            col.translations.setdefault(language, []).append((key, pair.translation))
            col.first.setdefault(language, {}).setdefault(key, pair.translation)


def _collect_english(
    col: Collected,
    source: SourceInfo,
    files: Sequence[CatalogFile],
    min_words: int,
    entries_of: CatalogEntries,
) -> None:
    """English sentences of one catalog: the message ids of its `en*` catalogs and of every catalog already
    read for another language."""
    stats = col.rejected.setdefault("en", {})
    english_files = [cf for cf in files if normalise_locale(cf.locale).split("_")[0] == "en"]
    english_files += [cf for cf in files if entries_of.tried(cf) and cf not in english_files]
    for cf in english_files:
        entries = entries_of(cf)
        if entries is None:
            continue
        source.files.append(cf)
        for english in _english_messages(entries, min_words):
            key = col.note_english(english, source.name)
            col.translations.setdefault("en", []).append((key, col.english[key]))
            tally(stats, "ids_read")


def _english_messages(entries: Iterable, min_words: int) -> Iterable[str]:
    """The cleaned message ids of a catalog's live entries that are sentences of at least `min_words` words."""
    for entry in entries:
        if not entry.msgid or getattr(entry, "obsolete", False) or is_code_block(entry.msgid):
            continue
        english = clean_message(entry.msgid)
        if count_words(english) >= min_words:
            yield english


def split_language(items: Sequence[tuple[str, str]], heldout_keys: set[str]) -> tuple[list[str], list[str]]:
    """Deduplicate one language's sentences and split them by their English key; held-out wins."""
    held: dict[str, None] = {}
    train: dict[str, None] = {}
    for key, text in items:
        (held if key in heldout_keys else train)[text] = None
    return [t for t in train if t not in held], list(held)
