"""Training an SAE on activations streamed from the model (`jlang.sae.stream`), resumable bit for bit.

One jitted call per model batch runs `reuse * tokens / sae_batch` optimizer steps
(optax Adam, `jax.lax.scan`) over random minibatches of that batch's tokens and
returns the metrics.

Under a `(data, model)` mesh the model is sharded as usual, the activations
and minibatches shard over `data` and the SAE's feature axis over `model`
(`W_enc [d, F]`, `W_dec [F, d]`, `b_enc [F]`).

Checkpoints (orbax, `jlang.io.checkpoint.OrbaxRun`) hold the whole train state
(params, Adam state, step, activation scale, tokens since each feature last
fired) and a JSON record (the run's fingerprint, the data position: epoch and
grain iterator state, and the metric history). They are taken at model-batch
boundaries, every `checkpoint_every` steps and on SIGTERM/SIGINT; a resumed
run restores all of it and, batch for batch, computes what the uninterrupted
run computes, so it ends with bit-identical params.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jlang import parallel
from jlang.io.checkpoint import (
    OrbaxRun,
    RunInterrupted,
    check_fingerprint,
    flatten,
    stale_checkpoint,
    stop_requested,
)
from jlang.io.report import write_json
from jlang.parallel import distributed
from jlang.sae.evaluation import evaluate
from jlang.sae.model import (
    SAE,
    Params,
    SAEConfig,
    SAEError,
    fold_scale,
    init_params,
    loss_and_metrics,
    normalize_decoder,
    remove_parallel_grad,
)
from jlang.sae.stream import ActivationStream, ArrayStream, load_tokenized, sentence_rows

# The stream and evaluation names were defined here before `jlang.sae.stream` and `jlang.sae.evaluation`
# existed; they stay importable from here.
__all__ = [
    "ActivationStream",
    "ArrayStream",
    "TrainConfig",
    "TrainResult",
    "dead_features",
    "evaluate",
    "load_tokenized",
    "save_history",
    "sentence_rows",
    "steps_per_batch",
    "train_sae",
]

Array = jax.Array
FORMAT = "jlang.sae-train-checkpoint/1"
METRICS = ("loss", "mse", "ev", "l0", "aux", "dead")  # history: means over `log_every` steps ("dead": the last)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one SAE run (the data settings live with the `ActivationStream`).

    Attributes:
      steps: optimizer steps (rounded up to whole model batches).
      sae_batch: tokens per optimizer step.
      reuse: optimizer passes over each model batch's tokens (each in a new random order);
        1 = every token is seen once. Trades fresh tokens for model forwards, which dominate on CPU.
      lr, warmup_steps: Adam learning rate, linear warm-up from 0; the last `1 - decay_from` of
        the steps decay linearly to 0.
      l1_coeff: "relu" SAEs: weight of the L1 penalty `sum_f a_f ||W_dec[f]||` (on normalised inputs).
      auxk_coeff, auxk_k: "topk" SAEs: weight and width of the AuxK loss that revives dead
        features (Gao et al. 2024); `auxk_k` None = d_in // 2.
      dead_window: a feature that has not fired in this many training tokens is dead.
      log_every: record the mean metrics of this many steps in the history.
      seed: parameter init and minibatch order.
    """

    steps: int = 1000
    sae_batch: int = 256
    reuse: int = 1
    lr: float = 4e-4
    warmup_steps: int = 50
    decay_from: float = 0.8
    l1_coeff: float = 2.0
    auxk_coeff: float = 1 / 32
    auxk_k: int | None = None
    dead_window: int = 50_000
    log_every: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [
            f"{n}={getattr(self, n)}"
            for n in ("steps", "sae_batch", "reuse", "dead_window", "log_every")
            if getattr(self, n) < 1
        ]
        if bad or self.lr <= 0 or self.warmup_steps < 0 or not 0 < self.decay_from <= 1:
            raise SAEError(
                f"bad TrainConfig: need positive steps/sae_batch/reuse/dead_window/log_every, lr > 0, "
                f"warmup_steps >= 0, 0 < decay_from <= 1; got {self}"
            )


