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

The steps, one module each, in the order of the flow:

    clean.py      one catalog message -> one line of text; the English key that splits and deduplicates
    scripts.py    is a translation in its language's script; is a bare `zh` catalog Traditional
    packages.py   where catalogs come from (distributions, directories, wheels) and their provenance
    catalogs.py   locale ranks, reading `.po`/`.mo`, the usable (English, translation) pairs of a catalog
    collect.py    every catalog of the sources -> sentences per language keyed by their English message
    build.py      `build_gettext_corpus`: split, write, manifest; `format_summary`
    cache.py      `ensure_default_corpus` (the cached default corpus), `count_tokens`
"""

from jlang.data.corpora.common import heldout_fraction_of
from jlang.data.corpora.gettext.build import (
    CORPUS_NAME,
    DEFAULT_LANGUAGES,
    DEFAULT_MIN_SENTENCES,
    FORMAT_VERSION,
    build_gettext_corpus,
    format_summary,
)
from jlang.data.corpora.gettext.cache import count_tokens, default_corpus_dir, ensure_default_corpus
from jlang.data.corpora.gettext.catalogs import (
    Pair,
    extract_pairs,
    list_catalogs,
    locale_rank,
    normalise_locale,
    read_catalog,
)
from jlang.data.corpora.gettext.clean import clean_message, count_words, english_key, is_heldout
from jlang.data.corpora.gettext.packages import (
    DEFAULT_PACKAGES,
    PIP_REQUIREMENTS,
    CatalogFile,
    CorpusBuildError,
    SourceInfo,
    open_source,
)
from jlang.data.corpora.gettext.scripts import in_expected_script, looks_traditional

__all__ = [
    "CORPUS_NAME",
    "DEFAULT_LANGUAGES",
    "DEFAULT_MIN_SENTENCES",
    "DEFAULT_PACKAGES",
    "FORMAT_VERSION",
    "PIP_REQUIREMENTS",
    "CatalogFile",
    "CorpusBuildError",
    "Pair",
    "SourceInfo",
    "build_gettext_corpus",
    "clean_message",
    "count_tokens",
    "count_words",
    "default_corpus_dir",
    "english_key",
    "ensure_default_corpus",
    "extract_pairs",
    "format_summary",
    "heldout_fraction_of",
    "in_expected_script",
    "is_heldout",
    "list_catalogs",
    "locale_rank",
    "looks_traditional",
    "normalise_locale",
    "open_source",
    "read_catalog",
]
