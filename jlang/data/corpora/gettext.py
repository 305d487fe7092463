"""The packaged default corpus: human translations from PyPI packages' gettext catalogs.

Well-known Python projects (Django, Wagtail, Sphinx, django-oscar, django CMS,
django-allauth, Trac) ship the translations of their user-facing English
messages as gettext catalogs (`locale/<code>/LC_MESSAGES/*.po`, or compiled
`*.mo`) inside their wheels. Volunteers translated those messages by hand into
50-100 languages, so installing the packages gives real, human-written,
*parallel* multilingual text with no download beyond PyPI.

`build_gettext_corpus` turns the catalogs into the layout every jlang stage
reads::

    {out}/train/{lang}.txt         one sentence per line (deduplicated)
    {out}/heldout/{lang}.txt       the held-out sentences, same format
    {out}/parallel/heldout.jsonl   one row per held-out English message with its
                                   translations in every kept language
    {out}/manifest.json            languages kept/dropped, counts, sources with
                                   versions and licences, the filter and split rules

Rules (each one exists because catalogs are UI strings, not prose):

- Keep an entry only when it is translated, not fuzzy, not obsolete, and its
  English message has at least `min_words` words once placeholders are gone
  (words are counted on the English side for every language, so zh/ja/ko are
  filtered by the meaning's length, not by whitespace they do not use).
- Strip placeholders (`%(name)s`, `%s`, `%d`, `%1$s`, `{0}`, `{name}`,
  `{{ var }}`, `{% tag %}`, `${x}`), HTML/XML tags, decode entities (`&amp;` ->
  `&`), drop quote or bracket pairs left empty, collapse whitespace (newlines
  included, so a sentence is one line).
- Drop a translation that is a copy of the English, or whose letters are
  mostly not in the language's script (an untranslated or mis-filed string).
- Chinese (`zh`) means Simplified Chinese: locales `zh_Hans`, `zh_CN`, bare
  `zh` (kept only when its characters look Simplified), `zh_SG`, `zh_MY`.
  Traditional (`zh_Hant`, `zh_TW`, `zh_HK`) is excluded; ask for `zh_Hant`
  explicitly to get it. Other bare codes take the bare locale first, then
  `xx_XX` (e.g. `fr_FR`), then other regional variants in name order; within one
  package one variant's translation is used per message.
- Held-out split: an English message is held out iff
  `int(sha256(key)[:16 hex], 16) / 2**64 < heldout_fraction`, where `key` is the
  cleaned English message casefolded. The same meaning is therefore held out in
  every language. A translation that is also the translation of a held-out
  message is removed from train (no leakage).

English (`en`) sentences are the cleaned English messages themselves.
"""

from __future__ import annotations

import hashlib
import html
import importlib.metadata as importlib_metadata
import json
import os
import re
import tempfile
import unicodedata
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_LANGUAGES",
    "DEFAULT_PACKAGES",
    "PIP_REQUIREMENTS",
    "CorpusBuildError",
    "build_gettext_corpus",
    "clean_message",
    "count_tokens",
    "default_corpus_dir",
    "ensure_default_corpus",
    "format_summary",
    "heldout_fraction_of",
    "is_heldout",
]

CORPUS_NAME = "gettext-v1"
FORMAT_VERSION = 1

DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "zh", "fr", "es", "ru", "ja", "de", "ar", "ko", "id", "vi", "hi")

# Distribution names, in priority order (the first package's translation of a
# held-out English message is the one in parallel/heldout.jsonl).
DEFAULT_PACKAGES: tuple[str, ...] = (
    "Django",
    "wagtail",
    "Sphinx",
    "django-oscar",
    "django-cms",
    "django-allauth",
    "Trac",
)

# What pyproject.toml needs for the default corpus (v1 was built from Django 5.2.19, wagtail 8.0.1,
# Sphinx 9.0.4, django-oscar 4.2.1, django-cms 5.1.3, django-allauth 65.21.1, Trac 1.6).
PIP_REQUIREMENTS: tuple[str, ...] = (
    "polib>=1.2",
    "Django>=5.2,<6.2",
    "wagtail>=7.0",
    "Sphinx>=8.0",
    "django-oscar>=4.0",
    "django-cms>=5.0",
    "django-allauth>=65.0",
    "Trac>=1.6",
)

