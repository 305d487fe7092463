"""Activations for SAEs, straight from the model: hook points of a model prefix, streams of them, sentence rows.

Activations are never written to disk. `ActivationStream` feeds the model from a
grain pipeline (`jlang.data.make_batches`, packed windows, rows shuffled across
languages); a jitted forward of the model's first `layer + 1` layers (the layers
after the hook point cannot change it, so they are not run) returns the hook
point's activations `[batch, seq, d_in]`. BOS tokens (an outlier of every
residual stream, and the same for every text) are left out when `skip_bos`
(`token_weight`). `ArrayStream` serves activations already in memory.

For measuring SAEs on whole sentences (evaluation, SAE-LAPE statistics, language
ID), `sentence_rows` makes one row per document and `iterate_rows` batches them
by length.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlang import parallel
from jlang.data.pipeline import make_batches, tokenize_corpus
from jlang.io.checkpoint import array_digest
from jlang.models.decoder import SPLICE_POINTS, forward
from jlang.models.families import ModelConfig
from jlang.models.scoring import TokenRows, plan_batches, rows_from_token_lists
from jlang.parallel import distributed
from jlang.sae.model import SAEError
from jlang.stats.checkpoint import corpus_digest
from jlang.stats.collect import check_ids_fit

Array = jax.Array


# ----------------------------------------------------------------------------- activations of a model prefix


def prefix_config(cfg: ModelConfig, num_layers: int) -> ModelConfig:
    """The config of the model's first `num_layers` layers."""
    return dataclasses.replace(cfg, num_layers=num_layers, local_layers=tuple(cfg.local_layers[:num_layers]))


def layer_activations(
    params: Mapping[str, Array],
    ids: Array,
    positions: Array,
    valid: Array,
    *,
    cfg: ModelConfig,
    layers: tuple[int, ...],
    point: str,
) -> Array:
    """Activations at `point` of each of `layers`: float32 `[len(layers), batch, seq, width]`.

    Only the first `max(layers) + 1` layers run.
    """
    depth = max(layers) + 1
    sub = {k: (v[:depth] if k.startswith("layers.") else v) for k, v in params.items()}
    _, probes = forward(
        sub,
        ids,
        prefix_config(cfg, depth),
        positions=positions,
        valid=valid,
        output="none",
        probe=lambda points, v: points[point],
    )
    return probes[jnp.asarray(layers)].astype(jnp.float32)


def hook_activations(
    params: Mapping[str, Array], ids: Array, positions: Array, valid: Array, *, cfg: ModelConfig, layer: int, point: str
) -> Array:
    """Activations at `point` of `layer`: float32 `[batch, seq, width]`, from the first `layer + 1` layers only."""
    return layer_activations(params, ids, positions, valid, cfg=cfg, layers=(layer,), point=point)[0]


@functools.lru_cache(maxsize=32)
def activation_fn(cfg: ModelConfig, layer: int, point: str) -> Callable:
    """`hook_activations` jitted for one model config and hook (cached: every stream of it shares one compilation)."""
    return jax.jit(functools.partial(hook_activations, cfg=cfg, layer=layer, point=point))


def check_hook(model, layer: int, point: str) -> None:
    """Raise `SAEError` unless `point` is a splice point and `layer` one of `model`'s layers."""
    if point not in SPLICE_POINTS:
        raise SAEError(f"hook point must be one of {SPLICE_POINTS}, got {point!r}")
    if not 0 <= layer < model.num_layers:
        raise SAEError(f"layer {layer} is out of range: {model.name} has layers 0..{model.num_layers - 1}")


def token_weight(ids: np.ndarray, valid: np.ndarray, bos_id: int | None, skip_bos: bool) -> np.ndarray:
    """float32 `[batch, seq]`: 1 for tokens an SAE trains on or is measured on (valid, and not BOS when `skip_bos`)."""
    w = np.asarray(valid, bool)
    if skip_bos and bos_id is not None:
        w = w & (np.asarray(ids) != bos_id)
    return w.astype(np.float32)


# ----------------------------------------------------------------------------- streams


