"""Where a language's text comes from: files, directories, token-id streams or Python lists.

A `Source` is one language's material. It is one of:

- a plain text file (`.txt` or any other suffix): one document or sentence per
  line; blank lines are skipped;
- a JSONL file (`.jsonl`): one JSON object per line, text in `field` (default
  `"text"`), or a prompt/response pair in `prompt_field`/`response_field`;
- a LAPE token-id file: what RUCAIBox/Language-Specific-Neurons writes with
  `torch.save` (`data/id.{lang}.train.llama`: a flat `LongTensor` of ids,
  documents already concatenated). Recognised by content (a zip or pickle
  header), read by `jlang.io.torchfile.load`, which never executes pickle code;
- an in-memory sequence of strings, or of `(prompt, response)` pairs.

A `Corpus` is an ordered mapping language -> Source. `Corpus.from_dir` reads a
folder with one file per language (`{lang}.txt`, `{lang}.jsonl`, or LAPE's
`id.{lang}.{split}.{model}`), e.g. the default corpus's `train/` folder.

Bad input fails early with the file and the place named: a missing file, an
empty source, bytes that are not UTF-8 (line and byte offset), a JSONL line that
is not an object with the field. Lines longer than `max_line_bytes` (1 MiB by
default) raise by default, since in a sentence or document corpus they almost
always mean a wrong file (minified JSON, binary data); pass
`long_lines="skip"` to skip them with one warning giving their count.
"""

from __future__ import annotations

import json
import json as _json
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jlang.data.corpora.gettext import ensure_default_corpus
from jlang.io.torchfile import load

__all__ = ["Corpus", "CorpusError", "Source", "SourceLike", "as_source", "read_documents", "read_token_ids"]

MAX_LINE_BYTES = 1 << 20

Document = str | tuple[str, str]


class CorpusError(ValueError):
    """A corpus source is missing, empty or malformed; the message names the file and how to fix it."""


@dataclass(frozen=True)
class Source:
    """One language's text, as a file path or in-memory documents.

    Attributes:
      kind: "text" | "jsonl" | "token_ids" | "memory".
      path: the file (None for "memory").
      documents: in-memory documents (strings or (prompt, response) pairs) for "memory".
      field: JSONL field holding the text.
      prompt_field / response_field: JSONL fields of a prompt/response pair (both or neither).
      max_line_bytes: longest accepted line (bytes) in text and JSONL files.
      long_lines: "error" (default) or "skip" (warn once with the count).
    """

    kind: Literal["text", "jsonl", "token_ids", "memory"]
    path: Path | None = None
    documents: tuple[Document, ...] | None = None
    field: str = "text"
    prompt_field: str | None = None
    response_field: str | None = None
    max_line_bytes: int = MAX_LINE_BYTES
    long_lines: Literal["error", "skip"] = "error"

    def describe(self) -> str:
        """A short name for messages: the path, or `<N in-memory documents>`."""
        if self.path is not None:
            return str(self.path)
        return f"<{len(self.documents or ())} in-memory documents>"


SourceLike = Source | str | os.PathLike | Sequence[str] | Sequence[tuple[str, str]]