DEFAULT_MIN_SENTENCES = 500


class CorpusBuildError(RuntimeError):
    """The corpus cannot be built as asked (missing package, no text for a language, ...)."""


# --------------------------------------------------------------------------- cleaning

_PRINTF = re.compile(r"%(?:\d+\$)?(?:\([^()\s]*\))?[#0+\-]*(?:\d+|\*)?(?:\.(?:\d+|\*))?[hlLqjzt]?[diouxXeEfFgGcrsa]")
_PRINTF_POSITIONAL_QT = re.compile(r"%\d+(?![\d$])")  # Qt-style %1, %2 (never followed by a conversion)
_TEMPLATE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\$\{[^{}]*\}")
_BRACE = re.compile(r"\{[^{}\s]*\}")
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:_-]*(?:\s[^<>]*)?/?>|<![^<>]*>")
_BLOCK_TAGS = re.compile(r"</?(?:br|p|div|li|ul|ol|h[1-6]|tr|td|th|table|dd|dt|dl|hr|section|pre)\b[^<>]*>", re.I)
_ANGLE_URL = re.compile(r"<((?:https?|ftp|mailto):[^<>\s]+)>")
_GENSHI = re.compile(r"\[\d+:([^\[\]]*)\]")  # Trac/Genshi i18n markup: "[1:click here]" -> "click here"
_HOLE = "\x03"  # where a placeholder was
_HOLE_PERCENT = re.compile(_HOLE + r"%")  # "%(value)s%% off" -> hole, not a dangling "%"
_HOLE_BEFORE_PUNCT = re.compile(r"[ \t]*" + _HOLE + r"(?=[\s" + _HOLE + r"]*[.,:;!?)\]»”’。，：；！？、）])")
_GAP = r"[\s" + _HOLE + r"]*"
_EMPTY_PAIRS = re.compile(
    "|".join(
        a + _GAP + b
        for a, b in [
            (r"\(", r"\)"),
            (r"\[", r"\]"),
            (r"\{", r"\}"),
            ("<", ">"),
            ('"', '"'),
            ("'", "'"),
            ("“", "”"),
            ("„", "“"),
            ("‘", "’"),
            ("«", "»"),
            ("‹", "›"),
            ("「", "」"),
            ("『", "』"),
            ("《", "》"),
            ("（", "）"),
            ("【", "】"),
            ("`+", "`+"),
        ]
    )
)
_SPACE = re.compile(r"\s+")
_LEADING_JUNK = re.compile(r"^[\s:;,.|/\-–—]+")
_WORD = re.compile(r"[^\W\d_]", re.UNICODE)
# Messages that are blocks of code or wiki markup, not sentences.
_CODE_BLOCK = re.compile(r"\{\{\{|```|^\s*\.\. \w+::", re.M)


def clean_message(text: str) -> str:
    """Remove placeholders and markup from one catalog message; return one line of text.

    Why: the corpus feeds activation statistics, where `%(name)s` or `<a href>`
    would be frequent, language-neutral tokens that dilute what is counted.
    A placeholder's hole is closed up before punctuation ("equal to %(n)s." ->
    "equal to."), and quotes or brackets left empty are removed.
    """
    text = text.replace("%%", "\x00")  # a literal percent sign survives placeholder stripping
    text = _TEMPLATE.sub(_HOLE, text)
    text = _PRINTF.sub(_HOLE, text)
    text = _PRINTF_POSITIONAL_QT.sub(_HOLE, text)
    text = text.replace("{{", "\x01").replace("}}", "\x02")
    text = _BRACE.sub(_HOLE, text)
    text = text.replace("\x01", "{").replace("\x02", "}").replace("\x00", "%")
    text = _HOLE_PERCENT.sub(_HOLE, text)
    text = _ANGLE_URL.sub(r"\1", text)
    text = _BLOCK_TAGS.sub(" ", text)
    text = _TAG.sub("", text)
    text = _GENSHI.sub(r"\1", text)
    text = html.unescape(text)
    previous = None
    while previous != text:
        previous = text
        text = _EMPTY_PAIRS.sub("", text)
    text = _HOLE_BEFORE_PUNCT.sub("", text).replace(_HOLE, " ")
    text = _SPACE.sub(" ", text)
    while previous != text:  # pairs emptied by the hole removal
        previous = text
        text = _SPACE.sub(" ", _EMPTY_PAIRS.sub("", text))
    return _LEADING_JUNK.sub("", text).strip()


