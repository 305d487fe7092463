"""Supervised fine-tuning data: (prompt, response) pairs -> fixed-shape token batches with a loss mask (grain).

Two kinds of pairs:

* **translation pairs** from a parallel corpus (`{"text": {lang: sentence}}` per
  line, as the default corpus's `parallel/heldout.jsonl`, where every held-out
  English UI message sits with its human translations). For each target
  language X, a row holding both the source language (English by default) and X
  becomes `prompt = template.format(language="French", source=<en>, ...)`,
  `response = <fr>`;
* **instruction pairs** from a JSONL file of `{"lang", "prompt", "response"}`
  objects, used as they are.

A row is `[BOS] prompt response [EOS]`, truncated to `seq_len`, right-padded.
The loss counts the **response tokens only** (the EOS included, so the model
learns to stop): the response starts where `tokenize(prompt + response)` leaves
`tokenize(prompt)` (their common prefix, `jlang.data.pipeline`), so a token that
merges the prompt's end with the response's start counts as response. Rows
whose response is truncated away entirely, or tokenizes to nothing, are left
out (and counted). Prompt and response are concatenated as they are: a template
should end with a separator (the default ends with a newline).

Each batch is a dict of NumPy arrays::

    ids     int32 [batch, seq]   token ids (pad id after the row's end)
    attend  bool  [batch, seq]   real tokens (prompt and response): what attention may read
    loss    bool  [batch, seq]   tokens whose prediction counts (response tokens; never position 0)
    lang    int32 [batch]        index into `PairRows.languages`

Order: the rows are shuffled with grain's index shuffle (seed = the run's seed),
a new permutation each epoch, repeated forever; global batch `i` is rows
`i*B .. (i+1)*B - 1` of that stream. Process `p` of `P` data shards takes stream
rows `p, p + P, ...` and batches `B / P` of them, so the union over processes of
their batch `i` is exactly the global batch `i` of a single process: the same
run on 1 or N processes sees the same examples at the same step. The grain
iterator's `get_state()` is what a checkpoint saves.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grain
import numpy as np

from jlang.data.langinfo import language_name
from jlang.data.pipeline import tokenize_corpus
from jlang.data.sources import Corpus, CorpusError, Source, jsonl_objects
from jlang.io.checkpoint import array_digest

__all__ = [
    "DEFAULT_TEMPLATE",
    "PairRows",
    "batch_dataset",
    "eval_batches",
    "instruction_pairs",
    "iterator",
    "language_name",
    "pair_rows",
    "read_jsonl",
    "translation_pairs",
]

DEFAULT_TEMPLATE = "Translate into {language}: {source}\n"

Pair = tuple[str, str]


# ----------------------------------------------------------------------------- pairs


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Objects of a JSONL file, one per non-blank line; a bad line raises `CorpusError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file (expected a JSONL file of pairs or of parallel rows)")
    rows = [row for _, row in jsonl_objects(Source(kind="jsonl", path=path))]
    if not rows:
        raise CorpusError(f"{path} holds no rows")
    return rows


def _select(items: list, n_train: int | None, n_eval: int, seed: int, lang: str, where: str) -> tuple[list, list]:
    """A seeded permutation of `items`: the first `n_eval` for evaluation, then up to `n_train` for training."""
    if len(items) <= n_eval:
        raise CorpusError(
            f"language {lang!r}: {len(items)} pair(s) in {where}, not more than the {n_eval} held out for "
            "evaluation; lower data.eval_pairs_per_language or add pairs"
        )
    # One stream per language, keyed by its code, so adding a language does not reshuffle the others.
    key = int.from_bytes(hashlib.sha256(lang.encode()).digest()[:4], "little")
    order = np.random.default_rng([seed, key]).permutation(len(items))
    picked = [items[i] for i in order]
    ev, rest = picked[:n_eval], picked[n_eval:]
    return (rest if n_train is None else rest[:n_train]), ev


def translation_pairs(
    rows: Sequence[Mapping[str, str]],
    languages: Sequence[str],
    *,
    source_language: str = "en",
    template: str = DEFAULT_TEMPLATE,
    pairs_per_language: int | None = None,
    eval_pairs_per_language: int = 0,
    seed: int = 0,
    where: str = "the parallel corpus",
) -> tuple[dict[str, list[Pair]], dict[str, list[Pair]]]:
    """(train, eval) translation pairs per target language from parallel rows `{lang: sentence}`.

    `template` may use `{language}` / `{source_language}` (English names), `{lang}` /
    `{source_lang}` (codes) and `{source}` (the source sentence). Rows where the two
    texts are equal (untranslated) are skipped.
    """
    if source_language in languages:
        raise CorpusError(
            f"data.languages {list(languages)} include the source language {source_language!r}; translation "
            "pairs go from the source into the other languages"
        )
    train, ev = {}, {}
    for lang in languages:
        items = []
        for row in rows:
            src, tgt = row.get(source_language), row.get(lang)
            if not src or not tgt or src.strip() == tgt.strip():
                continue
            prompt = template.format(
                language=language_name(lang),
                source_language=language_name(source_language),
                lang=lang,
                source_lang=source_language,
                source=src,
            )
            items.append((prompt, tgt))
        if not items:
            raise CorpusError(f"{where} has no row with both {source_language!r} and {lang!r}")
        train[lang], ev[lang] = _select(items, pairs_per_language, eval_pairs_per_language, seed, lang, where)
    return train, ev


def instruction_pairs(
    rows: Sequence[Mapping[str, str]],
    languages: Sequence[str],
    *,
    pairs_per_language: int | None = None,
    eval_pairs_per_language: int = 0,
    seed: int = 0,
    where: str = "the pairs file",
) -> tuple[dict[str, list[Pair]], dict[str, list[Pair]]]:
    """(train, eval) pairs per language from `{"lang", "prompt", "response"}` rows (used as they are)."""
    by_lang: dict[str, list[Pair]] = {}
    for i, row in enumerate(rows):
        missing = [k for k in ("lang", "prompt", "response") if not isinstance(row.get(k), str)]
        if missing:
            raise CorpusError(f"{where} row {i + 1}: missing string field(s) {missing}")
        by_lang.setdefault(row["lang"], []).append((row["prompt"], row["response"]))
    absent = [lang for lang in languages if lang not in by_lang]
    if absent:
        raise CorpusError(f"{where} has no pairs for {absent}; it has {sorted(by_lang)}")
    train, ev = {}, {}
    for lang in languages:
        train[lang], ev[lang] = _select(by_lang[lang], pairs_per_language, eval_pairs_per_language, seed, lang, where)
    return train, ev


# ----------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class PairRows:
    """Tokenized pairs as padded rows (see the module doc for the fields).

    Attributes:
      ids: int32 `[R, T]`; attend, loss: bool `[R, T]`; lang: int32 `[R]`.
      languages: language codes (`lang` indexes them).
      pad_id: the id written after each row's end.
      skipped: rows left out per language: their response did not fit `seq_len` or has no token.
    """

    ids: np.ndarray
    attend: np.ndarray
    loss: np.ndarray
    lang: np.ndarray
    languages: tuple[str, ...]
    pad_id: int
    skipped: dict[str, int]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.ids.shape[1])

    def loss_tokens(self) -> dict[str, int]:
        """Response (loss) tokens per language."""
        per = np.bincount(self.lang, weights=self.loss.sum(axis=1), minlength=len(self.languages))
        return {lang: int(per[k]) for k, lang in enumerate(self.languages)}

    def row(self, i: int) -> dict[str, np.ndarray]:
        return {"ids": self.ids[i], "attend": self.attend[i], "loss": self.loss[i], "lang": self.lang[i]}

    def digest(self) -> str:
        """BLAKE2b of the rows: two runs with the same digest train on the same tokens."""
        return array_digest(self.ids, self.attend, self.loss, self.lang, header=repr((self.languages, self.pad_id)))


def pair_rows(
    pairs: Mapping[str, Sequence[Pair]],
    tokenizer,
    *,
    seq_len: int,
    add_bos: bool = True,
    add_eos: bool = True,
    vocab_size: int | None = None,
) -> PairRows:
    """Tokenize `{lang: [(prompt, response), ...]}` into padded rows with a response-only loss mask.

    `vocab_size` (the model's) is checked against every id, so a tokenizer of another
    model fails here rather than inside the forward.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (a prompt token and a response token), got {seq_len}")
    languages = [lang for lang in pairs if pairs[lang]]
    if not languages:
        raise CorpusError("no pairs to tokenize")
    tok = tokenize_corpus(
        Corpus({lang: list(pairs[lang]) for lang in languages}),
        tokenizer,
        add_bos=add_bos,
        add_eos=add_eos,
        progress=False,
    )
    ids, attend, loss, lang_ids = [], [], [], []
    skipped = {}
    for k, lang in enumerate(tok.languages):
        t = tok.data[lang]
        n_skip = 0
        for d in range(t.n_docs):
            full = t.ids[t.offsets[d] : t.offsets[d + 1]]
            start = max(int(t.counted_from[d]), 1)  # position 0 is never predicted
            doc = full[:seq_len]
            # a response that tokenizes to nothing (EOS aside) or is cut off entirely teaches nothing
            if len(full) - start - int(tok.add_eos) <= 0 or start >= len(doc):
                n_skip += 1
                continue
            row = np.full(seq_len, tok.pad_id, np.int32)
            row[: len(doc)] = doc
            real = np.zeros(seq_len, bool)
            real[: len(doc)] = True
            target = np.zeros(seq_len, bool)
            target[start : len(doc)] = True
            ids.append(row)
            attend.append(real)
            loss.append(target)
            lang_ids.append(k)
        skipped[lang] = n_skip
    if not ids:
        raise CorpusError(
            f"no pair has a response token within seq_len={seq_len}: raise data.seq_len, or check that the "
            "tokenizer turns the texts into tokens at all"
        )
    out = PairRows(
        np.stack(ids),
        np.stack(attend),
        np.stack(loss),
        np.asarray(lang_ids, np.int32),
        tuple(tok.languages),
        int(tok.pad_id),
        skipped,
    )
    if vocab_size is not None and (int(out.ids.max()) >= vocab_size or not 0 <= out.pad_id < vocab_size):
        raise ValueError(
            f"the tokenized pairs hold id {max(int(out.ids.max()), out.pad_id)}, outside the model's vocabulary of "
            f"{vocab_size}: the tokenizer does not belong to this model"
        )
    return out


# ----------------------------------------------------------------------------- batches


class _Row:
    """Row lookup for grain's `map` (picklable, so grain may run it in worker processes)."""

    def __init__(self, rows: PairRows):
        self.rows = rows

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        return self.rows.row(int(i))


def batch_dataset(rows: PairRows, *, batch_size: int, seed: int, shard: int = 0, shards: int = 1) -> grain.MapDataset:
    """This shard's endless stream of `batch_size // shards`-row batches (module doc: the order)."""
    if batch_size < 1 or batch_size % shards:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of the {shards} data shard(s)")
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} must be in [0, {shards})")
    stream = grain.MapDataset.range(len(rows)).shuffle(seed=seed).repeat(None)
    return stream[shard::shards].map(_Row(rows)).batch(batch_size // shards)


def iterator(dataset: grain.MapDataset, state: dict | None = None) -> grain.DatasetIterator:
    """A grain iterator over `dataset`, restored to `state` (from `get_state()`) when given.

    No read-ahead threads: a batch is drawn right before its step, so the iterator's
    state at a step boundary is exactly "the next batch is the next step's".
    """
    it = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))
    if state is not None:
        it.set_state(state)
    return it


def eval_batches(rows: PairRows, *, batch_size: int, shard: int = 0, shards: int = 1) -> list[dict[str, np.ndarray]]:
    """All rows once, in order, as this shard's fixed-size batches (the last padded with loss-free rows)."""
    if batch_size < 1 or batch_size % shards:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of the {shards} data shard(s)")
    n = len(rows)
    total = -(-n // batch_size) * batch_size
    local = batch_size // shards
    out = []
    for b in range(total // batch_size):
        idx = [b * batch_size + j * shards + shard for j in range(local)]
        batch = {k: np.stack([rows.row(min(i, n - 1))[k] for i in idx]) for k in ("ids", "attend", "loss", "lang")}
        padding = np.asarray([i >= n for i in idx])
        batch["loss"] = batch["loss"] & ~padding[:, None]
        out.append(batch)
    return out
