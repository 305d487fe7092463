"""Alignment fine-tuning: supervised training on (prompt, response) pairs, all weights or only chosen neurons.

`finetune(cfg)` trains a model on multilingual translation or instruction pairs
(`jlang.train.data`) with an optax optimizer, the loss being the mean negative
log-likelihood of the **response tokens** of the global batch (`jlang.train.step`).
Two modes:

* `trainable: all` — every parameter except those listed in `freeze` (e.g.
  `[embed]`: the 262k x 640 embedding is 62% of the default model, and Adam keeps
  two float32 moments per trained weight);
* `trainable: neurons` — PLND's "neuron enhancement" (Zhao et al. 2024,
  methods.md §2.2): only the weights of the language-specific neurons of
  `mask_languages` (a `NeuronMasks` file, e.g. LAPE's) change; every other weight
  stays bit-for-bit what it was (`jlang.train.step.neuron_update_masks`).

Checkpoints (orbax, `jlang.io.checkpoint.OrbaxRun`, in `{out}/train-checkpoint`
unless `train.checkpoint_dir` says otherwise) hold the trained parameters, the
optimizer state, the grain iterator state of every process and a JSON record
(the run's fingerprint, the step, the loss history). They are written every
`train.checkpoint_every` steps and when SIGTERM/SIGINT arrives (the run then
stops with `RunInterrupted`, exit code 128 + signal). `resume=True` restores all
of it and continues: the final parameters equal an uninterrupted run's bit for
bit. Frozen parameters are not checkpointed; they are reloaded from the model
source, whose identity is part of the fingerprint.

Outputs under `out`: `checkpoint/` (a jlang checkpoint: `jlang.load_model`),
`hf/` (with `export_hf: true`), and `loss.json` + `loss.png`, `config.yaml`,
`summary.md` (`jlang.train.report`). Multi-process runs (`jlang.parallel.distributed`)
shard the batch rows by process and write every output once, from process 0.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from tqdm.auto import tqdm

from jlang import config as config_lib
from jlang import parallel
from jlang.config import ConfigError
from jlang.data.corpora.gettext import ensure_default_corpus
from jlang.data.sources import CorpusError
from jlang.io.checkpoint import (
    OrbaxRun,
    RunInterrupted,
    array_digest,
    check_fingerprint,
    flatten,
    stale_checkpoint,
    stop_requested,
)
from jlang.masks import NeuronMasks
from jlang.models.export import save_hf
from jlang.models.model import Model, decoder_from_params, load_model
from jlang.parallel import distributed
from jlang.parallel.batch_loop import pipelined
from jlang.train import data as data_lib
from jlang.train.config import (
    DataSection,
    FinetuneConfig,
    TrainSection,
    load_finetune_config,
    validate_config,
)
from jlang.train.memory import peak_rss_gb, release_freed_memory
from jlang.train.report import write_outputs
from jlang.train.step import (
    count_trained,
    make_optimizer,
    neuron_update_masks,
    response_nll,
    train_step,
    trainable_names,
)

# The module's public names before the run was split into config / step / report modules: importable
# from here as before (`from jlang.train.sft import FinetuneConfig`).
__all__ = [
    "DataSection",
    "FinetuneConfig",
    "TrainSection",
    "finetune",
    "load_finetune_config",
    "neuron_update_masks",
    "validate_config",
]

FORMAT = "jlang.finetune-checkpoint/1"
# Fingerprint entries that may change between launches (paths, outputs); everything that shapes the training may not.
INFORMATIVE = frozenset({"out", "export_hf", "masks", "model.source", "train.checkpoint_every", "train.checkpoint_dir"})
# What a checkpoint's record holds besides the fingerprint (the progress of the run).
PROGRESS = frozenset({"step", "history", "eval_before"})


# ----------------------------------------------------------------------------- data


def load_pairs(d: DataSection, seed: int):
    """(train, eval) pairs per language for `d` (`jlang.train.data`)."""
    if d.source == "default":
        path = ensure_default_corpus() / "parallel" / f"{d.split}.jsonl"
    else:
        path = Path(d.source)
        if path.is_dir():
            path = path / "parallel" / f"{d.split}.jsonl"
    if not path.is_file():
        raise CorpusError(
            f"{path}: no such file; data.source is 'default', a corpus directory with parallel/{{split}}.jsonl, or a "
            ".jsonl file (the packaged corpus's only parallel split is 'heldout')"
        )
    rows = data_lib.read_jsonl(path)
    common = {
        "pairs_per_language": d.pairs_per_language,
        "eval_pairs_per_language": d.eval_pairs_per_language,
        "seed": seed,
        "where": str(path),
    }
    if all(isinstance(r.get("text"), dict) for r in rows):
        texts = [r["text"] for r in rows]
        return data_lib.translation_pairs(
            texts, d.languages, source_language=d.source_language, template=d.template, **common
        )
    if all("prompt" in r and "response" in r for r in rows):
        return data_lib.instruction_pairs(rows, d.languages, **common)
    raise CorpusError(
        f'{path}: rows must all be parallel rows {{"text": {{lang: sentence}}}} or all pairs '
        '{"lang", "prompt", "response"}'
    )


# ----------------------------------------------------------------------------- checkpoints


class FinetuneCheckpoints(OrbaxRun):
    """The orbax checkpoints of one fine-tuning run: params, optimizer state, this process's iterator, the record."""

    def save(self, step: int, params, opt_state, iterator, record: Mapping) -> None:
        self.save_items(
            step,
            record,
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            iterator=grain.checkpoint.CheckpointSave(iterator),
        )

    def restore(self, step: int, params, opt_state, iterator):
        """(params, opt_state) of checkpoint `step`, shaped and sharded like the abstract templates
        (`jax.ShapeDtypeStruct` trees, see `abstract`); `iterator` is set in place."""
        got = self.restore_items(
            step,
            params=ocp.args.StandardRestore(params),
            opt_state=ocp.args.StandardRestore(opt_state),
            iterator=grain.checkpoint.CheckpointRestore(iterator),
        )
        return got["params"], got["opt_state"]


