"""Corpus builders: the packaged default corpus (`gettext`), code (`code`), a demonstration culture corpus
(`culture`) and code-mixed text (`codemix`)."""