# ----------------------------------------------------------------------------- the train state


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a step changes. `params` are in normalised units (inputs divided by `scale`)."""

    params: Params
    opt_state: Any
    step: Array  # int32 []
    scale: Array  # float32 []: activations are divided by it
    since_fired: Array  # int32 [F]: training tokens since each feature last fired (capped at dead_window)


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """Adam with linear warm-up, constant, then linear decay to 0 over the last `1 - decay_from` of the steps."""
    warm = min(cfg.warmup_steps, total_steps)
    decay_start = max(int(cfg.decay_from * total_steps), warm)
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, cfg.lr, max(warm, 1)),
            optax.constant_schedule(cfg.lr),
            optax.linear_schedule(cfg.lr, 0.0, max(total_steps - decay_start, 1)),
        ],
        [warm, decay_start],
    )
    return optax.adam(schedule)


def sae_shardings(mesh, sae_cfg: SAEConfig) -> dict[str, NamedSharding]:
    """Feature axis over `model` (when it divides), the input axis replicated."""
    f_axis = "model" if sae_cfg.num_features % mesh.shape["model"] == 0 else None
    return {
        "W_enc": NamedSharding(mesh, PartitionSpec(None, f_axis)),
        "b_enc": NamedSharding(mesh, PartitionSpec(f_axis)),
        "W_dec": NamedSharding(mesh, PartitionSpec(f_axis, None)),
        "b_dec": NamedSharding(mesh, PartitionSpec()),
        "since_fired": NamedSharding(mesh, PartitionSpec(f_axis)),
    }


def init_state(key: Array, sae_cfg: SAEConfig, tx, acts: Array, weight: Array, mesh=None) -> TrainState:
    """Fresh state: `scale` so that `E||x / scale||^2 = d_in` on the first batch, `b_dec` = its mean."""
    w = weight.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    scale = jnp.sqrt(jnp.sum(jnp.sum(jnp.square(acts), axis=-1) * w) / (n * sae_cfg.d_in))
    scale = jnp.where(scale > 0, scale, 1.0)
    mean = jnp.sum(acts * w[:, None], axis=0) / n / scale
    params = init_params(key, sae_cfg, b_dec=mean)
    since = jnp.zeros((sae_cfg.num_features,), jnp.int32)
    if mesh is not None:
        sh = sae_shardings(mesh, sae_cfg)
        params = {k: jax.device_put(v, sh[k]) for k, v in params.items()}
        since = jax.device_put(since, sh["since_fired"])
        scale = jax.device_put(scale, parallel.replicated(mesh))
    return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), scale.astype(jnp.float32), since)


def _with_shardings(template: TrainState, sae_cfg: SAEConfig, mesh) -> TrainState:
    """Attach the shardings a fresh state would have to an abstract state (orbax restores onto them)."""
    if mesh is None:
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), template)
    sh = sae_shardings(mesh, sae_cfg)
    rep = parallel.replicated(mesh)

    def put(a, sharding):
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)

    params = {k: put(v, sh[k]) for k, v in template.params.items()}

    def moment(path, a):  # Adam's moments are dicts keyed like the params: the same shardings
        key = getattr(path[-1], "key", None) if path else None
        return put(a, sh[key] if key in params else rep)

    opt_state = jax.tree_util.tree_map_with_path(moment, template.opt_state)
    return TrainState(
        params,
        opt_state,
        put(template.step, rep),
        put(template.scale, rep),
        put(template.since_fired, sh["since_fired"]),
    )


# ----------------------------------------------------------------------------- the steps of one model batch


def _train_chunk(
    state: TrainState,
    acts: Array,
    weight: Array,
    key: Array,
    *,
    sae_cfg: SAEConfig,
    cfg: TrainConfig,
    tx,
    steps: int,
    auxk_k: int,
) -> tuple[TrainState, dict[str, Array]]:
    """`steps` optimizer steps on minibatches of one model batch's tokens -> (state, metrics `[steps]` each)."""
    n = acts.shape[0]
    x = acts / state.scale
    order = jnp.concatenate([jax.random.permutation(jax.random.fold_in(key, r), n) for r in range(cfg.reuse)])
    order = order[: steps * cfg.sae_batch].reshape(steps, cfg.sae_batch)
    loss_fn = functools.partial(
        loss_and_metrics,
        cfg=sae_cfg,
        l1_coeff=cfg.l1_coeff if sae_cfg.kind == "relu" else 0.0,
        auxk_coeff=cfg.auxk_coeff if sae_cfg.kind == "topk" else 0.0,
        auxk_k=auxk_k,
    )

    def step(s: TrainState, idx: Array):
        xb, wb = x[idx], weight[idx]
        dead = s.since_fired >= cfg.dead_window
        (_, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(s.params, xb, wb, dead)
        grads = remove_parallel_grad(grads, s.params)
        updates, opt_state = tx.update(grads, s.opt_state, s.params)
        params = normalize_decoder(optax.apply_updates(s.params, updates))
        seen = jnp.sum(wb).astype(jnp.int32)
        since = jnp.where(m.pop("fired"), 0, jnp.minimum(s.since_fired + seen, cfg.dead_window))
        m["dead"] = jnp.sum(since >= cfg.dead_window).astype(jnp.float32)
        return TrainState(params, opt_state, s.step + 1, s.scale, since), m

    return jax.lax.scan(step, state, order)


@functools.lru_cache(maxsize=16)
def _chunk_fn(sae_cfg: SAEConfig, cfg: TrainConfig, total: int, per_batch: int) -> tuple[Any, Callable]:
    """(optimizer, jitted `_train_chunk`) of one run's settings; cached so that runs with the same settings
    (a resumed run, tests) reuse the compilation."""
    tx = make_optimizer(cfg, total)
    auxk_k = cfg.auxk_k if cfg.auxk_k is not None else max(sae_cfg.d_in // 2, 1)
    return tx, jax.jit(functools.partial(_train_chunk, sae_cfg=sae_cfg, cfg=cfg, tx=tx, steps=per_batch, auxk_k=auxk_k))


def steps_per_batch(tokens_per_batch: int, cfg: TrainConfig) -> int:
    """Optimizer steps per model batch: `reuse x tokens / sae_batch` (must be a whole number >= 1)."""
    total = cfg.reuse * tokens_per_batch
    if total % cfg.sae_batch or total < cfg.sae_batch:
        raise SAEError(
            f"reuse x tokens per model batch = {cfg.reuse} x {tokens_per_batch} is not a positive multiple of "
            f"sae_batch={cfg.sae_batch}; choose sae_batch dividing it (e.g. {tokens_per_batch // 4})"
        )
    return total // cfg.sae_batch


# ----------------------------------------------------------------------------- checkpoints


def _leaves(state: Any) -> dict[str, Any]:
    """A state as a flat dict of its leaves (`"00000"`, ...): orbax then needs no knowledge of optax's node types."""
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(state))}


