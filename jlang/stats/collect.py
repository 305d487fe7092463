"""The statistics pass: per-language reductions at `mlp.act`, folded exactly on the host.

One jitted forward per batch (no unembedding) returns, for every layer, the
per-language count of `a > 0`, `Σa`, `Σa²`, `max a` and the number of valid
tokens; padding never counts. The device sums within one batch (int32 counts
are exact there: a batch has far fewer than 2^31 tokens); the host folds every
batch into int64 counts and float64 sums, so totals stay exact at any corpus
size. Batches are dispatched one ahead of the host fold, so the device never
waits for the host.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlang import parallel
from jlang.models.model import Model
from jlang.parallel.batch_loop import Throughput, pipelined, place_rows

HOOK_POINT = "mlp.act"


def language_reductions(act: jax.Array, valid: jax.Array, lang: jax.Array, num_languages: int) -> dict[str, jax.Array]:
    """Per-language reductions of one layer's activations.

    Args:
      act: `[batch, seq, neurons]` activations at the hook point.
      valid: bool `[batch, seq]`; only valid tokens count.
      lang: int `[batch]` language index of each row (rows of padding have no valid tokens).
    Returns:
      over_zero int32 `[K, F]`, sum/sum_sq/max float32 `[K, F]`, tokens int32 `[K]`.
    """
    a = act.astype(jnp.float32)
    v = valid[:, :, None]
    row_over_zero = jnp.sum((a > 0) & v, axis=1, dtype=jnp.int32)  # [batch, F]
    row_sum = jnp.sum(jnp.where(v, a, 0.0), axis=1)
    row_sum_sq = jnp.sum(jnp.where(v, a * a, 0.0), axis=1)
    row_max = jnp.max(jnp.where(v, a, -jnp.inf), axis=1)
    onehot = jax.nn.one_hot(lang, num_languages, dtype=jnp.int32)  # [batch, K]
    return {
        "over_zero": jnp.einsum("bk,bf->kf", onehot, row_over_zero),
        "sum": jnp.einsum("bk,bf->kf", onehot.astype(jnp.float32), row_sum, precision="highest"),
        "sum_sq": jnp.einsum("bk,bf->kf", onehot.astype(jnp.float32), row_sum_sq, precision="highest"),
        "max": jnp.max(jnp.where(onehot[:, :, None] > 0, row_max[:, None, :], -jnp.inf), axis=0),
        "tokens": onehot.T @ jnp.sum(valid, axis=1, dtype=jnp.int32),
    }


@dataclasses.dataclass
class Accumulator:
    """Exact host-side totals `[K, L, F]`: int64 counts, float64 sums."""

    num_languages: int
    num_layers: int
    num_neurons: int

    def __post_init__(self):
        K, L, F = self.num_languages, self.num_layers, self.num_neurons
        self.tokens = np.zeros(K, np.int64)
        self.over_zero = np.zeros((K, L, F), np.int64)
        self.sum = np.zeros((K, L, F), np.float64)
        self.sum_sq = np.zeros((K, L, F), np.float64)
        self.max = np.full((K, L, F), -np.inf, np.float32)

    def add(self, batch: Mapping[str, np.ndarray]) -> None:
        """Fold one batch's reductions (`[L, K, F]` as the scan stacks them; tokens `[L, K]`)."""
        self.tokens += np.asarray(batch["tokens"][0], np.int64)
        self.over_zero += np.asarray(batch["over_zero"], np.int64).transpose(1, 0, 2)
        self.sum += np.asarray(batch["sum"], np.float64).transpose(1, 0, 2)
        self.sum_sq += np.asarray(batch["sum_sq"], np.float64).transpose(1, 0, 2)
        np.maximum(self.max, np.asarray(batch["max"]).transpose(1, 0, 2), out=self.max)

    def state(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("tokens", "over_zero", "sum", "sum_sq", "max")}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        for k, v in state.items():
            setattr(self, k, np.array(v, dtype=getattr(self, k).dtype))


@functools.partial(jax.jit, static_argnames=("cfg", "num_languages"))
def _stats_step(params, ids, positions, valid, lang, *, cfg, num_languages: int):
    from jlang.models.decoder import forward

    def probe(points, v):
        return language_reductions(points[HOOK_POINT], v, lang, num_languages)

    _, reduced = forward(params, ids, cfg, positions=positions, valid=valid, output="none", probe=probe)
    return reduced