def run_fingerprint(cfg: FinetuneConfig, model, rows_digest: str, masks_digest: str | None, shards: int) -> dict:
    """What makes two fine-tuning runs the same run (a checkpoint of another run is refused)."""
    flat = flatten(json.loads(json.dumps(config_lib.to_dict(cfg))))
    settings = {f"config.{k}": v for k, v in flat.items() if k not in INFORMATIVE}
    return {
        "format": FORMAT,
        **settings,
        "model": model.name,
        "source": model.source,
        "family": model.family,
        "dtype": model.dtype,
        "layers": int(model.num_layers),
        "neurons": int(model.num_neurons),
        "data_digest": rows_digest,
        "masks_digest": masks_digest,
        "data_shards": int(shards),
        "processes": int(jax.process_count()),  # one grain iterator state per process in a checkpoint
    }


def abstract(tree):
    """`jax.ShapeDtypeStruct`s (with shardings) of a tree of arrays: what orbax restores into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


# ----------------------------------------------------------------------------- before the first step


@dataclasses.dataclass
class _Run:
    """What a run has built before its first step (`_prepare`, `_training_state`)."""

    cfg: FinetuneConfig
    model: Any  # jlang.Model, placing batch rows as this process's share
    mesh: Any
    shard: int
    shards: int
    rows: Any  # PairRows
    eval_rows: Any  # PairRows | None
    names: list[str]  # trained parameters
    update_masks: dict[str, np.ndarray]  # "neurons": where updates land
    fingerprint: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _State:
    """The training state of `_training_state`: what the loop steps, and how."""

    trainable: dict  # the trained parameters (donated to every step)
    frozen: dict  # the other parameters
    opt_state: Any
    masks: dict  # placed update masks
    step: Callable  # jitted `train_step`
    schedule: Callable  # step -> learning rate


def _check_outputs(cfg: FinetuneConfig, store: FinetuneCheckpoints, resume: bool) -> int | None:
    """The newest checkpoint's step; refuse a half-done run without `resume`, and a finished one."""
    latest = store.latest_step()
    if latest is not None and not resume:
        raise stale_checkpoint(store.directory, latest, unit="steps")
    final = Path(cfg.out) / "checkpoint"
    if final.exists() and latest is None:
        raise FileExistsError(f"{final} exists: this run has finished; choose another out, or delete {cfg.out}")
    return latest


def _check_batch_size(cfg: FinetuneConfig, mesh, shards: int) -> None:
    data_axis = mesh.shape["data"] if mesh is not None else 1
    if cfg.train.batch_size % data_axis or cfg.train.batch_size % shards:
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size} must be a multiple of the mesh's data axis ({data_axis}) "
            f"and of the {shards} data shard(s)"
        )