class TrainCheckpoints(OrbaxRun):
    """orbax checkpoints of one SAE run: the train state (`StandardSave`) and a JSON record."""

    def save(self, step: int, state: TrainState, record: Mapping) -> None:
        self.save_items(step, record, state=ocp.args.StandardSave(_leaves(state)))

    def restore_state(self, step: int, template: TrainState) -> TrainState:
        """The state of checkpoint `step`, with the shapes, dtypes and shardings of `template`."""
        got = self.restore_items(step, state=ocp.args.StandardRestore(_leaves(template)))["state"]
        return jax.tree.unflatten(jax.tree.structure(template), [got[k] for k in sorted(got)])


def run_fingerprint(stream, sae_cfg: SAEConfig, cfg: TrainConfig) -> dict:
    """What makes two SAE runs the same run (resuming one from the other's checkpoint is refused)."""
    return {"format": FORMAT, "sae": sae_cfg.to_dict(), "train": dataclasses.asdict(cfg), "data": stream.fingerprint()}


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class TrainResult:
    """A finished (or stopped) run: the SAE in raw units, the metric history, dead features."""

    sae: SAE
    history: list[dict]
    since_fired: np.ndarray  # int [F]
    steps: int
    tokens: int  # fresh training tokens drawn (weight 1; a token reused counts once)
    seconds: float
    resumed_from: int | None = None
    finished: bool = True

    @property
    def dead(self) -> np.ndarray:
        """bool `[F]`: features that did not fire in the last `dead_window` training tokens."""
        return self.since_fired >= int(self.sae.meta["train"]["dead_window"])


@dataclasses.dataclass(frozen=True)
class _Plan:
    """One run's fixed settings, worked out before its first step."""

    sae_cfg: SAEConfig
    cfg: TrainConfig
    per_batch: int  # optimizer steps per model batch
    total: int  # optimizer steps, rounded up to whole model batches
    tx: Any  # the optax optimizer
    chunk: Callable  # jitted `_train_chunk`
    key: Array
    fingerprint: dict