class ActivationStream:
    """Endless `(acts [N, d_in], weight [N])` device arrays from the model, epoch after epoch of a grain pipeline.

    Each epoch is `make_batches(..., mode="pack", shuffle=True, seed=seed + epoch)`; `N = batch_size x
    seq_len` rows of all processes. `state()` / `restore(state)` give the position (epoch, grain iterator)
    that a checkpoint records.
    """

    def __init__(
        self,
        model,
        tokenized,
        *,
        layer: int,
        point: str = "mlp.out",
        batch_size: int = 8,
        seq_len: int = 128,
        seed: int = 0,
        skip_bos: bool = True,
        max_tokens: int | None = None,
    ):
        check_hook(model, layer, point)
        self.model = distributed.for_processes(model)
        self.tokenized = tokenized
        self.layer, self.point = layer, point
        self.batch_size, self.seq_len = batch_size, seq_len
        self.seed, self.skip_bos, self.max_tokens = seed, skip_bos, max_tokens
        self.shard, self.shards = distributed.data_shard(model.mesh)
        self.rows = parallel.pad_batch_to(batch_size * self.shards, model.mesh) // self.shards
        self._fn = activation_fn(model.config, layer, point)
        self.epoch, self._iter, self._batches = 0, None, None
        self._open(0, None)

    @property
    def tokens_per_batch(self) -> int:
        """Token slots per model batch over all processes (the `N` of `next()`)."""
        return self.rows * self.shards * self.seq_len

    @property
    def mesh(self):
        return self.model.mesh

    @property
    def width(self) -> int:
        return int(self.model.config.d_model)

    def fingerprint(self) -> dict:
        """What makes two streams give the same activations (for refusing a foreign checkpoint)."""
        return {
            "model": self.model.name,
            "model_source": str(self.model.source),
            "layer": self.layer,
            "point": self.point,
            "languages": list(self.tokenized.languages),
            "corpus_digest": corpus_digest(self.tokenized),
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "data_seed": self.seed,
            "skip_bos": self.skip_bos,
            "max_tokens": self.max_tokens,
            "processes": jax.process_count(),
        }

    def describe(self) -> dict:
        return {
            "languages": list(self.tokenized.languages),
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "skip_bos": self.skip_bos,
            "epochs_started": self.epoch + 1,
        }

    def _open(self, epoch: int, iterator_state: dict | None) -> None:
        self.epoch = epoch
        self._batches = make_batches(
            self.tokenized,
            batch_size=self.rows,
            seq_len=self.seq_len,
            mode="pack",
            shuffle=True,
            seed=self.seed + epoch,
            max_tokens=self.max_tokens,
            process_index=self.shard,
            process_count=self.shards,
            progress=False,
        )
        self._iter = self._batches.iterator(iterator_state)

    def state(self) -> dict:
        return {"epoch": int(self.epoch), "iterator": self._iter.get_state()}

    def restore(self, state: Mapping) -> None:
        self._open(int(state["epoch"]), dict(state["iterator"]))

    def next_host(self) -> dict[str, np.ndarray]:
        """The next batch of token rows (a new epoch when one ends)."""
        try:
            return next(self._iter)
        except StopIteration:
            self._open(self.epoch + 1, None)
            return next(self._iter)

    def next(self) -> tuple[Array, Array]:
        """(acts float32 `[N, d_in]`, weight float32 `[N]`) of the next model batch, on the devices."""
        batch = self.next_host()
        m = self.model
        ids = m.check_ids(batch["ids"])
        weight = token_weight(ids, batch["valid"], self.tokenized.bos_id, self.skip_bos)
        acts = self._fn(
            m.params,
            m.place_batch(ids),
            m.place_batch(np.asarray(batch["positions"], np.int32)),
            m.place_batch(np.asarray(batch["valid"], bool)),
        )
        n = acts.shape[0] * acts.shape[1]
        return acts.reshape(n, acts.shape[-1]), m.place_batch(weight).reshape(n)


