"""Text per language → fixed-shape token batches (grain), and the packaged default corpus.

- `jlang.data.sources`: read a language's text (plain text, JSONL, LAPE token-id
  files, directories, Python lists) with clear errors on bad input.
- `jlang.data.pipeline`: tokenize, pack (LAPE) or pad (FLORES, prompt/response)
  into `[batch, seq]` batches with a validity mask and a language id per row,
  sharded by process, checkpointable.
- `jlang.data.corpora`: corpus builders, among them the default corpus built from the
  human translations that ship inside PyPI packages' gettext catalogs (`corpora.gettext`).
- `jlang.data.langinfo`: name, script and family of languages, by code.

Names are imported lazily: `jlang.data.langinfo` alone pulls in neither grain nor JAX.
"""

from jlang.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        (
            "DEFAULT_LANGUAGES",
            "DEFAULT_PACKAGES",
            "PIP_REQUIREMENTS",
            "CorpusBuildError",
            "build_gettext_corpus",
            "count_tokens",
            "default_corpus_dir",
            "ensure_default_corpus",
            "format_summary",
        ),
        "jlang.data.corpora.gettext",
    ),
    **dict.fromkeys(("Batches", "TokenizedCorpus", "make_batches", "tokenize_corpus"), "jlang.data.pipeline"),
    **dict.fromkeys(("Corpus", "CorpusError", "Source", "as_source"), "jlang.data.sources"),
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("jlang.data", _EXPORTS)
