"""Log-probabilities of token rows under neuron edits: the one jitted program behind PPL and LSS.

A row is a tokenized text (BOS first when the tokenizer has one) with two masks:
`attend` marks its real tokens (padding is never attended to) and `score` marks
the tokens whose log-probability counts. Position 0 is never scored: nothing
predicts it (vLLM's `prompt_logprobs[0]` is `None`, and LAPE's and NJUNLP's
`ppl.py` skip it); a token at position `j` is scored from the hidden state at
`j - 1`, which must be a real token too. Rows come from token lists
(`rows_from_token_lists`), `make_batches` output (`rows_from_batches`), or prompts
each followed by continuations whose tokens alone are scored (`continuation_rows`:
the cloze objects of LSS, the options of a multiple-choice item).

`Scorer` runs the forward with `output="hidden"` and takes the log-softmax of
each next token over vocabulary chunks (`jlang.models.vocab.target_logprob`), so
`[batch, seq, vocab]` logits never exist. It sorts rows by length and cuts
batches of `batch_size` rows whose width is the batch's longest row rounded up
to a power of two (>= 16): a handful of compiled shapes, little padding. Edits
are arguments (data), so every edit condition reuses the same programs. Batches are
dispatched one ahead of the host's fold (`jlang.parallel.batch_loop.pipelined`).

Several processes (`jlang.parallel.distributed`): by default every process passes the
same rows, and each batch is split over all devices (the batches of a
single-process run). With `sharded=True` each process passes its own rows (its
grain shard, as `ppl` does); the processes then agree on one plan (as many
batches as the longest shard needs, each as wide as its widest shard's rows),
feed their rows as their share of each global batch, and get back the sums of
their own rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from jlang import parallel
from jlang.data.pipeline import common_prefix
from jlang.edits import identity
from jlang.models.decoder import Edits, forward
from jlang.models.families import ModelConfig
from jlang.models.vocab import DEFAULT_CHUNK, target_logprob
from jlang.parallel import distributed
from jlang.parallel.batch_loop import bucket_width, pipelined


@dataclass(frozen=True)
class TokenRows:
    """Rows to score, right-padded: ids int32 `[N, T]`, attend/score bool `[N, T]`, group int32 `[N]`."""

    ids: np.ndarray
    attend: np.ndarray
    score: np.ndarray
    group: np.ndarray

    def __post_init__(self) -> None:
        n, t = self.ids.shape
        if self.attend.shape != (n, t) or self.score.shape != (n, t) or self.group.shape != (n,):
            raise ValueError(
                f"TokenRows: ids {self.ids.shape}, attend {self.attend.shape}, score {self.score.shape}, "
                f"group {self.group.shape} do not agree"
            )
        if (self.score & ~self.attend).any():
            raise ValueError("TokenRows: a scored position is not an attended (real) token")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """int `[N]`: one past the last real token of each row."""
        t = self.ids.shape[1]
        last = np.where(self.attend, np.arange(t), -1).max(axis=1)
        return last + 1

    def scored_counts(self) -> np.ndarray:
        """int64 `[N]`: tokens that count in each row (scored, not at position 0, real predecessor)."""
        return effective_score(self.attend, self.score).sum(axis=1, dtype=np.int64)

    def take(self, index: np.ndarray) -> TokenRows:
        """The rows `index` (int `[n]` or bool `[N]`), in that order."""
        return TokenRows(self.ids[index], self.attend[index], self.score[index], self.group[index])

    def batch(self, index: np.ndarray, width: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """ids int32, attend bool `[size, width]` of rows `index`, padded with empty rows (and columns past the
        rows' width): one compiled shape for every batch of a plan."""
        ids = np.zeros((size, width), np.int32)
        attend = np.zeros((size, width), bool)
        w = min(width, self.ids.shape[1])
        ids[: len(index), :w] = self.ids[index, :w]
        attend[: len(index), :w] = self.attend[index, :w]
        return ids, attend


def effective_score(attend: np.ndarray, score: np.ndarray) -> np.ndarray:
    """bool `[N, T]`: `score` without position 0 and without tokens whose predecessor is not real."""
    out = score.copy()
    out[:, 0] = False
    out[:, 1:] &= attend[:, :-1]
    return out


def rows_from_token_lists(
    tokens: Sequence[Sequence[int]], score_from: Sequence[int], group: Sequence[int], *, pad_id: int = 0
) -> TokenRows:
    """Rows from ragged token lists; row i scores its tokens from position `score_from[i]` on."""
    n = len(tokens)
    width = max((len(t) for t in tokens), default=1)
    ids = np.full((n, width), pad_id, np.int32)
    attend = np.zeros((n, width), bool)
    score = np.zeros((n, width), bool)
    for i, (toks, start) in enumerate(zip(tokens, score_from)):
        ids[i, : len(toks)] = toks
        attend[i, : len(toks)] = True
        score[i, start : len(toks)] = True
    return TokenRows(ids, attend, score, np.asarray(group, np.int32))


def bos_ids(tokenizer) -> list[int]:
    """`[bos_token_id]`, or `[]` for a tokenizer without one: what each scored text starts with."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos] if bos is not None else []


def continuation_rows(tokenizer, prompts: Sequence[str], continuations: Sequence[Sequence[str]]) -> TokenRows:
    """Rows `prompt_i + c` for the `n` continuations `c` of every prompt (row `i * n + j`, group `i`); BOS first
    when the tokenizer has one; each continuation's tokens are scored.

    A continuation starts where `tokenize(prompt + c)` departs from `tokenize(prompt)` (their common prefix),
    so a token merging the prompt's end with the continuation's start is scored.
    """
    widths = {len(c) for c in continuations}
    if len(widths) > 1:
        raise ValueError(f"prompts have different numbers of continuations: {sorted(widths)}")
    n = widths.pop() if widths else 1
    bos = bos_ids(tokenizer)
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    texts = [p + c for p, conts in zip(prompts, continuations) for c in conts]
    full = tokenizer(texts, add_special_tokens=False)["input_ids"]
    tokens = [bos + list(ids) for ids in full]
    starts = [len(bos) + common_prefix(prompt_ids[r // n], ids) for r, ids in enumerate(full)]
    return rows_from_token_lists(tokens, starts, np.arange(len(full)) // n, pad_id=tokenizer.pad_token_id or 0)


def rows_from_batches(batches: Iterable[Mapping[str, np.ndarray]]) -> TokenRows:
    """Rows of `jlang.data.make_batches` output (plain text: `valid` = real tokens = scored); padding rows dropped."""
    ids, valid, lang = [], [], []
    for b in batches:
        keep = np.asarray(b["lang"]) >= 0
        ids.append(np.asarray(b["ids"])[keep])
        valid.append(np.asarray(b["valid"])[keep])
        lang.append(np.asarray(b["lang"])[keep])
    valid_arr = np.concatenate(valid)
    return TokenRows(
        np.concatenate(ids).astype(np.int32), valid_arr, valid_arr.copy(), np.concatenate(lang).astype(np.int32)
    )


def plan_batches(lengths: np.ndarray, batch_size: int, cap: int) -> list[tuple[np.ndarray, int]]:
    """(row indices, width) per batch: rows sorted by length (stable), `batch_size` per batch."""
    order = np.argsort(lengths, kind="stable")
    out = []
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        out.append((idx, bucket_width(int(lengths[idx].max()), cap)))
    return out


def plan_shard_batches(lengths: np.ndarray, batch_size: int, cap: int, mesh) -> list[tuple[np.ndarray, int]]:
    """`plan_batches` agreed by every data shard: this shard's row indices and the common width, per batch.

    A collective (`jlang.parallel.distributed.gather_shards`, see `merge_plans`); on one shard, `plan_batches`.
    """
    every = distributed.gather_shards(np.append(np.asarray(lengths, np.int64), cap), mesh)  # each shard's cap last
    if len(every) == 1:
        return plan_batches(lengths, batch_size, cap)
    cap = int(max(e[-1] for e in every))
    shard, _ = distributed.data_shard(mesh)
    return merge_plans([plan_batches(e[:-1], batch_size, cap) for e in every], shard)


def merge_plans(plans: Sequence[list[tuple[np.ndarray, int]]], shard: int) -> list[tuple[np.ndarray, int]]:
    """Shard `shard`'s part of one plan for all shards (each shard's `plan_batches`, in shard order).

    Every process must run each global batch, with one shape: the plan has as many batches as the
    longest shard's plan (a shard out of rows feeds none) and batch i is as wide as the widest
    shard's batch i.
    """
    empty = np.zeros(0, np.int64)
    out = []
    for i in range(max(len(p) for p in plans)):
        width = max(p[i][1] for p in plans if i < len(p))
        out.append((plans[shard][i][0] if i < len(plans[shard]) else empty, width))
    return out


def place_token_rows(model, ids: np.ndarray, mask: np.ndarray, *, sharded: bool = False) -> tuple:
    """Token rows on `model`'s devices: ids, positions int32 and `mask` bool `[rows', seq]`, placed.

    Rows are padded with empty rows (id 0, mask False) so the mesh divides them, positions are
    `0..seq-1`. Default: every process passes the same rows (`distributed.place_whole_batch`); with
    `sharded`, each process passes its own share of the global batch (`Model.place_batch`).
    """
    ids = model.check_ids(ids)
    b, t = ids.shape
    rows = distributed.local_batch_rows(b, model.mesh) if sharded else parallel.pad_batch_to(b, model.mesh)
    mask = np.asarray(mask, bool)
    if rows != b:
        ids = np.concatenate([ids, np.zeros((rows - b, t), np.int32)])
        mask = np.concatenate([mask, np.zeros((rows - b, t), bool)])
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), ids.shape).copy()
    place = model.place_batch if sharded else functools.partial(distributed.place_whole_batch, model)
    return place(ids), place(positions), place(mask)


def _token_logprobs(params, ids, positions, attend, edits, *, cfg: ModelConfig, chunk: int):
    """log p(ids[:, j] | ids[:, :j]) for j >= 1: float32 `[batch, seq - 1]`."""
    hidden, _ = forward(params, ids, cfg, positions=positions, valid=attend, edits=edits, output="hidden")
    return target_logprob(params, hidden[:, :-1], ids[:, 1:], cfg, chunk)


class Scorer:
    """Jitted next-token log-probabilities of a model, for any `Edits` of its shape.

    Args:
      model: a `jlang.Model`.
      vocab_chunk: vocabulary chunk of the log-softmax (memory `batch x seq x chunk` float32).
    """

    def __init__(self, model, *, vocab_chunk: int = DEFAULT_CHUNK):
        self.model = model
        self.vocab_chunk = int(vocab_chunk)
        self._step = jax.jit(functools.partial(_token_logprobs, cfg=model.config, chunk=self.vocab_chunk))
        self._identity: Edits | None = None

    def _edits(self, edits: Edits | None) -> Edits:
        if edits is not None:
            return edits
        if self._identity is None:
            self._identity = identity((self.model.num_layers, self.model.num_neurons))
        return self._identity

    def token_logprobs(self, ids: np.ndarray, attend: np.ndarray, edits: Edits | None = None) -> np.ndarray:
        """float32 `[batch, seq - 1]` log-probabilities of tokens 1.. of one batch (no bucketing; the same rows
        on every process)."""
        b = len(ids)
        return parallel.to_host(self._dispatch(np.asarray(ids), np.asarray(attend, bool), edits, sharded=False))[:b]

    def plan(self, rows: TokenRows, batch_size: int, *, sharded: bool = False) -> list[tuple[np.ndarray, int]]:
        """(row indices, width) per batch; with `sharded`, agreed by every shard (a collective)."""
        if sharded:
            return plan_shard_batches(rows.lengths, batch_size, rows.ids.shape[1], self.model.mesh)
        return plan_batches(rows.lengths, batch_size, rows.ids.shape[1])

    def row_sums(
        self,
        rows: TokenRows,
        edits: Edits | None = None,
        *,
        batch_size: int = 8,
        progress=None,
        sharded: bool = False,
        plan: list[tuple[np.ndarray, int]] | None = None,
    ) -> np.ndarray:
        """float64 `[N]`: the sum of scored log-probabilities of each row (`effective_score` positions).

        `sharded`: `rows` are this process's share (they differ between data shards) and `batch_size`
        counts this process's rows per batch; every process must call this the same number of times.
        Default: every process passes the same rows; `batch_size` counts the rows of a whole batch.
        `plan`: `self.plan(rows, batch_size, sharded=sharded)`, computed once for several calls on the same rows.
        """
        total = np.zeros(len(rows), np.float64)
        score = effective_score(rows.attend, rows.score)

        def dispatch(batch: tuple[np.ndarray, int]):
            idx, width = batch
            ids, attend = rows.batch(idx, width, batch_size)  # keep the compiled batch shape
            return self._dispatch(ids, attend, edits, sharded=sharded)

        def fold(_: int, batch: tuple[np.ndarray, int], out) -> None:
            self._fold(total, score, *batch, out, sharded=sharded)
            if progress is not None:
                progress.update(1)

        pipelined(plan if plan is not None else self.plan(rows, batch_size, sharded=sharded), dispatch, fold)
        return total

    def _dispatch(self, ids: np.ndarray, attend: np.ndarray, edits: Edits | None, *, sharded: bool):
        placed = place_token_rows(self.model, ids, attend, sharded=sharded)
        return self._step(self.model.params, *placed, self._edits(edits))

    def _fold(self, total: np.ndarray, score: np.ndarray, idx: np.ndarray, width: int, out, *, sharded: bool) -> None:
        host = distributed.local_rows(out, self.model.mesh) if sharded else parallel.to_host(out)
        logp = host[: len(idx)].astype(np.float64)  # [b, width - 1]
        mask = score[idx, 1:width]
        total[idx] = np.where(mask, logp, 0.0).sum(axis=1)

    def num_batches(self, rows: TokenRows, batch_size: int, *, sharded: bool = False) -> int:
        """Batches `row_sums` runs (with `sharded`, a collective)."""
        return len(self.plan(rows, batch_size, sharded=sharded))


def row_scorer(
    model, *, batch_size: int, vocab_chunk: int = DEFAULT_CHUNK
) -> Callable[[TokenRows, Edits | None], np.ndarray]:
    """`(rows, edits) -> float64 [N]` summed scored log-probabilities (`Scorer.row_sums`): the evaluations' default."""
    scorer = Scorer(model, vocab_chunk=vocab_chunk)
    return lambda rows, edits: scorer.row_sums(rows, edits, batch_size=batch_size)
