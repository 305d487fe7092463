"""The statistics pass: per-language reductions at `mlp.act`, folded exactly on the host.

One jitted forward per batch (no unembedding) returns, for every layer, the
per-language count of `a > 0`, `Σa`, `Σa²`, `max a` and the number of valid
tokens; padding never counts. The device sums within one batch (int32 counts
are exact there: a batch has far fewer than 2^31 tokens); the host folds every
batch into int64 counts and float64 sums, so totals stay exact at any corpus
size. Batches are dispatched one ahead of the host fold (`jlang.parallel.batch_loop`),
so the device never waits for the host.

Given a checkpoint directory, the pass survives being killed (`run_stats_resumable`):
every `checkpoint_every` batches and when SIGTERM or SIGINT arrives it saves the
exact totals and the grain iterator (`jlang.stats.checkpoint`), and a resumed pass
ends with the counts of an uninterrupted one, bit for bit. Order matters in two
places. `run_stats` dispatches batch i+1 before folding batch i, so the iterator has
moved one batch past the accumulators when the checkpoint hook runs: the iterator
state saved is the one recorded right after batch i was drawn. And on a signal the
handler only sets a flag; the pass checkpoints at the next batch boundary (all
processes agree on it) and raises `RunInterrupted`, whose `exit_code` is 128 + the
signal number.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlang import parallel
from jlang.data.pipeline import Batches, TokenizedCorpus, make_batches, tokenize_corpus
from jlang.data.sources import describe_corpus
from jlang.io.atomic import output_path
from jlang.io.checkpoint import RunInterrupted, stale_checkpoint, stop_requested
from jlang.models.decoder import forward
from jlang.models.model import Model
from jlang.parallel import distributed
from jlang.parallel.batch_loop import Throughput, pipelined, place_rows
from jlang.stats.checkpoint import FORMAT, CheckpointStore, check_fingerprint, corpus_digest, run_fingerprint
from jlang.stats.container import ActivationStats

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

    def to_stats(self, languages: Sequence[str], meta: Mapping[str, Any]) -> ActivationStats:
        """The totals as `ActivationStats` of `languages` (in the order of the `lang` ids)."""
        return ActivationStats(
            languages=list(languages),
            tokens=self.tokens,
            over_zero=self.over_zero,
            sum=self.sum,
            sum_sq=self.sum_sq,
            max=self.max,
            meta=dict(meta),
        )


@functools.partial(jax.jit, static_argnames=("cfg", "num_languages"))
def jitted_stats_step(params, ids, positions, valid, lang, *, cfg, num_languages: int):
    """The statistics step, compiled once per (model config, number of languages, batch shape)."""

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
    return functools.partial(jitted_stats_step, cfg=model.config, num_languages=num_languages)


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


def run_stats_resumable(
    model: Model,
    batches: Batches,
    *,
    checkpoint_dir: str | os.PathLike,
    every: int = 100,
    resume: bool = False,
    fingerprint: Mapping | None = None,
    progress: bool = True,
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
) -> Accumulator:
    """`run_stats` over a `jlang.data.pipeline.Batches`, checkpointed every `every` batches and on `signals`.

    Args:
      model: a `jlang.Model` (on a mesh over all processes when there are several).
      batches: this process's `Batches` (its iterator state is what gets checkpointed).
      checkpoint_dir: where orbax keeps the checkpoints (shared by all processes).
      every: checkpoint after every `every` batches (0: only on a signal).
      resume: continue from the newest checkpoint if there is one (its fingerprint must match);
        without `resume`, an existing checkpoint is an error.
      fingerprint: the run's identity (`jlang.stats.checkpoint.run_fingerprint`); compared on resume.
    Returns:
      the `Accumulator` with the exact totals over all batches.
    Raises:
      RunInterrupted: a signal arrived; a checkpoint was saved first.
      ResumeError: the checkpoint belongs to another run, or exists without `resume`.
    """
    if every < 0:
        raise ValueError(f"checkpoint every must be >= 0 batches, got {every}")
    model = distributed.for_processes(model)
    acc = Accumulator(len(batches.languages), model.num_layers, model.num_neurons)
    total = len(batches)
    record = {"format": FORMAT, **(fingerprint or {}), "num_batches": total, "process_count": batches.process_count}
    store = CheckpointStore(checkpoint_dir)
    start, iterator_state = 0, None
    latest = store.latest_step()
    if latest is not None:
        if not resume:
            store.close()
            raise stale_checkpoint(store.directory, latest)
        check_fingerprint(store.read_record(latest), record, str(store.directory))
        state, iterator_state = store.restore(latest, acc.state())
        acc.load_state(state)
        start = latest
    iterator = batches.iterator(iterator_state)
    snapshots: dict[int, dict] = {}

    def drawn():
        """The batches, recording the iterator state right after each one is drawn."""
        for j, batch in enumerate(iterator):
            snapshots[j] = iterator.get_state()
            yield batch

    try:
        with stop_requested(signals) as flag:

            def on_batch(j: int, acc: Accumulator) -> None:
                done = start + j + 1
                snapshot = snapshots.pop(j)
                stop = distributed.any_process(flag.is_set())
                if stop or (every and done % every == 0 and done < total):
                    store.save(done, acc.state(), snapshot, record)
                if stop:
                    raise RunInterrupted(flag.signum or signal.SIGTERM, done, total, str(store.directory))

            run_stats(
                model,
                drawn(),
                len(batches.languages),
                total=total - start,
                accumulator=acc,
                progress=progress,
                on_batch=on_batch,
            )
    finally:
        with contextlib.suppress(Exception):
            iterator.close()
        store.close()
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
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
) -> ActivationStats:
    """Activation statistics per language at `mlp.act`; resumable when given a checkpoint directory.

    Args:
      model: a `jlang.Model`.
      corpus: maps language code -> source (a .txt/.jsonl path, a LAPE token-id
        file, a list of strings), a `jlang.data.Corpus`, or a `TokenizedCorpus` (two
        models then see the very same rows). Token-id files need no tokenizer; text
        does (the model's).
      batch_size, seq_len: rows per batch (per process) and tokens per row.
      mesh: run under this `(data, model)` mesh (parameters are resharded onto it); default:
        the model's, else one over all processes' devices when there are several
        (`jlang.parallel.distributed.default_mesh`).
      mode: "pack" (LAPE: concatenated windows, every token counts) or "pad"
        (one sentence per row, padding never counts; prompt/response pairs
        count the response only).
      max_tokens: per-language cap (LAPE uses 99,999,744).
      progress: progress bars (on process 0 only).
      checkpoint_dir: keep the pass's state there (shared by all processes) every
        `checkpoint_every` batches (0: only on SIGTERM/SIGINT), so a killed pass resumes
        (`resume=True`) and ends with exactly the counts of an uninterrupted one.
    Returns:
      `jlang.stats.ActivationStats` with int64 counts and float64 sums, the same on every process.
    Raises:
      RunInterrupted (with a checkpoint directory): a signal arrived; a checkpoint was saved first.
      ResumeError: the checkpoint belongs to another run, or exists without `resume`.
    """
    mesh = mesh or model.mesh or distributed.default_mesh()
    if mesh is not None:
        model = model.with_mesh(mesh)
    show = progress and distributed.is_primary()
    tokenized = (
        corpus
        if isinstance(corpus, TokenizedCorpus)
        else tokenize_corpus(corpus, model.tokenizer, add_bos=add_bos, progress=show)
    )
    check_ids_fit(tokenized, model)  # a tokenizer that does not belong to the model fails here, by name
    shard, shards = distributed.data_shard(model.mesh)
    batches = make_batches(
        tokenized,
        batch_size=batch_size,
        seq_len=seq_len,
        mode=mode,
        max_tokens=max_tokens,
        seed=seed,
        process_index=shard,
        process_count=shards,
        progress=show,
    )
    if checkpoint_dir is None:
        acc = run_stats(model, batches, len(batches.languages), total=len(batches), progress=show)
    else:
        fingerprint = run_fingerprint(
            model, batches, corpus=corpus, digest=corpus_digest(tokenized), max_tokens=max_tokens, seed=seed
        )
        acc = run_stats_resumable(
            model,
            batches,
            checkpoint_dir=checkpoint_dir,
            every=checkpoint_every,
            resume=resume,
            fingerprint=fingerprint,
            progress=show,
        )
    meta = {
        "model": model.name,
        "family": model.family,
        "source": model.source,
        "hook_point": HOOK_POINT,
        "mode": mode,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "max_tokens": max_tokens,
        "corpus": describe_corpus(corpus),
        "processes": jax.process_count(),
        "batch_shards": batches.process_count,
    }
    return acc.to_stats(batches.languages, meta)


def check_ids_fit(tok: TokenizedCorpus, model: Model) -> None:
    """Every token id (and the padding id) must index the model's embedding: else the tokens are another model's."""
    vocab = int(model.config.vocab_size)
    for lang in tok.languages:
        ids = tok.data[lang].ids
        top = int(ids.max()) if ids.size else -1
        if top >= vocab:
            made_by = (
                "the token-id file was made with another model's tokenizer"
                if tok.data[lang].from_ids_file
                else f"the tokenizer ({len(model.tokenizer)} tokens) does not belong to this model; use its own"
            )
            raise ValueError(
                f"language {lang!r} tokenizes to id {top}, but model {model.name} has a vocabulary of {vocab}: "
                + made_by
            )
    if not 0 <= tok.pad_id < vocab:
        raise ValueError(f"padding id {tok.pad_id} is outside model {model.name}'s vocabulary of {vocab}")


def finish(stats: ActivationStats, out: str | os.PathLike, checkpoint_dir: str | os.PathLike | None) -> Path | None:
    """Write `stats` atomically on process 0, then delete the checkpoints. Returns the path on process 0.

    In this order, a run killed between the two steps leaves complete statistics and a
    checkpoint at the last batch, from which `--resume` just writes them again.
    """
    path = output_path(out)
    written = None
    if distributed.is_primary():
        written = stats.save(path)
    distributed.barrier("jlang-stats-written")
    if checkpoint_dir is not None:
        CheckpointStore(checkpoint_dir).remove()
    return written