def _is_torch_file(path: Path) -> bool:
    """`torch.save` output starts with a zip header (torch >= 1.6) or a pickle protocol opcode (legacy)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def as_source(
    obj: SourceLike,
    *,
    field: str = "text",
    prompt_field: str | None = None,
    response_field: str | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    long_lines: Literal["error", "skip"] = "error",
) -> Source:
    """Turn a path, a list of strings / pairs, or a Source into a Source (checking the path exists)."""
    if isinstance(obj, Source):
        return obj
    if long_lines not in ("error", "skip"):
        raise CorpusError(f"long_lines must be 'error' or 'skip', got {long_lines!r}")
    if (prompt_field is None) != (response_field is None):
        raise CorpusError("give both prompt_field and response_field, or neither")
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.exists():
            raise CorpusError(
                f"corpus file {path} does not exist; check the path (relative paths are from {Path.cwd()})"
            )
        if path.is_dir():
            raise CorpusError(f"{path} is a directory; use Corpus.from_dir({str(path)!r}) for one file per language")
        if path.stat().st_size == 0:
            raise CorpusError(f"corpus file {path} is empty; give at least one line of text")
        common = dict(
            field=field,
            prompt_field=prompt_field,
            response_field=response_field,
            max_line_bytes=max_line_bytes,
            long_lines=long_lines,
        )
        if _is_torch_file(path):
            return Source("token_ids", path=path, **common)
        if path.suffix.lower() == ".jsonl":
            return Source("jsonl", path=path, **common)
        return Source("text", path=path, **common)
    if isinstance(obj, np.ndarray):
        raise CorpusError("a NumPy array is not a text source; save token ids with torch.save or pass strings")
    if isinstance(obj, Sequence):
        docs = tuple(obj)
        for i, d in enumerate(docs):
            ok = isinstance(d, str) or (isinstance(d, tuple) and len(d) == 2 and all(isinstance(x, str) for x in d))
            if not ok:
                raise CorpusError(
                    f"in-memory document {i} is {type(d).__name__}; documents are str or (prompt, response) pairs"
                )
        return Source("memory", documents=docs)
    raise CorpusError(f"cannot use {type(obj).__name__} as a corpus source: give a path, a list of strings or pairs")


def _iter_lines(source: Source) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line without newline) of a text/JSONL file.

    Raises CorpusError naming the line and absolute byte offset of invalid UTF-8.
    """
    assert source.path is not None
    skipped_long = 0
    first_long = 0
    offset = 0
    with open(source.path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if len(raw) > source.max_line_bytes:
                if source.long_lines == "error":
                    raise CorpusError(
                        f"{source.path}: line {lineno} is {len(raw):,} bytes, longer than max_line_bytes="
                        f"{source.max_line_bytes:,}; split the document, raise max_line_bytes, or pass "
                        f"long_lines='skip'"
                    )
                skipped_long += 1
                first_long = first_long or lineno
                offset += len(raw)
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{source.path}: line {lineno} (byte offset {offset + e.start}) is not valid UTF-8 "
                    f"({e.reason}); re-encode the file as UTF-8, e.g. `iconv -f LATIN1 -t UTF-8`"
                ) from None
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]
            offset += len(raw)
            yield lineno, text.rstrip("\r\n")
    if skipped_long:
        warnings.warn(
            f"{source.path}: skipped {skipped_long} line(s) longer than {source.max_line_bytes:,} bytes "
            f"(first at line {first_long})",
            stacklevel=3,
        )


