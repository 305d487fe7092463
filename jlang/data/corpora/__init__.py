"""Corpus builders: the packaged default corpus (`gettext`), code (`code`), a demonstration culture corpus
(`culture`) and code-mixed text (`codemix`); `common` holds what the builders share (the hash split, the
file formats, the manifest, the cache directory)."""
