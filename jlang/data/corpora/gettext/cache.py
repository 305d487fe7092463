"""The default corpus in the local cache (built once, atomically), and its token counts under a tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

from jlang.data.corpora.common import corpora_cache_dir, ensure_built, read_manifest
from jlang.data.corpora.gettext.build import CORPUS_NAME, build_gettext_corpus

__all__ = ["count_tokens", "default_corpus_dir", "ensure_default_corpus"]


def default_corpus_dir() -> Path:
    """Where the default corpus lives: `$JLANG_CACHE_DIR/corpora/gettext-v1`, else `~/.cache/jlang/corpora/...`.

    `$XDG_CACHE_HOME/jlang` replaces `~/.cache/jlang` when set.
    """
    return corpora_cache_dir() / CORPUS_NAME


def ensure_default_corpus(path: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """Return the default corpus directory, building it once if it is not there yet.

    The build goes to a temporary sibling directory that is renamed into place
    only when complete, so a killed build never leaves a half corpus that looks done.
    """
    target = Path(path) if path is not None else default_corpus_dir()
    return ensure_built(target, lambda tmp: build_gettext_corpus(tmp, progress=progress))


def count_tokens(
    corpus_dir: str | os.PathLike, tokenizer, *, split: str = "train", batch_size: int = 1000
) -> dict[str, int]:
    """Tokens per language of `{corpus_dir}/{split}/{lang}.txt` under `tokenizer` (no special tokens).

    Languages are those in the manifest when there is one, otherwise every `*.txt` in the split folder.
    """
    root = Path(corpus_dir)
    if (root / "manifest.json").exists():
        languages = read_manifest(root)["languages"]
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
