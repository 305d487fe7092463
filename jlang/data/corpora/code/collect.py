"""One programming language's files, read from the sources into train and held-out documents.

- **Dedup**: exact, on the cleaned text (vendored copies of jQuery or `six.py` count once), across all
  sources and languages.
- **Sampling is deterministic and spread over sources.** Each source's candidate files are ordered by
  sha256 of `source/path`; files are then taken round-robin over sources (every source's first file, then
  every source's second, ...) until the language's train split holds `max_chars` characters. No single
  package dominates a language while others have files.
- **Held-out split**: a file is held out iff `int(sha256(text)[:16], 16) / 2**64 < heldout_fraction`; the
  same text is in the same split on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jlang.data.corpora.code.clean import clean_code, reject_reason
from jlang.data.corpora.code.discover import CodeSource
from jlang.data.corpora.code.languages import EXTENSIONS, language_of, suffix
from jlang.data.corpora.common import heldout_fraction_of, sha256_hex, tally

__all__ = ["FileRules", "Split", "collect_language", "round_robin"]


@dataclass
class Split:
    """The documents of one split of one language (JSONL rows) and their characters."""

    docs: list[dict] = field(default_factory=list)
    chars: int = 0

    def add(self, doc: dict) -> None:
        self.docs.append(doc)
        self.chars += len(doc["text"])


@dataclass(frozen=True)
class FileRules:
    """Which files are used and how they are cut (`clean`'s module doc)."""

    max_chars_per_file: int
    max_file_bytes: int
    min_chars: int
    max_line_chars: int


def round_robin(sources: Sequence[CodeSource], language: str) -> Iterator[tuple[int, str]]:
    """(source index, path) of every candidate file for `language`, spread over sources (module doc)."""
    per_source = []
    for i, src in enumerate(sources):
        exts = EXTENSIONS[language]
        files = [f for f in src.files if suffix(f) in exts]
        files.sort(key=lambda f: sha256_hex(f"{src.name}/{f}"))
        per_source.append((i, files))
    order = sorted(range(len(per_source)), key=lambda i: sha256_hex(sources[i].name))
    rank = 0
    while True:
        any_left = False
        for i in order:
            files = per_source[i][1]
            if rank < len(files):
                any_left = True
                yield i, files[rank]
        if not any_left:
            return
        rank += 1


def collect_language(
    language: str,
    sources: Sequence[CodeSource],
    *,
    seen: set[str],
    max_chars: int,
    rules: FileRules,
    heldout_fraction: float,
    skipped: dict[str, int],
) -> tuple[Split, Split]:
    """Read one programming language's files round-robin over sources until the train split is full.

    Args:
      seen: sha256 of every text taken so far (all languages); updated.
      max_chars: characters of the train split (the held-out split takes at most as many).
      skipped: files skipped, by reason; updated.
    """
    train, held = Split(), Split()
    for i, path in round_robin(sources, language):
        if train.chars >= max_chars:
            break
        src = sources[i]
        text, reason = _usable_text(src.root / path, path, language, rules)
        if text is None:
            if reason is not None:
                tally(skipped, reason)
            continue
        sha = sha256_hex(text)
        if sha in seen:
            tally(skipped, "duplicate")
            continue
        seen.add(sha)
        split = held if heldout_fraction_of(text) < heldout_fraction else train
        if split is held and held.chars >= max_chars:
            continue
        split.add({"text": text, "source": src.name, "path": path, "sha": sha[:16]})
    return train, held


def _usable_text(full: Path, path: str, language: str, rules: FileRules) -> tuple[str | None, str | None]:
    """(cleaned text, None) for a file the corpus uses, else (None, why); (None, None) for a `.h` header of
    the other C language."""
    text, reason = _read_text(full, rules.max_file_bytes)
    if text is None:
        return None, reason
    if language_of(path, text) != language:
        return None, None
    reason = reject_reason(path, text, min_chars=rules.min_chars, max_line_chars=rules.max_line_chars)
    if reason:
        return None, reason
    text = clean_code(text, rules.max_chars_per_file)
    if len(text) < rules.min_chars:
        return None, "short"
    return text, None


def _read_text(full: Path, max_file_bytes: int) -> tuple[str | None, str | None]:
    """(the file's UTF-8 text, None), or (None, "too_large" | "unreadable" | "not_utf8")."""
    try:
        if full.stat().st_size > max_file_bytes:
            return None, "too_large"
        raw = full.read_bytes()
    except OSError:
        return None, "unreadable"
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        return None, "not_utf8"
