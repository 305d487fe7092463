"""A statistics pass that survives being killed: orbax checkpoints of the exact totals and the grain iterator.

A LAPE pass over 100M tokens per language on a 70B model takes hours, and
preemptible TPUs and shared GPU queues end jobs with SIGTERM. This wrapper
around `jlang.stats.collect.run_stats` saves, every `every` batches and when SIGTERM
or SIGINT arrives, one orbax checkpoint (`ocp.CheckpointManager`) holding:

    accumulators  the host `Accumulator` state: int64 counts, float64 sums, float32 max
    iterator      this process's grain iterator state (one JSON file per process)
    run           the run's fingerprint (model, corpus digest, batch_size, seq_len, mode, ...)
                  and the number of batches folded

A resumed run restores all three and continues with the next batch: no token
is counted twice or skipped, and since the host folds batch results in the same
order, the totals are bit-for-bit those of an uninterrupted run. A checkpoint
of a different run (another model, corpus, batch size, ...) is refused, naming
what differs.

Order matters in two places. `run_stats` dispatches batch i+1 before folding
batch i, so the iterator has moved one batch past the accumulators when the
checkpoint hook runs: the iterator state saved is the one recorded right after
batch i was drawn. And on a signal, the handler only sets a flag; the loop
checkpoints at the next batch boundary (all processes agree on the boundary)
and raises `RunInterrupted`, whose `exit_code` is 128 + the signal number.
Orbax writes a checkpoint under a temporary name and commits it by renaming, so
a run killed mid-save resumes from the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from jlang.io import checkpoint
from jlang.io.checkpoint import (
    IteratorSnapshot,
    OrbaxRun,
    ResumeError,
    RunInterrupted,
    stale_checkpoint,
    stop_requested,
)
from jlang.parallel import distributed

__all__ = [
    "CheckpointStore",
    "OrbaxRun",
    "ResumeError",
    "RunInterrupted",
    "check_fingerprint",
    "collect_stats_resumable",
    "finish",
    "run_fingerprint",
    "run_stats_resumable",
    "stop_requested",
]

FORMAT = "jlang.stats-checkpoint/1"
# Fingerprint entries that describe the run but may legitimately change on resume (paths move).
INFORMATIVE = frozenset({"corpus", "model_source", "mesh", "batches_done"})


def check_fingerprint(saved: Mapping, current: Mapping, where: str) -> None:
    """Raise `ResumeError` unless checkpoint `saved` is of this statistics run (paths may move)."""
    checkpoint.check_fingerprint(saved, current, where, informative=INFORMATIVE)


class CheckpointStore(OrbaxRun):
    """The orbax `CheckpointManager` of one statistics run (created lazily: nothing is written before a save).

    Every process must make the same calls (orbax saves collectively); the directory must be
    shared by all processes (a network file system or `gs://`).
    """

    def save(self, step: int, accumulators: Mapping[str, np.ndarray], iterator_state: dict, record: Mapping) -> None:
        """Checkpoint `step` batches: copies of the accumulators, this process's iterator state, the record."""
        import orbax.checkpoint as ocp

        self.save_items(
            step,
            {**record, "batches_done": int(step)},
            accumulators=ocp.args.StandardSave({k: np.array(v, copy=True) for k, v in accumulators.items()}),
            iterator=grain.checkpoint.CheckpointSave(IteratorSnapshot(iterator_state)),
        )

    def restore(self, step: int, template: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
        """(accumulators shaped like `template`, this process's iterator state) of checkpoint `step`."""
        import orbax.checkpoint as ocp

        got = self.restore_items(
            step,
            accumulators=ocp.args.StandardRestore(dict(template)),
            iterator=grain.checkpoint.CheckpointRestore(IteratorSnapshot()),
        )
        state = {k: np.asarray(v) for k, v in dict(got["accumulators"]).items()}
        for k, v in template.items():
            if state[k].shape != np.shape(v) or state[k].dtype != np.asarray(v).dtype:
                raise ResumeError(
                    f"checkpoint {self.directory}/{step}: {k} is {state[k].dtype}{state[k].shape}, "
                    f"expected {np.asarray(v).dtype}{np.shape(v)}"
                )
        return state, got["iterator"].get_state()


# ----------------------------------------------------------------------------- fingerprints


def corpus_digest(tok) -> str:
    """A BLAKE2b digest of a `TokenizedCorpus`: languages, ids, document offsets and counted spans.

    Two runs with the same digest feed the same tokens; it catches an edited corpus file,
    another tokenizer, or a changed BOS setting, wherever the files live.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(tok.languages), tok.pad_id, tok.add_bos, tok.add_eos)).encode())
    for lang in tok.languages:
        t = tok.data[lang]
        for arr in (t.ids, t.offsets, t.counted_from):
            a = np.ascontiguousarray(arr)
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def run_fingerprint(
    model, batches, *, corpus: Any = None, digest: str | None = None, max_tokens: int | None = None, seed: int = 0
) -> dict:
    """What makes two statistics runs the same run: resuming one with the other's checkpoint is refused."""
    import jax

    from jlang.stats.collect import _describe

    mesh = getattr(model, "mesh", None)
    return {
        "format": FORMAT,
        "model": model.name,
        "model_source": str(model.source),
        "family": model.family,
        "dtype": model.dtype,
        "layers": int(model.num_layers),
        "neurons": int(model.num_neurons),
        "languages": list(batches.languages),
        "corpus": _describe(corpus) if corpus is not None else None,
        "corpus_digest": digest,
        "batch_size": int(batches.batch_size),
        "seq_len": int(batches.seq_len),
        "mode": batches.mode,
        "max_tokens": max_tokens,
        "seed": int(seed),
        "process_count": int(batches.process_count),  # batch shards
        "processes": int(jax.process_count()),  # one grain iterator state per process in the checkpoint
        "num_batches": len(batches),
        "mesh": dict(mesh.shape) if mesh is not None else None,
    }


# ----------------------------------------------------------------------------- the pass


def run_stats_resumable(
    model,
    batches,
    *,
    checkpoint_dir: str | os.PathLike,
    every: int = 100,
    resume: bool = False,
    fingerprint: Mapping | None = None,
    progress: bool = True,
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
):
    """`run_stats` over a `jlang.data.pipeline.Batches`, checkpointed every `every` batches and on `signals`.

    Args:
      model: a `jlang.Model` (on a mesh over all processes when there are several).
      batches: this process's `Batches` (its iterator state is what gets checkpointed).
      checkpoint_dir: where orbax keeps the checkpoints (shared by all processes).
      every: checkpoint after every `every` batches (0: only on a signal).
      resume: continue from the newest checkpoint if there is one (its fingerprint must match);
        without `resume`, an existing checkpoint is an error.
      fingerprint: the run's identity (`run_fingerprint`); compared on resume.
    Returns:
      the `Accumulator` with the exact totals over all batches.
    Raises:
      RunInterrupted: a signal arrived; a checkpoint was saved first.
      ResumeError: the checkpoint belongs to another run, or exists without `resume`.
    """
    from jlang.stats.collect import Accumulator, run_stats

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

            def on_batch(j: int, acc) -> None:
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


def collect_stats_resumable(
    model,
    corpus: Any,
    *,
    batch_size: int,
    seq_len: int,
    checkpoint_dir: str | os.PathLike,
    checkpoint_every: int = 100,
    resume: bool = False,
    mode: str = "pack",
    max_tokens: int | None = None,
    add_bos: bool | None = None,
    seed: int = 0,
    progress: bool = True,
):
    """`jlang.stats.collect.collect_stats`, resumable; multi-process aware (see `jlang.parallel.distributed`).

    Tokenizes the corpus, checks every token id fits the model's vocabulary (a tokenizer that
    does not belong to the model fails here, before the pass), then runs
    `run_stats_resumable`. Every process returns the same `ActivationStats`; `finish`
    writes it once.
    """
    import jax

    from jlang.data.pipeline import make_batches, tokenize_corpus
    from jlang.stats import ActivationStats
    from jlang.stats.collect import HOOK_POINT, _describe

    if model.tokenizer is None:
        raise ValueError(f"{model.name} has no tokenizer; collect_stats needs one to tokenize the corpus")
    show = progress and distributed.is_primary()
    tok = tokenize_corpus(corpus, model.tokenizer, add_bos=add_bos, progress=show)
    check_ids_fit(tok, model)
    shard, shards = distributed.data_shard(model.mesh)
    batches = make_batches(
        tok,
        batch_size=batch_size,
        seq_len=seq_len,
        mode=mode,
        max_tokens=max_tokens,
        seed=seed,
        process_index=shard,
        process_count=shards,
    )
    fingerprint = run_fingerprint(
        model, batches, corpus=corpus, digest=corpus_digest(tok), max_tokens=max_tokens, seed=seed
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
            "processes": jax.process_count(),
            "batch_shards": batches.process_count,
        },
    )