def jsonl_objects(source: Source) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) of every non-blank line of a JSONL file; a bad line raises `CorpusError`."""
    for lineno, line in _iter_lines(source):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{source.path}: line {lineno} is not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise CorpusError(f"{source.path}: line {lineno} is a JSON {type(row).__name__}, not an object")
        yield lineno, row


def _jsonl_documents(source: Source) -> Iterator[Document]:
    pair = source.prompt_field is not None
    for lineno, row in jsonl_objects(source):
        keys = (source.prompt_field, source.response_field) if pair else (source.field,)
        values = []
        for key in keys:
            if key not in row:
                raise CorpusError(
                    f"{source.path}: line {lineno} has no field {key!r} (it has {sorted(row)[:10]}); "
                    f"choose the field with field=... (or prompt_field/response_field)"
                )
            if not isinstance(row[key], str):
                raise CorpusError(
                    f"{source.path}: line {lineno} field {key!r} is {type(row[key]).__name__}, not a string"
                )
            values.append(row[key])
        if pair:
            yield (values[0], values[1])
        elif values[0].strip():
            yield values[0]


def read_documents(source: Source) -> list[Document]:
    """All documents of a text, JSONL or in-memory source (strings, or (prompt, response) pairs).

    Raises CorpusError when the source holds no document, or is a token-id file.
    """
    if source.kind == "token_ids":
        raise CorpusError(f"{source.path} holds token ids, not text; it can only be packed (mode='pack')")
    if source.kind == "memory":
        docs = [d for d in (source.documents or ()) if not (isinstance(d, str) and not d.strip())]
    elif source.kind == "jsonl":
        docs = list(_jsonl_documents(source))
    else:
        docs = [line for _, line in _iter_lines(source) if line.strip()]
    if not docs:
        raise CorpusError(
            f"{source.describe()} holds no text (only blank lines or no rows); give at least one document"
        )
    return docs


def read_token_ids(source: Source) -> np.ndarray:
    """The flat id stream of a LAPE token-id file: int64 `[n_tokens]` (read without executing pickle code)."""
    obj = load(source.path)
    arr = np.asarray(obj) if isinstance(obj, np.ndarray) else None
    if arr is None or arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        what = f"array of shape {arr.shape} and dtype {arr.dtype}" if arr is not None else type(obj).__name__
        raise CorpusError(
            f"{source.path} holds a {what}; a LAPE token-id file is torch.save of a flat (1-D) LongTensor of ids"
        )
    if arr.size == 0:
        raise CorpusError(f"{source.path} holds no token ids")
    if arr.min() < 0:
        raise CorpusError(f"{source.path} holds negative token ids (min {int(arr.min())}); it is not a token-id file")
    return arr.astype(np.int64, copy=False)


_LAPE_NAME = re.compile(r"^id\.(?P<lang>[^.]+)\.(?P<split>[^.]+)(?:\..+)?$")


class Corpus:
    """An ordered mapping language code -> Source.

    Build it from a dict (`Corpus({"en": "en.txt", "fr": ["Bonjour ...", ...]})`),
    from a folder with one file per language (`Corpus.from_dir`), or the packaged
    default corpus (`Corpus.default()`).
    """

    def __init__(self, sources: Mapping[str, SourceLike], **source_options):
        if not sources:
            raise CorpusError("a corpus needs at least one language")
        self.sources: dict[str, Source] = {}
        for lang, src in sources.items():
            if not isinstance(lang, str) or not lang:
                raise CorpusError(f"language codes are non-empty strings, got {lang!r}")
            try:
                self.sources[lang] = as_source(src, **source_options)
            except CorpusError as e:
                raise CorpusError(f"language {lang!r}: {e}") from None

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.sources)

    def __getitem__(self, lang: str) -> Source:
        return self.sources[lang]

    def __len__(self) -> int:
        return len(self.sources)

    def __repr__(self) -> str:
        return f"Corpus({', '.join(f'{k}={v.describe()}' for k, v in self.sources.items())})"

    def select(self, languages: Sequence[str]) -> Corpus:
        """The sub-corpus of `languages`, in that order; unknown codes raise, listing the known ones."""
        missing = [lang for lang in languages if lang not in self.sources]
        if missing:
            raise CorpusError(f"languages {missing} are not in the corpus; it has {list(self.sources)}")
        return Corpus({lang: self.sources[lang] for lang in languages})

    @classmethod
    def from_dir(
        cls, path: str | os.PathLike, *, split: str = "train", languages: Sequence[str] | None = None, **source_options
    ) -> Corpus:
        """One file per language: `{lang}.txt`, `{lang}.jsonl` or LAPE's `id.{lang}.{split}.*`.

        If `path/split` is a folder (as in the default corpus), it is used. LAPE
        files of other splits are ignored. Languages are sorted by code unless
        `languages` gives the order.
        """
        root = Path(path)
        if not root.is_dir():
            raise CorpusError(f"corpus directory {root} does not exist or is not a directory")
        if (root / split).is_dir():
            root = root / split
        found: dict[str, Path] = {}
        for p in sorted(root.iterdir()):
            if p.name.startswith(".") or not p.is_file():
                continue
            m = _LAPE_NAME.match(p.name)
            if m:
                if m.group("split") != split:
                    continue
                lang = m.group("lang")
            elif p.suffix.lower() in (".txt", ".jsonl"):
                lang = p.stem
            else:
                continue
            if lang in found:
                raise CorpusError(f"{root} has two files for language {lang!r}: {found[lang].name} and {p.name}")
            found[lang] = p
        if not found:
            raise CorpusError(
                f"{root} has no corpus files; expected {{lang}}.txt, {{lang}}.jsonl or id.{{lang}}.{split}.* files"
            )
        if languages is not None:
            missing = [lang for lang in languages if lang not in found]
            if missing:
                raise CorpusError(f"{root} has no file for {missing}; it has {sorted(found)}")
            found = {lang: found[lang] for lang in languages}
        else:
            found = dict(sorted(found.items()))
        return cls(found, **source_options)

    @classmethod
    def default(cls, *, split: str = "train", languages: Sequence[str] | None = None) -> Corpus:
        """The packaged default corpus (gettext catalogs of PyPI packages), built on first use."""
        root = ensure_default_corpus()
        kept = _json.loads((root / "manifest.json").read_text(encoding="utf-8"))["languages"]
        return cls.from_dir(root, split=split, languages=list(languages) if languages is not None else kept)


def resolve_corpus(source: str, languages: Sequence[str] | None, split: str = "train") -> Corpus:
    """The packaged default corpus (`"default"`) or a directory of `{lang}.txt|.jsonl` files, as a `Corpus`.

    `languages`: which ones, in this order; None (or empty): every language the corpus has.
    """
    languages = list(languages) if languages else None
    if source == "default":
        return Corpus.default(split=split, languages=languages)
    return Corpus.from_dir(source, split=split, languages=languages)


def describe_corpus(corpus: Any) -> dict[str, str]:
    """language -> a short description of its source, for the metadata of statistics and checkpoints."""
    if callable(getattr(corpus, "describe", None)):  # a TokenizedCorpus describes itself
        return corpus.describe()
    out = {}
    for lang, source in getattr(corpus, "sources", corpus).items():
        if hasattr(source, "describe"):
            out[lang] = source.describe()
        elif isinstance(source, (list, tuple)):
            out[lang] = f"{len(source)} in-memory texts"
        else:
            out[lang] = str(source)
    return out
