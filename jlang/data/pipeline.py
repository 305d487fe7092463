"""Text per language -> fixed-shape token batches, with grain.

Two ways to cut token rows, after the papers whose numbers jlang reproduces:

- **pack** (LAPE, RUCAIBox/Language-Specific-Neurons `activation.py`): all of a
  language's documents are tokenized and concatenated into one id stream (a BOS
  before each document when `add_bos`), optionally capped at `max_tokens`, and
  cut into `seq_len` windows; the ragged tail is dropped:
  `n = min(len, max_tokens) // seq_len * seq_len` (LAPE: max_tokens = 99,999,744).
  Every position of every window is counted (`valid` all True), including each
  window's first token, as LAPE does.
- **pad** (FLORES-style evaluation sets, the ternary paper's MGSM answers): one
  document per row, truncated to `seq_len`, right-padded with `pad_id`; `valid`
  marks the real tokens. For `(prompt, response)` documents `valid` covers the
  response only: the row is the tokenization of `prompt + response` and the
  response starts at `len(tokenize(prompt))` (+1 for BOS), which is what the
  ternary code's subtraction `counts(full) - counts(prompt)` computes. (If the
  prompt's last token merges with the response, e.g. a trailing space, the
  response starts at that merged token: the longest common prefix of the two
  tokenizations.)

Every batch is a dict of NumPy arrays with fixed shapes (no recompilation)::

    ids        int32 [batch, seq]   token ids (pad_id where not valid)
    valid      bool  [batch, seq]   positions to count
    positions  int32 [batch, seq]   0..seq-1 (each row is its own sequence)
    lang       int32 [batch]        index into `Batches.languages`; -1 on padding rows
    row        int32 [batch]        global row number (before shuffling: LAPE order); -1 on padding rows

Rows are ordered language by language, in corpus order (LAPE order); `shuffle`
permutes them with grain's index shuffle, deterministically given `seed`. The
rows are padded with all-invalid rows up to a multiple of `batch_size *
process_count`, then process `p` takes rows `p, p + P, p + 2P, ...`: every
process sees the same number of batches, the union of valid rows over processes
is exactly the single-process set, and no row is counted twice. `batch_size` is
rows per process; the global batch is `batch_size * process_count` rows.

`iter(batches)` returns a grain `DatasetIterator`: `get_state()` / `set_state()`
checkpoint and resume a pass exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grain
import jax
import numpy as np
from tqdm.auto import tqdm

from jlang.data.sources import Corpus, CorpusError, SourceLike, read_documents, read_token_ids

__all__ = ["Batches", "TokenizedCorpus", "TokenizedLanguage", "make_batches", "tokenize_corpus"]

LAPE_MAX_TOKENS = 99_999_744  # 24,414 x 4096, RUCAIBox activation.py


@dataclass(frozen=True)
class TokenizedLanguage:
    """One language's tokens as a ragged array of documents.

    Attributes:
      ids: int32 `[n_tokens]`, all documents concatenated (with BOS/EOS when added).
      offsets: int64 `[n_docs + 1]`; document d is `ids[offsets[d]:offsets[d + 1]]`.
      counted_from: int64 `[n_docs]`; first position of document d that statistics count
        (0, or where the response starts in a prompt/response pair).
      from_ids_file: the ids came from a LAPE token-id file (one stream, no document boundaries).
    """

    ids: np.ndarray
    offsets: np.ndarray
    counted_from: np.ndarray
    from_ids_file: bool = False

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1


@dataclass(frozen=True)
class TokenizedCorpus:
    """A corpus after tokenization: what `make_batches` cuts into rows (reusable across modes)."""

    languages: tuple[str, ...]
    data: Mapping[str, TokenizedLanguage]
    pad_id: int
    bos_id: int | None
    add_bos: bool
    add_eos: bool
    has_pairs: Mapping[str, bool] = field(default_factory=dict)

    def tokens(self) -> dict[str, int]:
        """Tokens per language (BOS/EOS included), before any cutting."""
        return {lang: int(self.data[lang].ids.size) for lang in self.languages}

    def describe(self) -> dict[str, str]:
        """language -> a short description, for metadata (the sources are no longer known)."""
        return {lang: f"{n:,} tokens, tokenized before the pass" for lang, n in self.tokens().items()}


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens (BOS/EOS are added explicitly by the caller)."""
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix: where the response starts in `tokenize(prompt + response)`.

    Equal to `len(a)` when the prompt's tokens are a prefix of the full text's (the usual case, and the
    ternary code's assumption); smaller when the last prompt token merges with the response's first
    characters (e.g. a trailing space), so that merged token, which carries response text, is counted.
    """
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _resolve_bos(tokenizer, add_bos: bool | None) -> tuple[bool, int | None]:
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos is None:
        return bos is not None, bos
    if add_bos and bos is None:
        raise CorpusError("add_bos=True but the tokenizer has no bos_token_id; pass add_bos=False")
    return bool(add_bos), bos


def _tokenize_documents(
    tokenizer, docs: list, *, bos: int | None, eos: int | None, chunk: int, progress: Any
) -> TokenizedLanguage:
    pieces: list[np.ndarray] = []
    lengths: list[int] = []
    counted: list[int] = []
    head = [bos] if bos is not None else []
    tail = [eos] if eos is not None else []
    for i in range(0, len(docs), chunk):
        part = docs[i : i + chunk]
        if isinstance(part[0], tuple) or any(isinstance(d, tuple) for d in part):
            if not all(isinstance(d, tuple) for d in part):
                raise CorpusError("a source mixes plain documents and (prompt, response) pairs; use one kind")
            full = _encode(tokenizer, [p + r for p, r in part])
            prompts = _encode(tokenizer, [p for p, _ in part])
            starts = [len(head) + common_prefix(p, f) for p, f in zip(prompts, full)]
        else:
            full = _encode(tokenizer, list(part))
            starts = [0] * len(part)
        for ids, start in zip(full, starts):
            doc = head + list(ids) + tail
            if len(doc) == 0:
                continue
            pieces.append(np.asarray(doc, dtype=np.int32))
            lengths.append(len(doc))
            counted.append(start)
        if progress is not None:
            progress.update(len(part))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    return TokenizedLanguage(ids, offsets, np.asarray(counted, dtype=np.int64))


def tokenize_corpus(
    corpus: Corpus | Mapping[str, SourceLike],
    tokenizer,
    *,
    languages: Sequence[str] | None = None,
    add_bos: bool | None = None,
    add_eos: bool = False,
    pad_id: int | None = None,
    chunk_size: int = 1000,
    progress: bool = True,
) -> TokenizedCorpus:
    """Read and tokenize every language of `corpus` (a BOS before each document when `add_bos`).

    Args:
      corpus: a Corpus, or a mapping language -> path / list of strings.
      tokenizer: a `transformers` tokenizer (called with `add_special_tokens=False`); None when every
        source is a token-id file (they need no tokenizer).
      languages: which languages, in which order (default: the corpus's order).
      add_bos: prepend `bos_token_id` to each document; None = if the tokenizer has one.
        LAPE packs the ids of `tokenizer(doc)`, which for Llama starts with BOS.
      add_eos: append `eos_token_id` to each document.
      pad_id: id written at invalid positions (default: pad, else eos, else 0).
      chunk_size: documents per tokenizer call.
      progress: a tqdm bar per language.

    Token-id files are used as they are (no BOS/EOS added): they already are LAPE's stream.
    Their ids are checked against the tokenizer's vocabulary.
    """
    if not isinstance(corpus, Corpus):
        corpus = Corpus(corpus)
    if languages is not None:
        corpus = corpus.select(list(languages))
    use_bos, bos = _resolve_bos(tokenizer, add_bos)
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is None:
        raise CorpusError("add_eos=True but the tokenizer has no eos_token_id")
    if pad_id is None:
        pad_id = next((t for t in (getattr(tokenizer, "pad_token_id", None), eos) if t is not None), 0)
    vocab = len(tokenizer) if tokenizer is not None else None
    data: dict[str, TokenizedLanguage] = {}
    pairs: dict[str, bool] = {}
    for lang, source in corpus.sources.items():
        if source.kind == "token_ids":
            ids = read_token_ids(source)
            if vocab is not None and int(ids.max()) >= vocab:
                raise CorpusError(
                    f"language {lang!r}: {source.path} has token id {int(ids.max())} but the tokenizer has "
                    f"{vocab} tokens; the file was made with a different tokenizer"
                )
            data[lang] = TokenizedLanguage(
                ids.astype(np.int32), np.array([0, ids.size], np.int64), np.zeros(1, np.int64), from_ids_file=True
            )
            pairs[lang] = False
            continue
        if tokenizer is None:
            raise CorpusError(
                f"language {lang!r}: {source.describe()} is text and there is no tokenizer to tokenize it "
                "(the model was loaded without tokenizer files); pass token-id files, or add the tokenizer files"
            )
        try:
            docs = read_documents(source)
        except CorpusError as e:
            raise CorpusError(f"language {lang!r}: {e}") from None
        pairs[lang] = isinstance(docs[0], tuple)
        bar = None
        if progress and len(docs) > chunk_size:
            bar = tqdm(total=len(docs), desc=f"tokenizing {lang}", unit="doc")
        try:
            data[lang] = _tokenize_documents(
                tokenizer,
                docs,
                bos=bos if use_bos else None,
                eos=eos if add_eos else None,
                chunk=chunk_size,
                progress=bar,
            )
        finally:
            if bar is not None:
                bar.close()
        if data[lang].ids.size == 0:
            raise CorpusError(f"language {lang!r}: {source.describe()} tokenizes to no tokens")
    return TokenizedCorpus(corpus.languages, data, int(pad_id), bos, use_bos, add_eos, pairs)


@dataclass(frozen=True)
class _RowTable:
    """Where each row's tokens are: row r is `streams[lang[r]][start[r] : start[r] + length[r]]`."""

    lang: np.ndarray  # int32 [R]
    start: np.ndarray  # int64 [R]
    length: np.ndarray  # int32 [R], tokens in the row (<= seq_len)
    valid_from: np.ndarray  # int32 [R], first counted position in the row

    def __len__(self) -> int:
        return len(self.lang)


def _pack_rows(tok: TokenizedCorpus, seq_len: int, max_tokens: int | None) -> _RowTable:
    langs, starts = [], []
    for k, lang in enumerate(tok.languages):
        n = tok.data[lang].ids.size
        if max_tokens is not None:
            n = min(n, max_tokens)
        windows = n // seq_len
        if windows == 0:
            raise CorpusError(
                f"language {lang!r} has {n} tokens, fewer than one window of seq_len={seq_len}; "
                f"add text, or lower seq_len"
            )
        langs.append(np.full(windows, k, np.int32))
        starts.append(np.arange(windows, dtype=np.int64) * seq_len)
    lang_arr = np.concatenate(langs)
    return _RowTable(
        lang_arr, np.concatenate(starts), np.full(len(lang_arr), seq_len, np.int32), np.zeros(len(lang_arr), np.int32)
    )


def _pad_rows(tok: TokenizedCorpus, seq_len: int, max_tokens: int | None) -> tuple[_RowTable, dict[str, int]]:
    langs, starts, lengths, valid_from = [], [], [], []
    skipped: dict[str, int] = {}
    for k, lang in enumerate(tok.languages):
        t = tok.data[lang]
        if t.from_ids_file:
            raise CorpusError(
                f"language {lang!r} is a LAPE token-id stream without document boundaries; use mode='pack'"
            )
        doc_len = np.diff(t.offsets)
        length = np.minimum(doc_len, seq_len)
        counted = np.maximum(length - t.counted_from, 0)
        keep = counted > 0  # rows with nothing to count (response truncated away) are left out
        if max_tokens is not None:
            keep &= np.cumsum(np.where(keep, counted, 0)) <= max_tokens
        skipped[lang] = int((counted == 0).sum())
        if not keep.any():
            raise CorpusError(f"language {lang!r} has no row with a counted token at seq_len={seq_len}")
        idx = np.nonzero(keep)[0]
        langs.append(np.full(idx.size, k, np.int32))
        starts.append(t.offsets[idx])
        lengths.append(length[idx].astype(np.int32))
        valid_from.append(np.minimum(t.counted_from[idx], seq_len).astype(np.int32))
    table = _RowTable(
        np.concatenate(langs), np.concatenate(starts), np.concatenate(lengths), np.concatenate(valid_from)
    )
    return table, skipped


class _MakeRow:
    """Build the row at padded position i (picklable, so grain may run it in worker processes)."""

    def __init__(self, table: _RowTable, streams: list[np.ndarray], order, seq_len: int, pad_id: int):
        self.table, self.streams, self.order = table, streams, order
        self.seq_len, self.pad_id = seq_len, pad_id
        self.n_real = len(table)

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        ids = np.full(self.seq_len, self.pad_id, np.int32)
        valid = np.zeros(self.seq_len, bool)
        positions = np.arange(self.seq_len, dtype=np.int32)
        if i >= self.n_real:
            return {"ids": ids, "valid": valid, "positions": positions, "lang": np.int32(-1), "row": np.int32(-1)}
        r = int(self.order[i])
        k = int(self.table.lang[r])
        start, length = int(self.table.start[r]), int(self.table.length[r])
        ids[:length] = self.streams[k][start : start + length]
        valid[int(self.table.valid_from[r]) : length] = True
        return {"ids": ids, "valid": valid, "positions": positions, "lang": np.int32(k), "row": np.int32(r)}


@dataclass
class Batches:
    """This process's fixed-shape batches, with their count and token totals known up front.

    Attributes:
      dataset: the batched grain `MapDataset` of this process.
      languages: language codes; `batch["lang"]` indexes this tuple.
      num_batches: batches this process yields (the same on every process).
      tokens: counted (valid) tokens per language over all processes.
      rows: rows per language over all processes.
      padding_rows: all-invalid rows added so the last global batch is full.
      skipped_rows: (pad mode) documents left out per language because no token in them is counted.
    """

    dataset: grain.MapDataset
    languages: tuple[str, ...]
    batch_size: int
    seq_len: int
    mode: str
    process_index: int
    process_count: int
    num_batches: int
    tokens: dict[str, int]
    rows: dict[str, int]
    padding_rows: int
    skipped_rows: dict[str, int]
    read_options: grain.ReadOptions | None = None

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        return self.iterator()

    def iterator(self, state: dict | None = None):
        """A grain DatasetIterator over the batches, resumed from `state` (from `get_state()`) if given."""
        it = iter(self.dataset.to_iter_dataset(self.read_options))
        if state is not None:
            it.set_state(state)
        return it


def _process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    return process_index, process_count


def _select(tok: TokenizedCorpus, languages: Sequence[str] | None, pad_id: int | None) -> TokenizedCorpus:
    """`tok` restricted to (and ordered as) `languages`, with another padding id if given."""
    if languages is not None:
        missing = [lang for lang in languages if lang not in tok.data]
        if missing:
            raise CorpusError(f"languages {missing} are not in the tokenized corpus; it has {list(tok.languages)}")
        tok = dataclasses.replace(tok, languages=tuple(languages))
    if pad_id is not None:
        tok = dataclasses.replace(tok, pad_id=int(pad_id))
    return tok


def _row_table(
    tok: TokenizedCorpus, mode: str, seq_len: int, max_tokens: int | None
) -> tuple[_RowTable, dict[str, int]]:
    """The rows of `mode` ("pack": LAPE windows; "pad": one document per row) and the rows skipped per language."""
    if mode == "pad":
        return _pad_rows(tok, seq_len, max_tokens)
    with_pairs = [lang for lang in tok.languages if tok.has_pairs.get(lang)]
    if with_pairs:
        raise CorpusError(f"languages {with_pairs} hold (prompt, response) pairs; use mode='pad'")
    return _pack_rows(tok, seq_len, max_tokens), {lang: 0 for lang in tok.languages}


def make_batches(
    corpus: Corpus | TokenizedCorpus | Mapping[str, SourceLike],
    tokenizer=None,
    *,
    batch_size: int,
    seq_len: int,
    mode: Literal["pack", "pad"] = "pack",
    languages: Sequence[str] | None = None,
    seed: int = 0,
    shuffle: bool = False,
    max_tokens: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    add_bos: bool | None = None,
    add_eos: bool = False,
    pad_id: int | None = None,
    read_options: grain.ReadOptions | None = None,
    progress: bool = True,
) -> Batches:
    """Fixed-shape `[batch_size, seq_len]` batches of a multilingual corpus (see the module doc).

    Args:
      corpus: a Corpus / mapping language -> source, or an already `TokenizedCorpus`.
      tokenizer: a `transformers` tokenizer (not needed for a TokenizedCorpus or token-id files).
      batch_size: rows per batch on this process.
      seq_len: tokens per row.
      mode: "pack" (LAPE: concatenated windows) or "pad" (one document per row, with `valid` mask;
        prompt/response pairs count the response only).
      languages: which languages and their order (the `lang` ids); default: the corpus's order.
      seed: seed of the row shuffle (used only when `shuffle`).
      shuffle: permute rows across languages (default off: LAPE order).
      max_tokens: per-language cap. pack: the stream is cut to `min(n, max_tokens) // seq_len * seq_len`
        (LAPE uses 99,999,744); pad: documents are taken in order while their counted tokens fit.
      process_index, process_count: this process's shard (default: `jax.process_index/count()`).
      add_bos, add_eos, pad_id: see `tokenize_corpus`.
      read_options: grain ReadOptions of the iterator (default: 2 threads, 8 batches prefetched).
      progress: tqdm bars while tokenizing.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
    if mode not in ("pack", "pad"):
        raise ValueError(f"mode must be 'pack' or 'pad', got {mode!r}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    p_index, p_count = _process_shard(process_index, process_count)
    if isinstance(corpus, TokenizedCorpus):
        tok = _select(corpus, languages, pad_id)
    else:
        tok = tokenize_corpus(
            corpus, tokenizer, languages=languages, add_bos=add_bos, add_eos=add_eos, pad_id=pad_id, progress=progress
        )
    table, skipped = _row_table(tok, mode, seq_len, max_tokens)

    n_real = len(table)
    global_batch = batch_size * p_count
    n_padded = math.ceil(n_real / global_batch) * global_batch
    order = grain.MapDataset.range(n_real)
    if shuffle:
        order = order.shuffle(seed=seed)
    streams = [tok.data[lang].ids for lang in tok.languages]
    rows_ds = grain.MapDataset.range(n_padded).map(_MakeRow(table, streams, order, seq_len, tok.pad_id))
    local = rows_ds[p_index::p_count].batch(batch_size, drop_remainder=True)

    counted = (table.length - table.valid_from).astype(np.int64)
    k = len(tok.languages)
    tokens = np.bincount(table.lang, weights=counted, minlength=k).astype(np.int64)
    rows = np.bincount(table.lang, minlength=k)
    return Batches(
        dataset=local,
        languages=tok.languages,
        batch_size=batch_size,
        seq_len=seq_len,
        mode=mode,
        process_index=p_index,
        process_count=p_count,
        num_batches=n_padded // global_batch,
        tokens={lang: int(tokens[i]) for i, lang in enumerate(tok.languages)},
        rows={lang: int(rows[i]) for i, lang in enumerate(tok.languages)},
        padding_rows=n_padded - n_real,
        skipped_rows=skipped,
        read_options=read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=8),
    )