def _prepare(cfg: FinetuneConfig, *, show: bool) -> _Run:
    """Read masks and pairs (failing on bad input before the model loads), load the model, tokenize."""
    masks = NeuronMasks.load(cfg.masks) if cfg.trainable == "neurons" else None
    for lang in cfg.mask_languages if masks is not None else ():
        masks.index(lang)  # UnknownLanguageError names the mask's languages
    train_pairs, eval_pairs = load_pairs(cfg.data, cfg.train.seed)

    mesh = distributed.default_mesh(cfg.mesh.data, cfg.mesh.model)
    shard, shards = distributed.data_shard(mesh)
    _check_batch_size(cfg, mesh, shards)
    model = distributed.for_processes(load_model(cfg.model.source, dtype=cfg.model.dtype, mesh=mesh, progress=show))
    mcfg = model.config
    tokenize = functools.partial(
        data_lib.pair_rows,
        tokenizer=model.tokenizer,
        seq_len=cfg.data.seq_len,
        add_bos=cfg.data.add_bos,
        add_eos=cfg.data.add_eos,
        vocab_size=mcfg.vocab_size,
    )
    rows = tokenize(train_pairs)
    eval_rows = tokenize(eval_pairs) if cfg.data.eval_pairs_per_language else None
    update_masks = {}
    if masks is not None:
        update_masks = neuron_update_masks(
            masks, cfg.mask_languages, mcfg.num_layers, mcfg.d_ff, model=model.name, family=model.family
        )
    run = _Run(cfg, model, mesh, shard, shards, rows, eval_rows, trainable_names(cfg, mcfg.param_names()), update_masks)
    masks_digest = array_digest(update_masks["layers.down"]) if update_masks else None
    run.fingerprint = run_fingerprint(cfg, model, rows.digest(), masks_digest, shards)
    return run


def _training_state(run: _Run) -> _State:
    """The trained and frozen parameters, optimizer state, placed update masks and jitted step, on the mesh."""
    params = run.model.params
    trainable = {k: params[k] for k in run.names}
    frozen = {k: v for k, v in params.items() if k not in trainable}
    mesh = run.mesh
    masks = {k: _replicate(jnp.asarray(v), mesh) for k, v in run.update_masks.items()}
    optimizer, schedule = make_optimizer(run.cfg.train)
    if mesh is not None:
        opt_state = optimizer.init(trainable)  # moments take their parameter's sharding
        # scalars (step counts) replicated on the mesh, like every non-parameter
        opt_state = jax.tree.map(lambda x: x if _on_mesh(x, mesh) else _replicate(x, mesh), opt_state)
    else:  # jit: committed to the parameters' device, as restored checkpoints are (one compiled step for both)
        opt_state = jax.jit(optimizer.init)(trainable)
        masks = jax.device_put(masks, next(iter(trainable.values())).sharding)
    shardings = None
    if mesh is not None:  # the step keeps every array where it was: no resharding between steps
        shardings = (
            jax.tree.map(lambda x: x.sharding, trainable),
            jax.tree.map(lambda x: x.sharding, opt_state),
            parallel.replicated(mesh),
        )
    step = jax.jit(
        functools.partial(train_step, cfg=run.model.config, optimizer=optimizer, vocab_chunk=run.cfg.train.vocab_chunk),
        donate_argnums=(0, 1),  # parameters and moments are updated in place
        out_shardings=shardings,
    )
    return _State(trainable, frozen, opt_state, masks, step, schedule)


def _restore(state: _State, store: FinetuneCheckpoints, step: int, iterator) -> None:
    """Replace `state`'s trained parameters and moments with checkpoint `step`'s; set `iterator` in place."""
    templates = abstract(state.trainable), abstract(state.opt_state)
    fresh = state.trainable
    state.trainable = state.opt_state = None  # the fresh moments go now, before the saved ones arrive
    state.trainable, state.opt_state = store.restore(step, *templates, iterator)
    for v in fresh.values():  # the model's copies of the trained weights, as donation frees them otherwise
        v.delete()


def _evaluator(run: _Run, frozen: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], float] | None:
    """`evaluate(trainable) -> mean response NLL` over the held-out pairs, or None without them."""
    if run.eval_rows is None:
        return None
    nll_fn = jax.jit(
        functools.partial(response_nll, cfg=run.model.config, vocab_chunk=run.cfg.train.vocab_chunk),
        out_shardings=parallel.replicated(run.mesh) if run.mesh is not None else None,  # each process reads its copy
    )
    batches = data_lib.eval_batches(
        run.eval_rows, batch_size=run.cfg.train.batch_size, shard=run.shard, shards=run.shards
    )

    def evaluate(trainable) -> float:
        params = {**frozen, **trainable}
        totals = {"nll": 0.0, "count": 0.0}

        def fold(i, batch, result):
            totals["nll"] += _host_scalar(result[0])
            totals["count"] += _host_scalar(result[1])

        pipelined(batches, lambda b: nll_fn(params, _place(run.model, b)), fold)
        return totals["nll"] / max(totals["count"], 1.0)

    return evaluate