@dataclasses.dataclass
class _Progress:
    """What a checkpoint records besides the state: the metric history, the steps since its last entry, tokens."""

    history: list[dict] = dataclasses.field(default_factory=list)
    window: list[dict] = dataclasses.field(default_factory=list)  # metrics of the steps since the last entry
    tokens: int = 0  # fresh training tokens drawn

    def add_batch(self, metrics: Mapping[str, np.ndarray], done: int, log_every: int) -> None:
        """Fold one model batch's metrics (`[per_batch]` each) of the steps after step `done`."""
        for i in range(len(metrics["loss"])):
            self.window.append({k: float(metrics[k][i]) for k in METRICS})
            if (done + i + 1) % log_every == 0:
                self.history.append(
                    {
                        "step": done + i + 1,
                        "tokens": self.tokens,
                        **{k: float(np.mean([w[k] for w in self.window])) for k in METRICS},
                        "dead": self.window[-1]["dead"],
                    }
                )
                self.window = []

    def record(self, fingerprint: dict, stream) -> dict:
        return {
            "fingerprint": fingerprint,
            "stream": stream.state(),
            "history": self.history,
            "window": self.window,
            "tokens": self.tokens,
        }


def _plan(stream, sae_cfg: SAEConfig, cfg: TrainConfig) -> _Plan:
    """Check that the SAE reads what the stream gives; work out the steps, the optimizer and the fingerprint."""
    if stream.layer is not None and (sae_cfg.layer, sae_cfg.hook_point) != (stream.layer, stream.point):
        raise SAEError(
            f"the SAE reads layer {sae_cfg.layer} {sae_cfg.hook_point} but the stream gives layer "
            f"{stream.layer} {stream.point}"
        )
    if sae_cfg.d_in != stream.width:
        raise SAEError(f"SAE d_in={sae_cfg.d_in} but the stream's activations have width {stream.width}")
    per_batch = steps_per_batch(stream.tokens_per_batch, cfg)
    total = math.ceil(cfg.steps / per_batch) * per_batch
    tx, chunk = _chunk_fn(sae_cfg, cfg, total, per_batch)
    fingerprint = run_fingerprint(stream, sae_cfg, cfg)
    return _Plan(sae_cfg, cfg, per_batch, total, tx, chunk, jax.random.key(cfg.seed), fingerprint)


def _restore(store: TrainCheckpoints, step: int, stream, plan: _Plan) -> tuple[TrainState, _Progress]:
    """The state and progress of checkpoint `step` (refused unless it is this run's); `stream` is repositioned."""
    record = store.read_record(step)
    # flattened, so that a refusal names the exact setting ("train.lr", "data.seed")
    check_fingerprint(flatten(record.get("fingerprint", {})), flatten(plan.fingerprint), str(store.directory))
    template = jax.eval_shape(
        lambda a, w: init_state(plan.key, plan.sae_cfg, plan.tx, a, w),
        jax.ShapeDtypeStruct((stream.tokens_per_batch, stream.width), jnp.float32),
        jax.ShapeDtypeStruct((stream.tokens_per_batch,), jnp.float32),
    )
    state = store.restore_state(step, _with_shardings(template, plan.sae_cfg, stream.mesh))
    stream.restore(record["stream"])
    return state, _Progress(list(record["history"]), list(record["window"]), int(record["tokens"]))


