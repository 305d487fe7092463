"""`build_code_corpus`: sources -> per-language train / held-out documents and the manifest (the layout
and the rules are in the package doc); `code_build_params`, how a corpus was built; `format_code_summary`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from jlang.data.corpora.code.collect import FileRules, Split, collect_language
from jlang.data.corpora.code.discover import DEFAULT_CARGO_REGISTRY, CodeSource, DirectorySpec, discover_sources
from jlang.data.corpora.code.english import english_documents
from jlang.data.corpora.code.languages import (
    DEFAULT_CODE_LANGUAGES,
    ENGLISH,
    EXTENSIONS,
    INSTALL_HINTS,
    CodeCorpusError,
)
from jlang.data.corpora.common import manifest_header, sha256_hex, with_progress, write_jsonl, write_manifest

__all__ = ["CODE_CORPUS_NAME", "FORMAT_VERSION", "build_code_corpus", "code_build_params", "format_code_summary"]

CODE_CORPUS_NAME = "code-v1"
FORMAT_VERSION = 1

Splits = dict[str, tuple[Split, Split]]  # language -> (train, held-out)


def build_code_corpus(
    out_dir: str | os.PathLike,
    languages: Sequence[str] = DEFAULT_CODE_LANGUAGES,
    *,
    english: str | os.PathLike | Sequence[str] | None = "gettext",
    max_chars_per_language: int = 400_000,
    max_chars_per_file: int = 4_000,
    max_file_bytes: int = 1 << 20,
    min_chars: int = 200,
    max_line_chars: int = 1000,
    heldout_fraction: float = 0.15,
    min_documents: int = 20,
    min_heldout_documents: int = 2,
    english_doc_chars: int = 1000,
    site_dirs: Sequence[str | os.PathLike] | None = None,
    packages: Sequence[str] | None = None,
    exclude: Sequence[str] = ("jlang",),
    stdlib: bool = True,
    python_include: bool = True,
    cargo_registry: str | os.PathLike | None = DEFAULT_CARGO_REGISTRY,
    directories: Sequence[DirectorySpec | Mapping] = (),
    progress: bool = True,
) -> dict:
    """Write a programming-language corpus (plus English) at `out_dir`; return its manifest (module doc).

    Args:
      languages: programming languages (keys of `EXTENSIONS`) and `"english"`.
      english: "gettext" (the English of jlang's default corpus), a text file (one message or paragraph
        per line), a list of documents, or None (only needed when "english" is in `languages`).
      max_chars_per_language: characters of the train split per language (the held-out split gets the
        files whose hash falls below `heldout_fraction` meanwhile, at most as many characters).
      max_chars_per_file: files are cut at a line boundary to at most this many characters.
      max_file_bytes, min_chars, max_line_chars: file filters (module doc).
      heldout_fraction: share of files held out, by sha256 of the cleaned text.
      min_documents, min_heldout_documents: a language with fewer train / held-out documents is dropped
        (warned and listed in the manifest with what to install).
      english_doc_chars: English messages are joined into documents of about this size.
      site_dirs, packages, exclude, stdlib, python_include, cargo_registry, directories: where source
        files come from (`discover_sources`).
      progress: a tqdm bar over languages.
    """
    arguments = dict(locals())  # first statement: exactly the call's arguments, for the manifest
    languages = _checked_languages(languages, english, heldout_fraction)
    _check_positive(
        max_chars_per_language=max_chars_per_language, max_chars_per_file=max_chars_per_file, min_chars=min_chars
    )
    # where files come from: the arguments named as `discover_sources`' own
    sources = discover_sources(**{name: arguments[name] for name in inspect.signature(discover_sources).parameters})
    usable = [s for s in sources if s.usable]
    rules = FileRules(max_chars_per_file, max_file_bytes, min_chars, max_line_chars)
    splits, skipped, english_info = _collect(
        languages,
        usable,
        english,
        rules=rules,
        max_chars=max_chars_per_language,
        heldout_fraction=heldout_fraction,
        english_doc_chars=english_doc_chars,
        progress=progress,
    )
    kept, dropped = _keep_languages(splits, languages, min_documents, min_heldout_documents, len(usable))

    out = Path(out_dir)
    counts, used = _write_splits(out, splits, kept)
    build_params = code_build_params(**{k: v for k, v in arguments.items() if k not in ("out_dir", "progress")})
    manifest = {
        **manifest_header(CODE_CORPUS_NAME, FORMAT_VERSION, kept, languages, dropped, counts, unit="documents"),
        "english": english_info,
        "sources_used": [_source_entry(s, files=used[s.name]) for s in usable if s.name in used],
        "sources_considered": len(sources),
        "sources_rejected": [
            _source_entry(s, reason=s.reason, candidate_files=len(s.files)) for s in sources if not s.usable and s.files
        ],
        "skipped_files": skipped,
        "licence_note": LICENCE_NOTE,
        "filters": _filters(kept, rules),
        "split": {"heldout_fraction": heldout_fraction, "rule": SPLIT_RULE},
        "build": {"params": build_params},
        "layout": LAYOUT,
    }
    write_manifest(out, manifest)
    return manifest


def _checked_languages(languages: Sequence[str], english, heldout_fraction: float) -> list[str]:
    """The requested languages, deduplicated, once the request is known to make sense."""
    languages = list(dict.fromkeys(languages))
    if not languages:
        raise CodeCorpusError("no languages requested")
    unknown = [l for l in languages if l != ENGLISH and l not in EXTENSIONS]
    if unknown:
        raise CodeCorpusError(f"unknown languages {unknown}; known: {sorted(EXTENSIONS)} and {ENGLISH!r}")
    if not 0.0 < heldout_fraction < 1.0:
        raise CodeCorpusError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if ENGLISH in languages and english is None:
        raise CodeCorpusError("'english' is requested but english=None; give 'gettext', a text file or a list")
    return languages


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise CodeCorpusError(f"{name} must be positive, got {value}")


def _collect(
    languages: Sequence[str],
    sources: Sequence[CodeSource],
    english,
    *,
    rules: FileRules,
    max_chars: int,
    heldout_fraction: float,
    english_doc_chars: int,
    progress: bool,
) -> tuple[Splits, dict[str, dict[str, int]], dict | None]:
    """(train and held-out documents per language, skipped files per programming language and reason,
    where the English comes from)."""
    splits: Splits = {}
    skipped: dict[str, dict[str, int]] = {}
    english_info = None
    seen: set[str] = set()  # the sha256 of every file taken, across languages
    for lang in with_progress(languages, progress, desc="reading source files", unit="language"):
        if lang == ENGLISH:
            train, held, english_info = english_documents(
                english, max_chars=max_chars, heldout_fraction=heldout_fraction, doc_chars=english_doc_chars
            )
            splits[lang] = (train, held)
            continue
        skipped[lang] = {}
        splits[lang] = collect_language(
            lang,
            sources,
            seen=seen,
            max_chars=max_chars,
            rules=rules,
            heldout_fraction=heldout_fraction,
            skipped=skipped[lang],
        )
    return splits, skipped, english_info


def _keep_languages(
    splits: Splits, languages: Sequence[str], min_documents: int, min_heldout_documents: int, n_usable: int
) -> tuple[list[str], dict[str, dict]]:
    """(kept languages, dropped language -> why and what to install): a language needs `min_documents` train
    and `min_heldout_documents` held-out documents."""
    kept, dropped = [], {}
    for lang in languages:
        train, held = splits[lang]
        if len(train.docs) < min_documents or len(held.docs) < min_heldout_documents:
            dropped[lang] = {
                "reason": f"{len(train.docs)} train / {len(held.docs)} held-out documents (< {min_documents} / "
                f"{min_heldout_documents})",
                "hint": INSTALL_HINTS.get(lang, "install packages that ship such files"),
                "train_documents": len(train.docs),
                "heldout_documents": len(held.docs),
            }
        else:
            kept.append(lang)
    if dropped:
        warnings.warn(
            "code corpus: dropped " + "; ".join(f"{l} ({d['reason']}; {d['hint']})" for l, d in dropped.items()),
            stacklevel=3,  # the caller of build_code_corpus
        )
    if not kept:
        raise CodeCorpusError(
            f"no language has enough files in the {n_usable} usable sources; see the hints: "
            + "; ".join(f"{l}: {d['hint']}" for l, d in dropped.items())
        )
    return kept, dropped


def _write_splits(out: Path, splits: Splits, kept: Sequence[str]) -> tuple[dict[str, dict], dict[str, dict[str, int]]]:
    """`train/{lang}.jsonl` and `heldout/{lang}.jsonl` of the kept languages; returns (counts per language,
    source -> language -> documents)."""
    counts: dict[str, dict] = {}
    used: dict[str, dict[str, int]] = {}
    for lang in kept:
        train, held = splits[lang]
        write_jsonl(out / "train" / f"{lang}.jsonl", train.docs)
        write_jsonl(out / "heldout" / f"{lang}.jsonl", held.docs)
        by_source: dict[str, int] = {}
        for d in train.docs + held.docs:
            by_source[d["source"]] = by_source.get(d["source"], 0) + 1
            used.setdefault(d["source"], {})
            used[d["source"]][lang] = used[d["source"]].get(lang, 0) + 1
        counts[lang] = {
            "train_documents": len(train.docs),
            "train_chars": train.chars,
            "heldout_documents": len(held.docs),
            "heldout_chars": held.chars,
            "sources": len(by_source),
            "top_sources": dict(sorted(by_source.items(), key=lambda kv: -kv[1])[:8]),
        }
    return counts, used


def _source_entry(source: CodeSource, **extra) -> dict:
    """A source's provenance in the manifest, with `extra` fields after it."""
    return {"name": source.name, "kind": source.kind, "version": source.version, "licence": source.licence, **extra}


