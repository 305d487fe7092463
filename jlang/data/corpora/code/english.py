"""The English of the code corpus: from jlang's gettext corpus (human-written UI sentences), a text file or
a list of documents.

English from the gettext corpus keeps that corpus's own split (its held-out messages are held out here
too); consecutive messages are joined with newlines into documents of about `doc_chars` characters, so that
a document is long enough for the logit lens. English from a file or a list is split like code, by the
sha256 of each document.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from jlang.data.corpora.code.collect import Split
from jlang.data.corpora.code.languages import CodeCorpusError
from jlang.data.corpora.common import heldout_fraction_of, read_manifest, sha256_hex
from jlang.data.corpora.gettext.build import CORPUS_NAME as GETTEXT_CORPUS_NAME
from jlang.data.corpora.gettext.cache import ensure_default_corpus

__all__ = ["english_documents", "group_lines"]


def english_documents(
    english: str | os.PathLike | Sequence[str], *, max_chars: int, heldout_fraction: float, doc_chars: int
) -> tuple[Split, Split, dict]:
    """English train/held-out documents and their provenance, from the gettext corpus, a text file or a list."""
    if isinstance(english, str) and english == "gettext":
        return _gettext_english(max_chars=max_chars, doc_chars=doc_chars)
    if isinstance(english, (str, os.PathLike)):
        path = Path(english)
        if not path.is_file():
            raise CodeCorpusError(f"English text {path} does not exist (give 'gettext', a .txt file, a list, or None)")
        docs = group_lines(path.read_text(encoding="utf-8").splitlines(), doc_chars)
        info = {"kind": "file", "path": str(path)}
    else:
        docs = [d for d in english if isinstance(d, str) and d.strip()]
        info = {"kind": "list", "documents": len(docs)}
    train_docs = [d for d in docs if heldout_fraction_of(d) >= heldout_fraction]
    held_docs = [d for d in docs if heldout_fraction_of(d) < heldout_fraction]
    info["split"] = "sha256 of the document, as for code"
    return _take(train_docs, max_chars, info["kind"]), _take(held_docs, max_chars, info["kind"]), info


def _gettext_english(*, max_chars: int, doc_chars: int) -> tuple[Split, Split, dict]:
    """The English of the default gettext corpus (built once if needed), in that corpus's split."""
    root = ensure_default_corpus()
    gmeta = read_manifest(root)
    if "en" not in gmeta.get("languages", []):
        raise CodeCorpusError(f"the gettext corpus at {root} has no English; rebuild it (`jlang corpus build`)")

    def documents(split: str) -> Split:
        lines = (root / split / "en.txt").read_text(encoding="utf-8").splitlines()
        return _take(group_lines(lines, doc_chars), max_chars, GETTEXT_CORPUS_NAME)

    info = {
        "kind": "gettext",
        "path": str(root),
        "split": "the gettext corpus's own (held-out English messages)",
        "sources": [{k: s.get(k) for k in ("package", "version", "license")} for s in gmeta.get("sources", [])],
        "licence_note": gmeta.get("licence_note"),
    }
    return documents("train"), documents("heldout"), info


def group_lines(lines: Iterable[str], doc_chars: int) -> list[str]:
    """Join consecutive lines with newlines into documents of about `doc_chars` characters."""
    docs, current, size = [], [], 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        current.append(line)
        size += len(line) + 1
        if size >= doc_chars:
            docs.append("\n".join(current))
            current, size = [], 0
    if current:
        docs.append("\n".join(current))
    return docs


def _take(docs: Sequence[str], max_chars: int, source: str) -> Split:
    """Documents in order until the split holds `max_chars` characters."""
    split = Split()
    for text in docs:
        if split.chars >= max_chars:
            break
        split.add({"text": text, "source": source, "sha": sha256_hex(text)[:16]})
    return split
