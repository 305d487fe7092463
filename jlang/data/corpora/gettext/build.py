"""`build_gettext_corpus`: the catalogs of the packages -> train / held-out sentences per language, the
parallel held-out rows and the manifest (the layout is in the package doc).

Held-out split: an English message is held out iff `int(sha256(key)[:16 hex], 16) / 2**64 <
heldout_fraction`, where `key` is the cleaned English message casefolded. The same meaning is therefore
held out in every language. A translation that is also the translation of a held-out message is removed
from train (no leakage).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from jlang.data.corpora.common import (
    heldout_fraction_of,
    manifest_header,
    sha256_hex,
    with_progress,
    write_jsonl,
    write_lines,
    write_manifest,
)
from jlang.data.corpora.gettext.collect import Collected, collect_source, split_language
from jlang.data.corpora.gettext.packages import DEFAULT_PACKAGES, CorpusBuildError, SourceInfo, open_source

__all__ = [
    "CORPUS_NAME",
    "DEFAULT_LANGUAGES",
    "DEFAULT_MIN_SENTENCES",
    "FORMAT_VERSION",
    "build_gettext_corpus",
    "format_summary",
]

CORPUS_NAME = "gettext-v1"
FORMAT_VERSION = 1

DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "zh", "fr", "es", "ru", "ja", "de", "ar", "ko", "id", "vi", "hi")
DEFAULT_MIN_SENTENCES = 500

Splits = dict[str, tuple[list[str], list[str]]]  # language -> (train sentences, held-out sentences)


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

    col = Collected()
    for source in with_progress(sources, progress, desc="reading catalogs", unit="package"):
        collect_source(col, source, languages, min_words)
    heldout_keys = {k for k in col.english if heldout_fraction_of(k) < heldout_fraction}
    splits = {lang: split_language(col.translations.get(lang, []), heldout_keys) for lang in languages}
    kept, dropped = _keep_languages(splits, languages, min_sentences, sources)

    out = Path(out_dir)
    counts = _write_splits(out, splits, kept)
    rows = _parallel_rows(col, heldout_keys, kept)
    write_jsonl(out / "parallel" / "heldout.jsonl", rows)
    manifest = {
        **manifest_header(CORPUS_NAME, FORMAT_VERSION, kept, languages, dropped, counts, unit="sentences"),
        "parallel_heldout_rows": len(rows),
        "english_messages": len(col.english),
        "sources": [_source_entry(s) for s in sources],
        "licence_note": LICENCE_NOTE,
        "filters": {
            "min_words": min_words,
            "min_words_counted_on": "the cleaned English message, for every language",
            "min_sentences": min_sentences,
            **FILTER_RULES,
        },
        "rejected_entries": col.rejected,
        "skipped_catalogs": col.skipped_catalogs,
        "split": {"heldout_fraction": heldout_fraction, "rule": SPLIT_RULE},
        "layout": LAYOUT,
    }
    write_manifest(out, manifest)
    return manifest


def _keep_languages(
    splits: Splits, languages: Sequence[str], min_sentences: int, sources: Sequence[SourceInfo]
) -> tuple[list[str], dict[str, dict]]:
    """(kept languages, dropped language -> why): a language needs `min_sentences` train sentences."""
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
            stacklevel=3,  # the caller of build_gettext_corpus
        )
    if not kept:
        raise CorpusBuildError(
            f"no language has at least {min_sentences} sentences in {[s.name for s in sources]}; "
            f"install more catalog packages or lower min_sentences"
        )
    return kept, dropped


def _write_splits(out: Path, splits: Splits, kept: Sequence[str]) -> dict[str, dict[str, int]]:
    """`train/{lang}.txt` and `heldout/{lang}.txt` of the kept languages; returns their counts."""
    counts: dict[str, dict[str, int]] = {}
    for lang in kept:
        train, held = splits[lang]
        write_lines(out / "train" / f"{lang}.txt", train)
        write_lines(out / "heldout" / f"{lang}.txt", held)
        counts[lang] = {
            "train_sentences": len(train),
            "train_chars": sum(len(t) for t in train),
            "heldout_sentences": len(held),
            "heldout_chars": sum(len(t) for t in held),
        }
    return counts


def _parallel_rows(col: Collected, heldout_keys: set[str], kept: Sequence[str]) -> list[dict]:
    """One row per held-out English message that has a translation in a kept language."""
    rows = []
    for key, english in col.english.items():
        if key not in heldout_keys:
            continue
        text = {"en": english}
        for lang in kept:
            if lang != "en" and key in col.first.get(lang, {}):
                text[lang] = col.first[lang][key]
        if len(text) > 1:
            rows.append({"id": sha256_hex(key)[:16], "packages": col.english_packages[key], "text": text})
    return rows


def _source_entry(source: SourceInfo) -> dict:
    """A source's provenance in the manifest."""
    return {
        "package": source.name,
        "version": source.version,
        "license": source.license,
        "license_classifiers": source.license_classifiers,
        "url": source.url,
        "catalog_files_read": len({c.path for c in source.files}),
        "locales_read": sorted({c.locale for c in source.files}),
    }


# The manifest's fixed text.
LICENCE_NOTE = (
    "Each sentence is a translation shipped inside the named package and is distributed under that "
    "package's licence (translations are contributed to the project under its licence)."
)
# The manifest's filter rules after the two `min_*` settings, in the manifest's order.
FILTER_RULES = {
    "skipped": "fuzzy, obsolete, untranslated entries; translations equal to the English; "
    "translations whose letters are mostly outside the language's script",
    "plural_entries": "msgid paired with msgstr[0]",
    "cleaning": "printf (%(name)s, %s, %1$s), brace ({0}, {name}), template ({{ x }}, {% x %}, ${x}) "
    "placeholders and HTML tags removed; entities decoded; empty quote/bracket pairs "
    "removed; whitespace collapsed",
    "dedup": "exact string, per language and split",
    "zh": "Simplified: zh_Hans > zh_CN > zh (if its characters look Simplified) > zh_SG > zh_MY; Traditional excluded",
    "variants": "bare locale > xx_XX > other regions by name; one variant's translation per message and package",
}
SPLIT_RULE = (
    "held out iff int(sha256(casefold(collapse_ws(clean(msgid)))).hexdigest()[:16], 16) / 2**64 "
    "< heldout_fraction; a train sentence equal to a held-out one is removed from train"
)
LAYOUT = {
    "train": "train/{lang}.txt",
    "heldout": "heldout/{lang}.txt",
    "parallel": "parallel/heldout.jsonl rows {id, packages, text: {lang: sentence}} (en always present)",
}


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
