"""Text per language → fixed-shape token batches (grain), and the packaged default corpus.

- `jlang.data.sources`: read a language's text (plain text, JSONL, LAPE token-id
  files, directories, Python lists) with clear errors on bad input.
- `jlang.data.pipeline`: tokenize, pack (LAPE) or pad (FLORES, prompt/response)
  into `[batch, seq]` batches with a validity mask and a language id per row,
  sharded by process, checkpointable.
- `jlang.data.corpora.gettext`: the default corpus built from the human
  translations that ship inside PyPI packages' gettext catalogs.
"""

from jlang.data.corpora.gettext import (
    DEFAULT_LANGUAGES,
    DEFAULT_PACKAGES,
    PIP_REQUIREMENTS,
    CorpusBuildError,
    build_gettext_corpus,
    count_tokens,
    default_corpus_dir,
    ensure_default_corpus,
    format_summary,
)
from jlang.data.pipeline import Batches, TokenizedCorpus, make_batches, tokenize_corpus
from jlang.data.sources import Corpus, CorpusError, Source, as_source

__all__ = [
    "DEFAULT_LANGUAGES",
    "DEFAULT_PACKAGES",
    "PIP_REQUIREMENTS",
    "Batches",
    "Corpus",
    "CorpusBuildError",
    "CorpusError",
    "Source",
    "TokenizedCorpus",
    "as_source",
    "build_gettext_corpus",
    "count_tokens",
    "default_corpus_dir",
    "ensure_default_corpus",
    "format_summary",
    "make_batches",
    "tokenize_corpus",
]