class ArrayStream:
    """`(acts, weight)` batches of `batch_tokens` consecutive rows of a host array `[M, d_in]`, epoch after epoch.

    For activations already in memory (and for tests with synthetic activations). Rows left over at the end
    of an epoch are dropped; epoch `e` walks the rows in the order of `permutation(seed + e)` when `shuffle`.
    """

    layer: int | None = None
    point: str | None = None

    def __init__(
        self,
        x: np.ndarray,
        batch_tokens: int,
        *,
        weight: np.ndarray | None = None,
        shuffle: bool = True,
        seed: int = 0,
        mesh=None,
    ):
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or len(x) < batch_tokens or batch_tokens < 1:
            raise SAEError(f"ArrayStream needs [M, d] activations with M >= batch_tokens={batch_tokens}, got {x.shape}")
        self.x, self.batch_tokens, self.shuffle, self.seed, self._mesh = (x, batch_tokens, shuffle, seed, mesh)
        self.weight = np.ones(len(x), np.float32) if weight is None else np.asarray(weight, np.float32)
        self.epoch, self.position = 0, 0

    tokens_per_batch = property(lambda self: self.batch_tokens)
    mesh = property(lambda self: self._mesh)
    width = property(lambda self: int(self.x.shape[1]))

    def fingerprint(self) -> dict:
        return {
            "array": array_digest(self.x),
            "shape": list(self.x.shape),
            "batch_tokens": self.batch_tokens,
            "shuffle": self.shuffle,
            "seed": self.seed,
        }

    def describe(self) -> dict:
        return {"array_shape": list(self.x.shape), "batch_tokens": self.batch_tokens, "epochs_started": self.epoch + 1}

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: Mapping) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def next(self) -> tuple[Array, Array]:
        if self.position + self.batch_tokens > len(self.x):
            self.epoch, self.position = self.epoch + 1, 0
        order = np.random.default_rng(self.seed + self.epoch).permutation(len(self.x)) if self.shuffle else None
        rows = np.arange(self.position, self.position + self.batch_tokens)
        rows = order[rows] if order is not None else rows
        self.position += self.batch_tokens
        x, w = self.x[rows], self.weight[rows]
        if self._mesh is None:
            return jnp.asarray(x), jnp.asarray(w)
        return (
            jax.device_put(x, parallel.batch_sharding(self._mesh, 2)),
            jax.device_put(w, parallel.batch_sharding(self._mesh, 1)),
        )


# ----------------------------------------------------------------------------- sentences -> bucketed batches


def load_tokenized(model, corpus: Any, *, add_bos: bool | None = True, progress: bool = True):
    """Tokenize `corpus` (a Corpus or mapping language -> source) with the model's tokenizer, checking the ids fit."""
    if model.tokenizer is None:
        raise SAEError(f"{model.name} has no tokenizer; SAE training needs one to tokenize the corpus")
    tok = tokenize_corpus(corpus, model.tokenizer, add_bos=add_bos, progress=progress)
    check_ids_fit(tok, model)
    return tok


def sentence_rows(tokenized, *, max_len: int, max_per_language: int | None = None) -> TokenRows:
    """One row per document of a `TokenizedCorpus` (BOS included when it was added), cut at `max_len` tokens.

    Returns `jlang.models.scoring.TokenRows` (`group` = language index); `score` marks the real tokens.
    """
    tokens, groups = [], []
    for k, lang in enumerate(tokenized.languages):
        t = tokenized.data[lang]
        n = t.n_docs if max_per_language is None else min(t.n_docs, max_per_language)
        for d in range(n):
            tokens.append(t.ids[t.offsets[d] : t.offsets[d + 1]][:max_len])
            groups.append(k)
    if not tokens:
        raise SAEError("no sentences to run")
    return rows_from_token_lists(tokens, [0] * len(tokens), groups, pad_id=tokenized.pad_id)


def iterate_rows(model, rows: TokenRows, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(row indices, padded host batch) over `rows` sorted by length, widths bucketed to powers of two >= 16.

    Batches keep `batch_size` rows (padding rows are all-invalid, index -1) so a handful of shapes compile.
    A batch holds `ids`, `valid` `[batch, width]` and `lang` `[batch]` (the rows' groups), ready for
    `jlang.parallel.batch_loop.place_rows`.
    """
    batch = parallel.pad_batch_to(batch_size, model.mesh)
    for idx, width in plan_batches(rows.lengths, batch, rows.ids.shape[1]):
        ids = np.zeros((batch, width), np.int32)
        valid = np.zeros((batch, width), bool)
        lang = np.zeros(batch, np.int32)
        ids[: len(idx)] = rows.ids[idx, :width]
        valid[: len(idx)] = rows.attend[idx, :width]
        lang[: len(idx)] = rows.group[idx]
        full = np.full(batch, -1, np.int64)
        full[: len(idx)] = idx
        yield full, {"ids": ids, "valid": valid, "lang": lang}