# ----------------------------------------------------------------------------- the loop


def _train_loop(
    run: _Run,
    state: _State,
    store: FinetuneCheckpoints,
    iterator,
    start: int,
    history: list,
    extra: dict,
    *,
    show: bool,
):
    """Steps `start + 1 .. steps`: checkpoints every `checkpoint_every` steps, at the end, and on a signal.

    Returns the trained parameters (the optimizer state is dropped: its memory is free for the outputs);
    raises `RunInterrupted` after saving on a signal. `extra` goes into every checkpoint's record.
    """
    trainable, opt_state = state.trainable, state.opt_state
    state.trainable = state.opt_state = None  # the steps consume (donate) them
    total, every = run.cfg.train.steps, run.cfg.train.checkpoint_every
    with stop_requested() as flag:
        if show:  # printed once the signal handler is in place: a SIGTERM from now on checkpoints first
            n = count_trained(trainable, run.update_masks)
            print(
                f"fine-tuning {run.model.name} ({run.cfg.trainable}): {n:,} trained parameters, steps "
                f"{start}..{total}, {len(run.rows)} rows of {run.rows.seq_len} tokens",
                flush=True,
            )
        bar = tqdm(total=total, initial=start, desc="fine-tuning", unit="step", disable=not show)
        try:
            for step in range(start + 1, total + 1):
                batch = next(iterator)
                trainable, opt_state, metrics = state.step(
                    trainable, opt_state, state.frozen, _place(run.model, batch), state.masks
                )
                history.append(_history_entry(step, metrics, state.schedule))
                bar.update()
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
                stop = distributed.any_process(flag.is_set())  # every process stops at the same step
                if stop or (every and step % every == 0) or step == total:
                    record = {**run.fingerprint, **extra, "step": step, "history": history}
                    store.save(step, trainable, opt_state, iterator, record)
                if stop and step < total:
                    raise RunInterrupted(flag.signum or signal.SIGTERM, step, total, str(store.directory))
                release_freed_memory()  # the step's temporaries (and a save's host copies) are free now
        finally:
            bar.close()
    return trainable


def _history_entry(step: int, metrics: Mapping[str, Any], schedule: Callable) -> dict:
    return {
        "step": step,
        "loss": _host_scalar(metrics["loss"]),
        "tokens": int(_host_scalar(metrics["tokens"])),
        "grad_norm": _host_scalar(metrics["grad_norm"]),
        "lr": float(schedule(step - 1)),
    }


# ----------------------------------------------------------------------------- outputs


def _save_model(run: _Run, params: dict) -> Path:
    """The final jlang checkpoint `{out}/checkpoint` (collective) and, with `export_hf`, `{out}/hf`."""
    cfg, model, out = run.cfg, run.model, Path(run.cfg.out)
    final = out / "checkpoint"
    tuned = Model(
        decoder_from_params(model.config, params),
        model.tokenizer,
        name=f"{model.name}-finetuned",
        source=str(final),
        mesh=run.mesh,
        hf_config=model.hf_config,
    )
    if final.exists() and distributed.is_primary():  # a resumed run that had saved it already: write it again
        shutil.rmtree(final)
    distributed.barrier("jlang-finetune-final-cleared")
    tuned.save(final)  # collective on several processes
    if cfg.export_hf:
        save_hf(tuned, out / "hf")
    return final


def _result(run: _Run, params: dict, history: list, evals: dict | None, timings: dict) -> dict:
    """`loss.json`: what trained, on what, the loss of every step, held-out loss, timings, peak memory."""
    cfg, rows = run.cfg, run.rows
    mode = cfg.trainable + (f" ({', '.join(cfg.mask_languages)})" if cfg.trainable == "neurons" else "")
    return {
        "model": run.model.name,
        "source": str(cfg.model.source),
        "trainable": mode,
        "trainable_names": ", ".join(run.names),
        "trainable_params": count_trained({k: params[k] for k in run.names}, run.update_masks),
        "languages": list(rows.languages),
        "train_rows": len(rows),
        "skipped_rows": rows.skipped,
        "loss_tokens": rows.loss_tokens(),
        "steps": cfg.train.steps,
        "batch_size": cfg.train.batch_size,
        "seq_len": cfg.data.seq_len,
        "history": history,
        "eval": evals,
        "timings": timings,
        "peak_rss_gb": peak_rss_gb(),
        "processes": jax.process_count(),
    }