def _filters(kept: Sequence[str], rules: FileRules) -> dict:
    """The manifest's filter rules."""
    return {
        "extensions": {l: list(EXTENSIONS[l]) for l in kept if l in EXTENSIONS},
        "header_rule": ".h is C++ when it has C++-only syntax (namespace, template <, std::, access specifiers, "
        "C++ standard headers), else C",
        "max_file_bytes": rules.max_file_bytes,
        "min_chars": rules.min_chars,
        "max_line_chars": rules.max_line_chars,
        "max_chars_per_file": rules.max_chars_per_file,
        "licence_headers": "a first comment block naming a licence or copyright is removed",
        "skipped": "binary (NUL), not UTF-8, minified (*.min.js/css, long lines, mean line > 200 chars), "
        "generated (@generated / autogenerated / do not edit near the top), short, duplicate",
        "dedup": "exact, on the cleaned text, across sources and languages",
        "sampling": "round-robin over sources, each source's files in sha256(source/path) order, until the train "
        "split holds max_chars_per_language characters",
    }


# The manifest's fixed text.
LICENCE_NOTE = (
    "Only sources with a recognised open licence are read. The text is never redistributed: it stays in "
    "this local cache and is read at run time; what jlang writes from it (activation statistics, neuron "
    "masks, perplexities) are statistics of the text."
)
SPLIT_RULE = (
    "held out iff int(sha256(cleaned text).hexdigest()[:16], 16) / 2**64 < heldout_fraction "
    "(English from the gettext corpus keeps that corpus's split)"
)
LAYOUT = {
    "train": "train/{lang}.jsonl",
    "heldout": "heldout/{lang}.jsonl",
    "row": '{"text": file contents, "source": package/crate, "path": path inside it, "sha": 16 hex}',
}