def count_words(text: str) -> int:
    """Whitespace-separated tokens that contain at least one letter."""
    return sum(1 for tok in text.split() if _WORD.search(tok))


# Scripts expected for a language's letters; languages not listed skip the check.
_LATIN = ("LATIN",)
_SCRIPTS: dict[str, tuple[str, ...]] = {
    **{
        c: _LATIN
        for c in (
            "en",
            "fr",
            "es",
            "de",
            "id",
            "vi",
            "pt",
            "it",
            "nl",
            "pl",
            "tr",
            "sv",
            "da",
            "nb",
            "nn",
            "no",
            "fi",
            "cs",
            "sk",
            "sl",
            "hr",
            "ro",
            "hu",
            "ca",
            "eu",
            "gl",
            "et",
            "lv",
            "lt",
            "ms",
            "sw",
            "af",
            "sq",
            "az",
            "uz",
            "is",
            "ga",
            "cy",
            "eo",
        )
    },
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


# --------------------------------------------------------------------------- split


def heldout_fraction_of(key: str) -> float:
    """Map a normalised English message to [0, 1) by sha256; stable across runs, machines, versions."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return int(digest[:16], 16) / 2.0**64


def english_key(english: str) -> str:
    """The split/dedup key of a cleaned English message: whitespace-collapsed and casefolded."""
    return _SPACE.sub(" ", english).strip().casefold()


def is_heldout(english: str, fraction: float) -> bool:
    """Whether the English message (cleaned) belongs to the held-out split."""
    return heldout_fraction_of(english_key(english)) < fraction


# --------------------------------------------------------------------------- locales

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


@dataclass(frozen=True)
class CatalogFile:
    """One catalog inside a source: where it is, which locale, and which catalog it translates."""

    source: str  # distribution name or path given by the user
    path: str  # path inside the source (for reading and for provenance)
    locale: str  # the locale directory name as found
    catalog: str  # path with the locale replaced by `{}` and no extension: same key across locales
    kind: str  # "po" or "mo"


@dataclass
class SourceInfo:
    """Provenance of one package or path that catalogs were read from."""

    name: str
    version: str | None
    license: str | None
    license_classifiers: list[str]
    url: str | None
    reader: _Reader = field(repr=False)
    files: list[CatalogFile] = field(default_factory=list)


class _Reader:
    """Read bytes of a file inside an installed distribution, a directory or a wheel/zip."""

    def __init__(self, root: Path | None = None, archive: Path | None = None, dist=None):
        self.root, self.archive, self.dist = root, archive, dist
        self._zip: zipfile.ZipFile | None = None

    def names(self) -> list[str]:
        if self.dist is not None:
            return sorted(str(f) for f in (self.dist.files or []))
        if self.archive is not None:
            return sorted(self._zipfile().namelist())
        assert self.root is not None
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def read(self, name: str) -> bytes:
        if self.dist is not None:
            return Path(self.dist.locate_file(name)).read_bytes()
        if self.archive is not None:
            return self._zipfile().read(name)
        assert self.root is not None
        return (self.root / name).read_bytes()

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.archive)
        return self._zip


def _license_of(meta) -> tuple[str | None, list[str]]:
    classifiers = [c for c in (meta.get_all("Classifier") or []) if c.startswith("License")]
    lic = meta.get("License-Expression") or meta.get("License")
    if lic:
        lic = lic.strip().splitlines()[0][:200]
    return lic or None, classifiers


def _url_of(meta) -> str | None:
    if meta.get("Home-page"):
        return meta.get("Home-page")
    for entry in meta.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("homepage", "home", "source", "code", "repository"):
            return url.strip()
    return None


def open_source(spec: str | os.PathLike) -> SourceInfo:
    """Resolve a package name (installed distribution), a directory, or a wheel/zip path into a source.

    Raises CorpusBuildError naming the pip requirement when a distribution is not installed.
    """
    path = Path(spec)
    if isinstance(spec, os.PathLike) or path.exists() or os.sep in str(spec):
        if path.is_dir():
            reader = _Reader(root=path)
            return SourceInfo(str(spec), None, None, [], None, reader)
        if path.is_file() and zipfile.is_zipfile(path):
            reader = _Reader(archive=path)
            version = lic = url = None
            classifiers: list[str] = []
            meta_names = [n for n in reader.names() if n.endswith(".dist-info/METADATA")]
            if meta_names:
                from email.parser import BytesParser

                meta = BytesParser().parsebytes(reader.read(meta_names[0]))
                version = meta.get("Version")
                lic, classifiers = _license_of(meta)
                url = _url_of(meta)
            return SourceInfo(str(spec), version, lic, classifiers, url, reader)
        raise CorpusBuildError(f"catalog source {spec!r} is neither a directory nor a wheel/zip file")
    try:
        dist = importlib_metadata.distribution(str(spec))
    except importlib_metadata.PackageNotFoundError:
        wanted = [r for r in PIP_REQUIREMENTS if re.split(r"[<>=!~;\s\[]", r)[0].lower() == str(spec).lower()]
        hint = wanted[0] if wanted else str(spec)
        raise CorpusBuildError(
            f"package {spec!r} is not installed, so its translation catalogs cannot be read; "
            f"install it with `pip install '{hint}'` (or `pip install 'jlang[corpus]'`), or pass packages=... "
            f"without it"
        ) from None
    meta = dist.metadata
    lic, classifiers = _license_of(meta)
    return SourceInfo(meta["Name"], dist.version, lic, classifiers, _url_of(meta), _Reader(dist=dist))


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
    import polib

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
            stats["obsolete"] = stats.get("obsolete", 0) + 1
            continue
        if _CODE_BLOCK.search(entry.msgid):
            stats["code_block"] = stats.get("code_block", 0) + 1
            continue
        english = clean_message(entry.msgid)
        if count_words(english) < min_words:
            stats["short"] = stats.get("short", 0) + 1
            continue
        if "fuzzy" in (getattr(entry, "flags", None) or []):
            stats["fuzzy"] = stats.get("fuzzy", 0) + 1
            continue
        raw = _entry_text(entry)
        translation = clean_message(raw) if raw else ""
        if not translation:
            stats["untranslated"] = stats.get("untranslated", 0) + 1
            continue
        if language != "en" and translation.casefold() == english.casefold():
            stats["copy_of_english"] = stats.get("copy_of_english", 0) + 1
            continue
        if not in_expected_script(translation, language):
            stats["wrong_script"] = stats.get("wrong_script", 0) + 1
            continue
        stats["kept"] = stats.get("kept", 0) + 1
        yield Pair(english, translation)


# --------------------------------------------------------------------------- build


@dataclass
class _Collected:
    """Everything read from the catalogs, before splitting."""

    english: dict[str, str] = field(default_factory=dict)  # key -> first cleaned English text
    english_packages: dict[str, list[str]] = field(default_factory=dict)  # key -> packages, in order
    # language -> list of (english key, translation), in reading order
    translations: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    # language -> english key -> first translation (for the parallel file)
    first: dict[str, dict[str, str]] = field(default_factory=dict)
    rejected: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped_catalogs: list[dict[str, str]] = field(default_factory=list)


def _note_english(col: _Collected, english: str, package: str) -> str:
    key = english_key(english)
    if key not in col.english:
        col.english[key] = english
        col.english_packages[key] = []
    if package not in col.english_packages[key]:
        col.english_packages[key].append(package)
    return key


def _collect_source(col: _Collected, source: SourceInfo, languages: Sequence[str], min_words: int) -> None:
    """Read one source's catalogs for the requested languages into `col`."""
    catalogs = list_catalogs(source)
    source.files = []
    by_catalog: dict[str, list[CatalogFile]] = {}
    for c in catalogs:
        by_catalog.setdefault(c.catalog, []).append(c)
    for catalog, files in by_catalog.items():
        cache: dict[str, list | None] = {}

        def entries_of(cf: CatalogFile) -> list | None:
            if cf.path not in cache:
                try:
                    cache[cf.path] = read_catalog(source.reader.read(cf.path), cf.kind)
                except Exception as exc:  # a broken catalog in a package must not stop the build
                    col.skipped_catalogs.append({"source": source.name, "path": cf.path, "reason": str(exc)[:200]})
                    cache[cf.path] = None
            return cache[cf.path]

        for language in languages:
            if language == "en":
                continue  # English is the message ids; collected below from every catalog read
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
                        col.skipped_catalogs.append(
                            {"source": source.name, "path": cf.path, "reason": "bare zh catalog is Traditional"}
                        )
                        continue
                source.files.append(cf)
                for pair in extract_pairs(entries, language, min_words, stats):
                    key = _note_english(col, pair.english, source.name)
                    if key in seen_here:
                        continue
                    seen_here.add(key)
                    col.translations.setdefault(language, []).append((key, pair.translation))
                    col.first.setdefault(language, {}).setdefault(key, pair.translation)

        if "en" in languages:
            # English sentences are the message ids of this catalog group: their union over the
            # `en*` catalogs and every catalog read above (a `.mo` holds translated ids only).
            stats = col.rejected.setdefault("en", {})
            english_files = [cf for cf in files if normalise_locale(cf.locale).split("_")[0] == "en"]
            english_files += [cf for cf in files if cf.path in cache and cf not in english_files]
            for cf in english_files:
                entries = entries_of(cf)
                if entries is None:
                    continue
                source.files.append(cf)
                for entry in entries:
                    if not entry.msgid or getattr(entry, "obsolete", False) or _CODE_BLOCK.search(entry.msgid):
                        continue
                    english = clean_message(entry.msgid)
                    if count_words(english) < min_words:
                        continue
                    key = _note_english(col, english, source.name)
                    col.translations.setdefault("en", []).append((key, col.english[key]))
                    stats["ids_read"] = stats.get("ids_read", 0) + 1


def _split_language(items: Sequence[tuple[str, str]], heldout_keys: set[str]) -> tuple[list[str], list[str]]:
    """Deduplicate one language's sentences and split them by their English key; held-out wins."""
    held: dict[str, None] = {}
    train: dict[str, None] = {}
    for key, text in items:
        (held if key in heldout_keys else train)[text] = None
    return [t for t in train if t not in held], list(held)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def _jlang_version() -> str:
    try:
        from jlang import __version__

        return __version__
    except Exception:  # pragma: no cover - jlang's __init__ failing must not block a data build
        return "unknown"


def build_gettext_corpus(
    out_dir: str | os.PathLike,
    languages: Sequence[str] = DEFAULT_LANGUAGES,
    *,
    min_words: int = 4,
    heldout_fraction: float = 0.1,
    min_sentences: int = DEFAULT_MIN_SENTENCES,
    packages: Sequence[str | os.PathLike] = DEFAULT_PACKAGES,
    progress: bool = True,
) -> dict:
    """Extract the gettext catalogs of `packages` into a per-language corpus at `out_dir`.

    Args:
      out_dir: directory to write (created; existing files of the same names are overwritten).
      languages: language codes (`zh` = Simplified; `pt_BR`, `zh_Hant` select one variant).
      min_words: minimum words in the cleaned English message.
      heldout_fraction: share of English messages held out (by sha256 of the message, see module doc).
      min_sentences: languages with fewer train sentences are dropped and reported in the manifest.
      packages: installed distribution names, or paths to directories / wheels holding catalogs.
      progress: show a tqdm bar over packages.

    Returns:
      The manifest (also written to `{out_dir}/manifest.json`).
    """
    languages = list(dict.fromkeys(languages))
    if not languages:
        raise CorpusBuildError("no languages requested")
    if not 0.0 <= heldout_fraction < 1.0:
        raise CorpusBuildError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    sources = [open_source(p) for p in packages]  # fail on a missing package before any work
    if not sources:
        raise CorpusBuildError("no packages given")

    col = _Collected()
    iterator: Iterable[SourceInfo] = sources
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(sources, desc="reading catalogs", unit="package")
    for source in iterator:
        _collect_source(col, source, languages, min_words)

    heldout_keys = {k for k in col.english if heldout_fraction_of(k) < heldout_fraction}
    splits = {lang: _split_language(col.translations.get(lang, []), heldout_keys) for lang in languages}

    kept: list[str] = []
    dropped: dict[str, dict] = {}
    for lang in languages:
        n_train = len(splits[lang][0])
        if n_train < min_sentences:
            dropped[lang] = {
                "reason": f"only {n_train} train sentences (< min_sentences={min_sentences})",
                "train_sentences": n_train,
                "heldout_sentences": len(splits[lang][1]),
            }
        else:
            kept.append(lang)
    if dropped:
        warnings.warn(
            "gettext corpus: dropped "
            + ", ".join(f"{lang} ({d['train_sentences']} sentences)" for lang, d in dropped.items())
            + f"; fewer than min_sentences={min_sentences}",
            stacklevel=2,
        )
    if not kept:
        raise CorpusBuildError(
            f"no language has at least {min_sentences} sentences in {[s.name for s in sources]}; "
            f"install more catalog packages or lower min_sentences"
        )

    out = Path(out_dir)
    counts: dict[str, dict[str, int]] = {}
    for lang in kept:
        train, held = splits[lang]
        _write_lines(out / "train" / f"{lang}.txt", train)
        _write_lines(out / "heldout" / f"{lang}.txt", held)
        counts[lang] = {
            "train_sentences": len(train),
            "train_chars": sum(len(t) for t in train),
            "heldout_sentences": len(held),
            "heldout_chars": sum(len(t) for t in held),
        }

    rows = []
    for key, english in col.english.items():
        if key not in heldout_keys:
            continue
        text = {"en": english}
        for lang in kept:
            if lang != "en" and key in col.first.get(lang, {}):
                text[lang] = col.first[lang][key]
        if len(text) > 1:
            rows.append(
                {
                    "id": hashlib.sha256(key.encode("utf-8")).hexdigest()[:16],
                    "packages": col.english_packages[key],
                    "text": text,
                }
            )
    (out / "parallel").mkdir(parents=True, exist_ok=True)
    with open(out / "parallel" / "heldout.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    manifest = {
        "name": f"jlang-{CORPUS_NAME}",
        "format_version": FORMAT_VERSION,
        "jlang_version": _jlang_version(),
        "languages": kept,
        "requested_languages": languages,
        "dropped": dropped,
        "counts": counts,
        "summary": ", ".join(
            f"{lang}: {counts[lang]['train_sentences']} train / {counts[lang]['heldout_sentences']} held-out sentences"
            for lang in kept
        ),
        "parallel_heldout_rows": len(rows),
        "english_messages": len(col.english),
        "sources": [
            {
                "package": s.name,
                "version": s.version,
                "license": s.license,
                "license_classifiers": s.license_classifiers,
                "url": s.url,
                "catalog_files_read": len({c.path for c in s.files}),
                "locales_read": sorted({c.locale for c in s.files}),
            }
            for s in sources
        ],
        "licence_note": (
            "Each sentence is a translation shipped inside the named package and is distributed under that "
            "package's licence (translations are contributed to the project under its licence)."
        ),
        "filters": {
            "min_words": min_words,
            "min_words_counted_on": "the cleaned English message, for every language",
            "min_sentences": min_sentences,
            "skipped": "fuzzy, obsolete, untranslated entries; translations equal to the English; "
            "translations whose letters are mostly outside the language's script",
            "plural_entries": "msgid paired with msgstr[0]",
            "cleaning": "printf (%(name)s, %s, %1$s), brace ({0}, {name}), template ({{ x }}, {% x %}, ${x}) "
            "placeholders and HTML tags removed; entities decoded; empty quote/bracket pairs "
            "removed; whitespace collapsed",
            "dedup": "exact string, per language and split",
            "zh": "Simplified: zh_Hans > zh_CN > zh (if its characters look Simplified) > zh_SG > zh_MY; "
            "Traditional excluded",
            "variants": "bare locale > xx_XX > other regions by name; one variant's translation per message "
            "and package",
        },
        "rejected_entries": col.rejected,
        "skipped_catalogs": col.skipped_catalogs,
        "split": {
            "heldout_fraction": heldout_fraction,
            "rule": "held out iff int(sha256(casefold(collapse_ws(clean(msgid)))).hexdigest()[:16], 16) / 2**64 "
            "< heldout_fraction; a train sentence equal to a held-out one is removed from train",
        },
        "layout": {
            "train": "train/{lang}.txt",
            "heldout": "heldout/{lang}.txt",
            "parallel": "parallel/heldout.jsonl rows {id, packages, text: {lang: sentence}} (en always present)",
        },
    }
    with open(out / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=2)
        f.write("\n")
    return manifest


def format_summary(manifest: Mapping) -> str:
    """A short human-readable table of a manifest (for `jlang corpus build`)."""
    lines = [f"{'lang':<6}{'train':>8}{'held-out':>10}{'train chars':>13}"]
    for lang in manifest["languages"]:
        c = manifest["counts"][lang]
        lines.append(f"{lang:<6}{c['train_sentences']:>8}{c['heldout_sentences']:>10}{c['train_chars']:>13}")
    for lang, d in manifest.get("dropped", {}).items():
        lines.append(f"{lang:<6} dropped: {d['reason']}")
    lines.append(
        "sources: " + ", ".join(f"{s['package']} {s['version']} ({s['license']})" for s in manifest["sources"])
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- tokens, cache


def count_tokens(
    corpus_dir: str | os.PathLike, tokenizer, *, split: str = "train", batch_size: int = 1000
) -> dict[str, int]:
    """Tokens per language of `{corpus_dir}/{split}/{lang}.txt` under `tokenizer` (no special tokens).

    Languages are those in the manifest when there is one, otherwise every `*.txt` in the split folder.
    """
    root = Path(corpus_dir)
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        languages = json.loads(manifest_path.read_text(encoding="utf-8"))["languages"]
    else:
        languages = sorted(p.stem for p in (root / split).glob("*.txt"))
    counts: dict[str, int] = {}
    for lang in languages:
        lines = (root / split / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        total = 0
        for i in range(0, len(lines), batch_size):
            enc = tokenizer(lines[i : i + batch_size], add_special_tokens=False)["input_ids"]
            total += sum(len(x) for x in enc)
        counts[lang] = total
    return counts


def default_corpus_dir() -> Path:
    """Where the default corpus lives: `$JLANG_CACHE_DIR/corpora/gettext-v1`, else `~/.cache/jlang/corpora/...`.

    `$XDG_CACHE_HOME/jlang` replaces `~/.cache/jlang` when set.
    """
    root = os.environ.get("JLANG_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "jlang"
    return base / "corpora" / CORPUS_NAME


def ensure_default_corpus(path: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """Return the default corpus directory, building it once if it is not there yet.

    The build goes to a temporary sibling directory that is renamed into place
    only when complete, so a killed build never leaves a half corpus that looks done.
    """
    target = Path(path) if path is not None else default_corpus_dir()
    if (target / "manifest.json").exists():
        return target
    from jlang.io.atomic import atomic_directory

    with atomic_directory(target) as tmp:
        build_gettext_corpus(tmp, progress=progress)
    return target