# ----------------------------------------------------------------------------- the run


def finetune(cfg: FinetuneConfig, *, progress: bool = True, resume: bool = False) -> Path:
    """Fine-tune `cfg.model` on `cfg.data`; return the directory of the final jlang checkpoint (`{out}/checkpoint`).

    Args:
      cfg: the run (`load_finetune_config`); validated again here.
      progress: a progress bar with the loss, and a start line (process 0).
      resume: continue from the newest checkpoint in the checkpoint directory (its fingerprint must
        match); without it, an existing checkpoint is an error (a half-done run is never clobbered).
    Raises:
      jlang.io.checkpoint.RunInterrupted: SIGTERM/SIGINT arrived; a checkpoint was saved first.
      jlang.io.checkpoint.ResumeError, ConfigError, MaskError, CorpusError, FileExistsError: bad input,
        before training starts.
    """
    validate_config(cfg)
    t0 = time.perf_counter()
    show = progress and distributed.is_primary()
    ckpt_dir = Path(cfg.train.checkpoint_dir) if cfg.train.checkpoint_dir else Path(cfg.out) / "train-checkpoint"
    store = FinetuneCheckpoints(ckpt_dir)
    timings: dict[str, float] = {}
    try:
        latest = _check_outputs(cfg, store, resume)
        t = time.perf_counter()
        run = _prepare(cfg, show=show)
        timings["load model and data"] = time.perf_counter() - t
        state = _training_state(run)
        dataset = data_lib.batch_dataset(
            run.rows, batch_size=cfg.train.batch_size, seed=cfg.train.seed, shard=run.shard, shards=run.shards
        )
        iterator = data_lib.iterator(dataset)
        start, history, eval_before = 0, [], None
        if resume and latest is None and show:
            print(f"no checkpoint in {ckpt_dir}; starting from the first step", flush=True)
        if latest is not None:
            saved = store.read_record(latest)
            check_fingerprint(saved, run.fingerprint, str(ckpt_dir), informative=PROGRESS)
            _restore(state, store, latest, iterator)
            start, history, eval_before = latest, list(saved["history"]), saved.get("eval_before")
            if show:
                print(f"resuming from {ckpt_dir} at step {start}", flush=True)
        evaluate = _evaluator(run, state.frozen)
        if evaluate is not None and eval_before is None:
            t = time.perf_counter()
            eval_before = evaluate(state.trainable)
            timings["held-out loss before"] = time.perf_counter() - t
        t = time.perf_counter()
        extra = {"eval_before": eval_before}
        trainable = _train_loop(run, state, store, iterator, start, history, extra, show=show)
        if cfg.train.steps > start:
            timings["training"] = time.perf_counter() - t
    finally:
        store.close()
    evals = None
    if evaluate is not None:
        t = time.perf_counter()
        evals = {"before": eval_before, "after": evaluate(trainable)}
        timings["held-out loss after"] = time.perf_counter() - t
    params = {**state.frozen, **trainable}
    t = time.perf_counter()
    final = _save_model(run, params)
    timings["save"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    if distributed.is_primary():
        write_outputs(Path(cfg.out), _result(run, params, history, evals, timings), cfg)
    store.remove()  # last: a run killed before this resumes from its final checkpoint and writes again
    return final


# ----------------------------------------------------------------------------- arrays


def _place(model, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """A batch's `ids`, `attend` and `loss` rows on the model's devices (this process's share)."""
    return {k: model.place_batch(batch[k]) for k in ("ids", "attend", "loss")}


def _host_scalar(x) -> float:
    """A replicated scalar as a Python float (reads this process's copy: no collective)."""
    return float(np.asarray(x.addressable_data(0) if hasattr(x, "addressable_data") else x))


def _on_mesh(x, mesh) -> bool:
    return isinstance(getattr(x, "sharding", None), NamedSharding) and x.sharding.mesh == mesh


def _replicate(x, mesh):
    """`x` replicated on every device of `mesh` (as is, without a mesh)."""
    if mesh is None:
        return x
    if jax.process_count() > 1:
        return jax.make_array_from_process_local_data(parallel.replicated(mesh), np.asarray(x))
    return jax.device_put(x, parallel.replicated(mesh))