def code_build_params(**build_kwargs) -> dict:
    """The JSON form of `build_code_corpus` arguments with its defaults filled in (how a cached corpus was built).

    In-memory English documents are recorded by count and sha256, not by text.
    """
    bound = inspect.signature(build_code_corpus).bind_partial(**build_kwargs)
    bound.apply_defaults()
    args = {k: v for k, v in bound.arguments.items() if k not in ("out_dir", "progress")}
    english = args.get("english")
    if english is not None and not isinstance(english, (str, os.PathLike)):
        docs = list(english)
        args["english"] = {"documents": len(docs), "sha256": sha256_hex("\x00".join(docs))}
    args["languages"] = list(dict.fromkeys(args["languages"]))
    return json.loads(json.dumps(_jsonable_arg(args), default=str))


def _jsonable_arg(value):
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, DirectorySpec):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable_arg(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable_arg(v) for v in value]
    return value


def format_code_summary(manifest: Mapping) -> str:
    """A short human-readable table of a code corpus manifest (for `jlang code-corpus`)."""
    lines = [f"{'language':<12}{'train':>7}{'held-out':>10}{'train chars':>13}{'sources':>9}  top sources"]
    for lang in manifest["languages"]:
        c = manifest["counts"][lang]
        top = ", ".join(f"{k} {v}" for k, v in list(c["top_sources"].items())[:4])
        lines.append(
            f"{lang:<12}{c['train_documents']:>7}{c['heldout_documents']:>10}{c['train_chars']:>13,}"
            f"{c['sources']:>9}  {top}"
        )
    for lang, d in manifest.get("dropped", {}).items():
        lines.append(f"{lang:<12} dropped: {d['reason']}; {d['hint']}")
    lines.append(
        f"{len(manifest['sources_used'])} sources used, {len(manifest['sources_rejected'])} with files rejected "
        "for their licence"
    )
    return "\n".join(lines)