def _run_batches(
    stream,
    plan: _Plan,
    state: TrainState | None,
    so_far: _Progress,
    store: TrainCheckpoints | None,
    *,
    checkpoint_every: int,
    stop_after: int | None,
    show: bool,
) -> tuple[TrainState, int, bool]:
    """Model batches until `plan.total` steps (or `stop_after`) -> (state, steps done, finished).

    Checkpoints at model-batch boundaries: every `checkpoint_every` steps, at `stop_after`, and on a
    signal (then raises `RunInterrupted`).
    """
    done = int(state.step) if state is not None else 0
    total, per_batch = plan.total, plan.per_batch
    bar = tqdm(total=total, initial=done, desc="SAE steps", unit="step", disable=not show)
    try:
        with stop_requested((signal.SIGTERM, signal.SIGINT)) as flag:
            while done < total:
                acts, weight = stream.next()
                if state is None:
                    state = init_state(plan.key, plan.sae_cfg, plan.tx, acts, weight, stream.mesh)
                state, metrics = plan.chunk(state, acts, weight, jax.random.fold_in(plan.key, done // per_batch))
                host = {k: np.asarray(v) for k, v in metrics.items()}
                so_far.tokens += int(np.asarray(weight).sum())
                so_far.add_batch(host, done, plan.cfg.log_every)
                done += per_batch
                bar.update(per_batch)
                bar.set_postfix(ev=f"{so_far.history[-1]['ev']:.3f}" if so_far.history else "-", epoch=stream.epoch)
                stop = distributed.any_process(flag.is_set())
                due = checkpoint_every and done % checkpoint_every < per_batch and done < total
                halt = stop_after is not None and done >= stop_after and done < total
                if store is not None and (stop or due or halt):
                    store.save(done, state, so_far.record(plan.fingerprint, stream))
                if stop:
                    where = str(store.directory if store else "")
                    raise RunInterrupted(flag.signum or signal.SIGTERM, done, total, where)
                if halt:
                    return state, done, False
    finally:
        bar.close()
    return state, done, True


def train_sae(
    stream: ActivationStream | ArrayStream,
    sae_cfg: SAEConfig,
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train an SAE on `stream`'s activations.

    Args:
      stream: an `ActivationStream` at `sae_cfg.layer` / `sae_cfg.hook_point` (activations from a model;
        its mesh, if any, shards the SAE too), or an `ArrayStream`.
      checkpoint_dir: where orbax keeps checkpoints (None: no checkpoints, no resume).
      checkpoint_every: checkpoint after the model batch that reaches each multiple of this many
        steps (0: only on SIGTERM/SIGINT and at `stop_after`).
      resume: continue from the newest checkpoint (its fingerprint must match this run's);
        without it an existing checkpoint is an error.
      stop_after: stop (with a checkpoint) after the model batch that reaches this step, as a
        killed run would; `finished` is then False.
    Returns:
      `TrainResult` with the SAE folded to raw units (`SAE.meta` records the run).
    Raises:
      RunInterrupted (after checkpointing) on SIGTERM/SIGINT; ResumeError for a foreign or unexpected checkpoint.
    """
    plan = _plan(stream, sae_cfg, cfg)
    log = log or (lambda msg: None)
    store = TrainCheckpoints(checkpoint_dir) if checkpoint_dir is not None else None
    state, so_far, resumed_from = None, _Progress(), None
    start_time = time.perf_counter()
    try:
        latest = store.latest_step() if store is not None else None
        if latest is not None:
            if not resume:
                raise stale_checkpoint(
                    store.directory, latest, unit="steps", run="an SAE run", resume="resume=True (--resume)"
                )
            state, so_far = _restore(store, latest, stream, plan)
            resumed_from = latest
            log(f"resumed from {store.directory}/{latest} (epoch {stream.epoch})")
        state, done, finished = _run_batches(
            stream,
            plan,
            state,
            so_far,
            store,
            checkpoint_every=checkpoint_every,
            stop_after=stop_after,
            show=progress,
        )
    finally:
        if store is not None:
            store.close()
    params = jax.tree.map(np.asarray, fold_scale(state.params, state.scale))
    meta = {
        "model": stream.fingerprint().get("model"),
        "train": dataclasses.asdict(cfg),
        "scale": float(state.scale),
        "steps": done,
        "tokens": so_far.tokens,
        "data": stream.describe(),
    }
    since_fired, seconds = np.asarray(state.since_fired), time.perf_counter() - start_time
    return TrainResult(
        SAE(sae_cfg, params, meta), so_far.history, since_fired, done, so_far.tokens, seconds, resumed_from, finished
    )


# ----------------------------------------------------------------------------- results


def dead_features(since_fired: np.ndarray, window: int) -> dict:
    """Count and share of features that did not fire in the last `window` training tokens."""
    dead = np.asarray(since_fired) >= window
    return {
        "dead": int(dead.sum()),
        "features": int(dead.size),
        "share": float(dead.mean()),
        "window_tokens": int(window),
    }


def save_history(history: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Write the metric history as JSON (atomically)."""
    return write_json(path, list(history))
