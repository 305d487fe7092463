"""Training an SAE on activations streamed from the model, resumable, and its evaluation (MSE, EV, dead, ΔNLL).

Activations are never written to disk. The grain pipeline (`jlang.data.make_batches`,
packed windows, rows shuffled across languages) feeds the model; a jitted
forward of the model's first `layer + 1` layers (the layers after the hook
point cannot change it, so they are not run) returns the hook point's
activations `[batch, seq, d_in]`; one jitted call then runs `reuse * tokens /
sae_batch` optimizer steps (optax Adam, `jax.lax.scan`) over random
minibatches of those tokens and returns the metrics. BOS tokens (an outlier
of every residual stream, and the same for every text) are left out when
`skip_bos`.

Under a `(data, model)` mesh the model is sharded as usual, the activations
and minibatches shard over `data` and the SAE's feature axis over `model`
(`W_enc [d, F]`, `W_dec [F, d]`, `b_enc [F]`).

Checkpoints (orbax `CheckpointManager`) hold the whole train state (params,
Adam state, step, activation scale, tokens since each feature last fired)
and a JSON record (the run's fingerprint, the data position: epoch and grain
iterator state, and the metric history). They are taken at model-batch
boundaries, every `checkpoint_every` steps and on SIGTERM/SIGINT; a resumed
run restores all of it and, batch for batch, computes what the uninterrupted
run computes, so it ends with bit-identical params.

`evaluate` runs the whole model three times per held-out batch: clean, with
the SAE's reconstruction spliced in at its hook point (`splice`), and with the
hook point zeroed. It reports the next-token NLL of each (chunked log-softmax,
`jlang.models.vocab.target_logprob`), ΔNLL = NLL(SAE) - NLL(clean), the share
of the zero-ablation loss the SAE recovers, and MSE, explained variance and L0
on the same tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jlang import parallel
from jlang.io.checkpoint import OrbaxRun
from jlang.models.decoder import SPLICE_POINTS, forward
from jlang.models.families import ModelConfig
from jlang.parallel import distributed
from jlang.sae.model import (
    SAE,
    Params,
    SAEConfig,
    SAEError,
    fold_scale,
    init_params,
    loss_and_metrics,
    normalize_decoder,
    pre_activations,
    reconstruct,
    reconstruct_with,
    remove_parallel_grad,
    topk_sparse,
)

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


# ----------------------------------------------------------------------------- activations from the model


def prefix_config(cfg: ModelConfig, num_layers: int) -> ModelConfig:
    """The config of the model's first `num_layers` layers."""
    return dataclasses.replace(cfg, num_layers=num_layers, local_layers=tuple(cfg.local_layers[:num_layers]))


def hook_activations(
    params: Mapping[str, Array], ids: Array, positions: Array, valid: Array, *, cfg: ModelConfig, layer: int, point: str
) -> Array:
    """Activations at `point` of `layer`: float32 `[batch, seq, width]`, from the first `layer + 1` layers only."""
    sub_cfg = prefix_config(cfg, layer + 1)
    sub = {k: (v[: layer + 1] if k.startswith("layers.") else v) for k, v in params.items()}
    _, probes = forward(
        sub, ids, sub_cfg, positions=positions, valid=valid, output="none", probe=lambda points, v: points[point]
    )
    return probes[layer].astype(jnp.float32)


@functools.lru_cache(maxsize=32)
def activation_fn(cfg: ModelConfig, layer: int, point: str) -> Callable:
    """`hook_activations` jitted for one model config and hook (cached: every stream of it shares one compilation)."""
    return jax.jit(functools.partial(hook_activations, cfg=cfg, layer=layer, point=point))