def stats_step(model: Model, num_languages: int):
    """The jitted per-batch step: device batch -> per-layer, per-language reductions.

    One jitted function keyed by the (hashable) model config and the number of
    languages, so every `run_stats` call on the same model and shapes reuses
    the compiled program (a 1B model's step takes seconds to compile).
    """
    return functools.partial(_stats_step, cfg=model.config, num_languages=num_languages)


def run_stats(
    model: Model,
    batches: Iterable[Mapping[str, np.ndarray]],
    num_languages: int,
    *,
    total: int | None = None,
    accumulator: Accumulator | None = None,
    progress: bool = True,
    on_batch: Any = None,
) -> Accumulator:
    """Fold the reductions of every batch into an `Accumulator`.

    `batches` yield dicts of host arrays: `ids` int `[batch, seq]`, `valid` bool
    `[batch, seq]`, `lang` int `[batch]`, and optionally `positions`. `on_batch(i, acc)`
    runs after batch `i` is folded (checkpointing hooks in here).
    """
    acc = accumulator or Accumulator(num_languages, model.num_layers, model.num_neurons)
    step = stats_step(model, num_languages)
    params = model.unstacked_params()  # one CPU device: per-layer views, no weight copies per layer
    rate = Throughput(total, "statistics", "tokens", enabled=progress)

    def dispatch(batch):
        placed = place_rows(model, batch)
        return step(params, placed["ids"], placed["positions"], placed["valid"], placed["lang"])

    def fold(index, batch, result):
        host = jax.tree.map(parallel.to_host, result)
        acc.add(host)
        rate.update(int(np.asarray(host["tokens"][0]).sum()))
        if on_batch is not None:
            on_batch(index, acc)

    pipelined(batches, dispatch, fold)
    rate.close()
    return acc


def collect_stats(
    model: Model,
    corpus: Any,
    *,
    batch_size: int,
    seq_len: int,
    mesh: Any = None,
    mode: str = "pack",
    max_tokens: int | None = None,
    add_bos: bool | None = None,
    seed: int = 0,
    progress: bool = True,
):
    """Activation statistics per language at `mlp.act`.

    Args:
      model: a `jlang.Model`.
      corpus: maps language code -> source (a .txt/.jsonl path, a LAPE token-id
        file, a list of strings), or a `jlang.data.Corpus`.
      batch_size, seq_len: rows per batch (per process) and tokens per row.
      mesh: run under this `(data, model)` mesh (parameters are resharded onto it).
      mode: "pack" (LAPE: concatenated windows, every token counts) or "pad"
        (one sentence per row, padding never counts; prompt/response pairs
        count the response only).
      max_tokens: per-language cap (LAPE uses 99,999,744).
    Returns:
      `jlang.stats.ActivationStats` with int64 counts and float64 sums.
    """
    from jlang.data.pipeline import make_batches, tokenize_corpus
    from jlang.parallel import distributed
    from jlang.stats import ActivationStats
    from jlang.stats.resumable import check_ids_fit

    mesh = mesh or model.mesh or distributed.default_mesh()
    if mesh is not None:
        model = model.with_mesh(mesh)
    if model.tokenizer is None:
        raise ValueError(f"{model.name} has no tokenizer; collect_stats needs one to tokenize the corpus")
    tokenized = tokenize_corpus(corpus, model.tokenizer, add_bos=add_bos, progress=progress)
    check_ids_fit(tokenized, model)  # a tokenizer that does not belong to the model fails here, by name
    process_index, process_count = distributed.data_shard(model.mesh)
    batches = make_batches(
        tokenized,
        batch_size=batch_size,
        seq_len=seq_len,
        mode=mode,
        max_tokens=max_tokens,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        progress=progress,
    )
    acc = run_stats(model, batches, len(batches.languages), total=len(batches), progress=progress)
    return ActivationStats(
        languages=list(batches.languages),
        tokens=acc.tokens,
        over_zero=acc.over_zero,
        sum=acc.sum,
        sum_sq=acc.sum_sq,
        max=acc.max,
        meta={
            "model": model.name,
            "family": model.family,
            "source": model.source,
            "hook_point": HOOK_POINT,
            "mode": mode,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "max_tokens": max_tokens,
            "corpus": _describe(corpus),
        },
    )


def _describe(corpus: Any) -> dict[str, str]:
    """language -> a short description of its source, for the statistics' metadata."""
    out = {}
    for lang, src in getattr(corpus, "sources", corpus).items():
        if hasattr(src, "describe"):
            out[lang] = src.describe()
        elif isinstance(src, (list, tuple)):
            out[lang] = f"{len(src)} in-memory texts"
        else:
            out[lang] = str(src)
    return out
