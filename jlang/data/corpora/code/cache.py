"""The code corpus in the local cache: built once (atomically), rebuilt when asked for other build
parameters, read as a `jlang.data.Corpus`; its token counts under a tokenizer."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from jlang.data.corpora.code.build import CODE_CORPUS_NAME, build_code_corpus, code_build_params
from jlang.data.corpora.code.languages import CodeCorpusError
from jlang.data.corpora.common import corpora_cache_dir, ensure_built, read_manifest
from jlang.data.sources import Corpus

__all__ = ["code_corpus", "code_corpus_dir", "count_code_tokens", "ensure_code_corpus"]


def code_corpus_dir() -> Path:
    """Where the default code corpus lives: beside the gettext corpus (`$JLANG_CACHE_DIR/corpora/code-v1`, else
    `~/.cache/jlang/corpora/code-v1`)."""
    return corpora_cache_dir() / CODE_CORPUS_NAME


def ensure_code_corpus(
    path: str | os.PathLike | None = None,
    *,
    rebuild: bool = False,
    progress: bool = True,
    **build_kwargs,
) -> Path:
    """The code corpus directory, built once (atomically) and rebuilt when asked for other build parameters.

    Args:
      path: where (default: `code_corpus_dir()`).
      rebuild: build again even when a corpus with the same parameters is there (e.g. after installing packages).
      build_kwargs: `build_code_corpus` arguments (default: its defaults).
    """
    target = Path(path) if path is not None else code_corpus_dir()

    def is_current() -> bool:
        return not rebuild and read_manifest(target).get("build", {}).get("params") == code_build_params(**build_kwargs)

    return ensure_built(target, lambda tmp: build_code_corpus(tmp, progress=progress, **build_kwargs), is_current)


def code_corpus(
    split: str = "train",
    languages: Sequence[str] | None = None,
    *,
    path: str | os.PathLike | None = None,
) -> Corpus:
    """The code corpus as a `jlang.data.Corpus` (built with the defaults on first use when `path` is None)."""
    root = Path(path) if path is not None else ensure_code_corpus()
    kept = read_manifest(root)["languages"]
    if languages is not None:
        missing = [l for l in languages if l not in kept]
        if missing:
            raise CodeCorpusError(
                f"languages {missing} are not in the code corpus at {root} (it has {kept}); see "
                "its manifest.json 'dropped' for what to install, then rebuild"
            )
    return Corpus.from_dir(root, split=split, languages=list(languages) if languages is not None else kept)


def count_code_tokens(corpus_dir: str | os.PathLike, tokenizer, *, split: str = "train") -> dict[str, int]:
    """Tokens per language of `{corpus_dir}/{split}/{lang}.jsonl` under `tokenizer` (no special tokens)."""
    root = Path(corpus_dir)
    counts = {}
    for lang in read_manifest(root)["languages"]:
        with open(root / split / f"{lang}.jsonl", encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f if line.strip()]
        counts[lang] = sum(len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return counts