def check_hook(model, layer: int, point: str) -> None:
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
        from jlang.stats.checkpoint import corpus_digest

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
        from jlang.data.pipeline import make_batches

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
        import hashlib

        digest = hashlib.blake2b(np.ascontiguousarray(self.x).tobytes(), digest_size=16).hexdigest()
        return {
            "array": digest,
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
        import orbax.checkpoint as ocp

        self.save_items(step, record, state=ocp.args.StandardSave(_leaves(state)))

    def restore_state(self, step: int, template: TrainState) -> TrainState:
        """The state of checkpoint `step`, with the shapes, dtypes and shardings of `template`."""
        import orbax.checkpoint as ocp

        got = self.restore_items(step, state=ocp.args.StandardRestore(_leaves(template)))["state"]
        return jax.tree.unflatten(jax.tree.structure(template), [got[k] for k in sorted(got)])


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


def run_fingerprint(stream, sae_cfg: SAEConfig, cfg: TrainConfig) -> dict:
    """What makes two SAE runs the same run (resuming one from the other's checkpoint is refused)."""
    return {"format": FORMAT, "sae": sae_cfg.to_dict(), "train": dataclasses.asdict(cfg), "data": stream.fingerprint()}


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
    from jlang.io.checkpoint import ResumeError, RunInterrupted, check_fingerprint, stop_requested

    if stream.layer is not None and (sae_cfg.layer, sae_cfg.hook_point) != (stream.layer, stream.point):
        raise SAEError(
            f"the SAE reads layer {sae_cfg.layer} {sae_cfg.hook_point} but the stream gives layer "
            f"{stream.layer} {stream.point}"
        )
    width, mesh = stream.width, stream.mesh
    if sae_cfg.d_in != width:
        raise SAEError(f"SAE d_in={sae_cfg.d_in} but the stream's activations have width {width}")
    log = log or (lambda msg: None)
    per_batch = steps_per_batch(stream.tokens_per_batch, cfg)
    total = math.ceil(cfg.steps / per_batch) * per_batch
    tx, chunk = _chunk_fn(sae_cfg, cfg, total, per_batch)
    key = jax.random.key(cfg.seed)
    fingerprint = run_fingerprint(stream, sae_cfg, cfg)
    store = TrainCheckpoints(checkpoint_dir) if checkpoint_dir is not None else None
    state, history, resumed_from, tokens = None, [], None, 0
    window: list[dict] = []  # metrics of the steps since the last history entry
    start_time = time.perf_counter()
    latest = store.latest_step() if store is not None else None
    if latest is not None:
        if not resume:
            store.close()
            raise ResumeError(
                f"{store.directory} holds a checkpoint of an SAE run ({latest} steps done); pass "
                f"resume to continue it, or delete {store.directory} to start over"
            )
        record = store.read_record(latest)
        check_fingerprint(record.get("fingerprint", {}), fingerprint, str(store.directory))
        template = jax.eval_shape(
            lambda a, w: init_state(key, sae_cfg, tx, a, w),
            jax.ShapeDtypeStruct((stream.tokens_per_batch, width), jnp.float32),
            jax.ShapeDtypeStruct((stream.tokens_per_batch,), jnp.float32),
        )
        template = _with_shardings(template, sae_cfg, mesh)
        state = store.restore_state(latest, template)
        stream.restore(record["stream"])
        history, tokens, resumed_from = (list(record["history"]), int(record["tokens"]), latest)
        window = list(record["window"])
        log(f"resumed from {store.directory}/{latest} (epoch {record['stream']['epoch']})")

    from tqdm.auto import tqdm

    done = int(state.step) if state is not None else 0
    bar = tqdm(total=total, initial=done, desc="SAE steps", unit="step", disable=not progress)
    finished = True
    try:
        with stop_requested((signal.SIGTERM, signal.SIGINT)) as flag:
            while done < total:
                acts, weight = stream.next()
                if state is None:
                    state = init_state(key, sae_cfg, tx, acts, weight, mesh)
                batch_index = done // per_batch
                state, metrics = chunk(state, acts, weight, jax.random.fold_in(key, batch_index))
                host = {k: np.asarray(v) for k, v in metrics.items()}
                tokens += int(np.asarray(weight).sum())
                for i in range(per_batch):
                    window.append({k: float(host[k][i]) for k in METRICS})
                    if (done + i + 1) % cfg.log_every == 0:
                        history.append(
                            {
                                "step": done + i + 1,
                                "tokens": tokens,
                                **{k: float(np.mean([w[k] for w in window])) for k in METRICS},
                                "dead": window[-1]["dead"],
                            }
                        )
                        window = []
                done += per_batch
                bar.update(per_batch)
                bar.set_postfix(ev=f"{history[-1]['ev']:.3f}" if history else "-", epoch=stream.epoch)
                stop = distributed.any_process(flag.is_set())
                due = checkpoint_every and done % checkpoint_every < per_batch and done < total
                halt = stop_after is not None and done >= stop_after and done < total
                if store is not None and (stop or due or halt):
                    record = {
                        "fingerprint": fingerprint,
                        "stream": stream.state(),
                        "history": history,
                        "window": window,
                        "tokens": tokens,
                    }
                    store.save(done, state, record)
                if stop:
                    raise RunInterrupted(
                        flag.signum or signal.SIGTERM, done, total, str(store.directory if store else "")
                    )
                if halt:
                    finished = False
                    break
    finally:
        bar.close()
        if store is not None:
            store.close()
    params = jax.tree.map(np.asarray, fold_scale(state.params, state.scale))
    meta = {
        "model": stream.fingerprint().get("model"),
        "train": dataclasses.asdict(cfg),
        "scale": float(state.scale),
        "steps": done,
        "tokens": tokens,
        "data": stream.describe(),
    }
    return TrainResult(
        SAE(sae_cfg, params, meta),
        history,
        np.asarray(state.since_fired),
        done,
        tokens,
        time.perf_counter() - start_time,
        resumed_from,
        finished,
    )


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


# ----------------------------------------------------------------------------- sentences -> bucketed batches


def sentence_rows(tokenized, *, max_len: int, max_per_language: int | None = None):
    """One row per document of a `TokenizedCorpus` (BOS included when it was added), cut at `max_len` tokens.

    Returns `jlang.models.scoring.TokenRows` (`group` = language index); `score` marks the real tokens.
    """
    from jlang.models.scoring import rows_from_token_lists

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


def iterate_rows(model, rows, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(row indices, padded host batch) over `rows` sorted by length, widths bucketed to powers of two >= 16.

    Batches keep `batch_size` rows (padding rows are all-invalid, index -1) so a handful of shapes compile.
    """
    from jlang.models.scoring import plan_batches

    batch = parallel.pad_batch_to(batch_size, model.mesh)
    for idx, width in plan_batches(rows.lengths, batch, rows.ids.shape[1]):
        ids = np.zeros((batch, width), np.int32)
        valid = np.zeros((batch, width), bool)
        ids[: len(idx)] = rows.ids[idx, :width]
        valid[: len(idx)] = rows.attend[idx, :width]
        full = np.full(batch, -1, np.int64)
        full[: len(idx)] = idx
        positions = np.broadcast_to(np.arange(width, dtype=np.int32), (batch, width)).copy()
        yield full, {"ids": ids, "valid": valid, "positions": positions}


# ----------------------------------------------------------------------------- splicing an SAE into the model


@functools.cache
def sae_splice(hook_point: str, kind: str, k: int) -> Callable:
    """The splice that swaps `hook_point` of layer `args["layer"]` for the SAE's output (one function per SAE
    shape, so jit reuses its compilation).

    `args`: {"layer": int32 [], "mode": int32 [] (0 keep, 1 SAE reconstruction, 2 zeros), "params": SAE params}.
    """

    def splice(point, value, layer, args):
        if point != hook_point:
            return value

        def replace(v):
            recon = reconstruct_with(args["params"], v, kind, k).astype(v.dtype)
            return jnp.where(args["mode"] == 1, recon, jnp.zeros_like(v))

        hit = (layer == args["layer"]) & (args["mode"] > 0)
        return jax.lax.cond(hit, replace, lambda v: v, value)

    return splice


def _eval_batch(
    params, ids, positions, attend, splice_args, *, cfg: ModelConfig, sae_cfg: SAEConfig, chunk: int, splice: Callable
):
    """(token log-probs `[b, t-1]`, hook activations of the SAE's layer `[b, t, d]`) with `splice_args`' mode."""
    from jlang.models.vocab import target_logprob

    hidden, probes = forward(
        params,
        ids,
        cfg,
        positions=positions,
        valid=attend,
        output="hidden",
        splice=splice,
        splice_args=splice_args,
        probe=lambda points, v: points[sae_cfg.hook_point],
    )
    logp = target_logprob(params, hidden[:, :-1], ids[:, 1:], cfg, chunk)
    return logp, probes[sae_cfg.layer].astype(jnp.float32)


def _sae_batch_stats(params: Params, x: Array, w: Array, *, sae_cfg: SAEConfig) -> dict[str, Array]:
    """Sums for MSE, explained variance and L0 over tokens with weight 1 (`x [n, d]`)."""
    pre = pre_activations(params, x)
    if sae_cfg.kind == "topk":
        values, _ = topk_sparse(pre, sae_cfg.k)
        l0 = jnp.sum(values > 0, axis=-1)
    else:
        l0 = jnp.sum(pre > 0, axis=-1)
    err = jnp.sum(jnp.square(reconstruct(params, x, sae_cfg) - x), axis=-1)
    return {
        "n": jnp.sum(w),
        "sq_err": jnp.sum(err * w),
        "sum_x": jnp.sum(x * w[:, None], axis=0),
        "sum_sq_x": jnp.sum(jnp.sum(jnp.square(x), axis=-1) * w),
        "l0": jnp.sum(l0 * w),
    }


@functools.lru_cache(maxsize=8)
def _eval_fns(cfg: ModelConfig, sae_cfg: SAEConfig, vocab_chunk: int) -> tuple[Callable, Callable]:
    splice = sae_splice(sae_cfg.hook_point, sae_cfg.kind, sae_cfg.k)
    step = jax.jit(functools.partial(_eval_batch, cfg=cfg, sae_cfg=sae_cfg, chunk=vocab_chunk, splice=splice))
    return step, jax.jit(functools.partial(_sae_batch_stats, sae_cfg=sae_cfg))


def evaluate(
    model,
    sae: SAE,
    rows,
    *,
    batch_size: int = 8,
    vocab_chunk: int = 16384,
    skip_bos: bool = True,
    progress: bool = True,
) -> dict:
    """NLL clean / with the SAE spliced in / with the hook point zeroed, and the SAE's MSE, EV and L0, on `rows`.

    Args:
      rows: `TokenRows` (e.g. `sentence_rows` of the held-out split); position 0 is never scored.
    Returns:
      {"nll_clean", "nll_sae", "nll_zero", "delta_nll", "loss_recovered", "mse", "ev", "l0", "tokens", "scored"}
      (NLLs are means over scored tokens, in nats; mse per token, summed over d_in).
    """
    from tqdm.auto import tqdm

    from jlang.models.scoring import effective_score

    c = sae.config
    check_hook(model, c.layer, c.hook_point)
    if c.d_in != model.config.d_model:
        raise SAEError(f"SAE d_in={c.d_in} does not fit {model.name} (d_model {model.config.d_model})")
    step, stats_fn = _eval_fns(model.config, c, vocab_chunk)
    params = sae.jax_params
    score = effective_score(rows.attend, rows.score)
    nll = np.zeros(3)
    scored = 0
    sums: dict[str, Any] = {}
    plan = list(iterate_rows(model, rows, batch_size))
    bos = getattr(model.tokenizer, "bos_token_id", None)
    for idx, batch in tqdm(plan, desc="SAE evaluation", unit="batch", disable=not progress):
        real = idx >= 0
        ids, attend = batch["ids"], batch["valid"]
        width = ids.shape[1]
        mask = np.zeros((len(idx), width - 1), bool)
        mask[real] = score[idx[real], 1:width]
        placed = [model.place_batch(a) for a in (ids, batch["positions"], attend)]
        for mode in range(3):
            args = {"layer": jnp.int32(c.layer), "mode": jnp.int32(mode), "params": params}
            logp, acts = step(model.params, *placed, args)
            nll[mode] -= float(np.where(mask, parallel.to_host(logp), 0.0).sum())
            if mode == 0:
                w = token_weight(ids, attend, bos, skip_bos).reshape(-1)
                s = stats_fn(params, acts.reshape(-1, acts.shape[-1]), jnp.asarray(w))
                for k, v in s.items():
                    sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
        scored += int(mask.sum())
    n = max(float(sums["n"]), 1.0)
    total_var = float(sums["sum_sq_x"]) - float(np.sum(np.square(sums["sum_x"]))) / n
    clean, with_sae, zero = (nll / max(scored, 1)).tolist()
    return {
        "nll_clean": clean,
        "nll_sae": with_sae,
        "nll_zero": zero,
        "delta_nll": with_sae - clean,
        "delta_nll_zero": zero - clean,
        "loss_recovered": (zero - with_sae) / (zero - clean) if zero != clean else float("nan"),
        "mse": float(sums["sq_err"]) / n,
        "ev": 1.0 - float(sums["sq_err"]) / max(total_var, 1e-12),
        "l0": float(sums["l0"]) / n,
        "tokens": int(n),
        "scored": scored,
    }


def dead_features(since_fired: np.ndarray, window: int) -> dict:
    """Count and share of features that did not fire in the last `window` training tokens."""
    dead = np.asarray(since_fired) >= window
    return {
        "dead": int(dead.sum()),
        "features": int(dead.size),
        "share": float(dead.mean()),
        "window_tokens": int(window),
    }


def load_tokenized(model, corpus: Any, *, add_bos: bool | None = True, progress: bool = True):
    """Tokenize `corpus` (a Corpus or mapping language -> source) with the model's tokenizer, checking the ids fit."""
    from jlang.data.pipeline import tokenize_corpus
    from jlang.stats.collect import check_ids_fit

    if model.tokenizer is None:
        raise SAEError(f"{model.name} has no tokenizer; SAE training needs one to tokenize the corpus")
    tok = tokenize_corpus(corpus, model.tokenizer, add_bos=add_bos, progress=progress)
    check_ids_fit(tok, model)
    return tok


def save_history(history: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Write the metric history as JSON (atomically)."""
    import json

    from jlang.io.atomic import atomic_file

    p = Path(path)
    with atomic_file(p) as tmp:
        tmp.write_text(json.dumps(list(history), indent=1))
    return p