def check_ids_fit(tok, model) -> None:
    """Every token id (and the padding id) must index the model's embedding: else the tokenizer is another model's."""
    vocab = int(model.config.vocab_size)
    for lang in tok.languages:
        ids = tok.data[lang].ids
        top = int(ids.max()) if ids.size else -1
        if top >= vocab:
            raise ValueError(
                f"language {lang!r} tokenizes to id {top}, but model {model.name} has a vocabulary of {vocab}: the "
                f"tokenizer ({len(model.tokenizer)} tokens) does not belong to this model; use the model's own tokenizer"
            )
    if not 0 <= tok.pad_id < vocab:
        raise ValueError(f"padding id {tok.pad_id} is outside model {model.name}'s vocabulary of {vocab}")


def finish(stats, out: str | os.PathLike, checkpoint_dir: str | os.PathLike | None) -> Path | None:
    """Write `stats` atomically on process 0, then delete the checkpoints. Returns the path on process 0.

    In this order, a run killed between the two steps leaves complete statistics and a
    checkpoint at the last batch, from which `--resume` just writes them again.
    """
    path = Path(out)
    written = None
    if distributed.is_primary():
        written = stats.save(path)
    distributed.barrier("jlang-stats-written")
    if checkpoint_dir is not None:
        CheckpointStore(checkpoint_dir).remove()
    return written
