"""What a fine-tuning step trains and how: the trained parameters, neuron update masks, the optimizer, the loss.

* `trainable_names`: every parameter but the frozen ones (`trainable: all`), or the
  MLP kernels that hold the neurons (`trainable: neurons`);
* `neuron_update_masks`: PLND's "neuron enhancement" (Zhao et al. 2024,
  DAMO-NLP-SG/multilingual_analysis `neuron_enhancement`, methods.md §2.2). Neuron
  `(l, j)` owns column `j` of `W_gate` and `W_up` and row `j` of `W_down` of layer
  `l` (jlang's `[in, out]` kernels: `gate[l][:, j]`, `up[l][:, j]`, `down[l][j, :]`;
  HF's `gate_proj.weight` row `j`, `down_proj.weight` column `j`). The original
  zeroes `param.grad[~mask]` in a patched `trainer.py`; `train_step` masks the
  gradients before the optimizer (so clipping and Adam's moments see only those
  entries) and applies the update only where the mask holds (so weight decay cannot
  move a frozen weight either): every other weight stays bit-for-bit what it was;
* `token_logprob` / `response_nll`: the loss, the mean negative log-likelihood of
  the response tokens. With a vocabulary chunk it never builds `[batch, seq, vocab]`
  logits: the log-softmax is folded over vocabulary chunks in a scan whose body is
  rematerialised (`jax.checkpoint`), so the backward pass recomputes each chunk
  instead of keeping all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jlang.config import ConfigError
from jlang.masks import MaskError, NeuronMasks
from jlang.models.decoder import forward, unembed
from jlang.models.families import ModelConfig
from jlang.models.vocab import chunk_plan, unembed_slice
from jlang.train.config import FinetuneConfig, TrainSection

# A neuron's own weights: column j of gate and up (plain MLPs: of W_in = `layers.up`, and its bias j), row j of down.
NEURON_PARAMS = ("layers.gate", "layers.up", "layers.down", "layers.up_bias")


# ----------------------------------------------------------------------------- what trains


def trainable_names(cfg: FinetuneConfig, param_names: list[str]) -> list[str]:
    """The jlang parameters the optimizer updates."""
    if cfg.trainable == "neurons":
        return [n for n in NEURON_PARAMS if n in param_names]
    absent = sorted(set(cfg.freeze) - set(param_names))
    if absent:
        raise ConfigError(f"freeze names {absent}, which this model does not have; it has {param_names}")
    names = [n for n in param_names if n not in cfg.freeze]
    if not names:
        raise ConfigError("freeze lists every parameter: nothing would train")
    return names


def neuron_update_masks(
    masks: NeuronMasks,
    languages: Sequence[str],
    num_layers: int,
    num_neurons: int,
    *,
    model: str | None = None,
    family: str | None = None,
) -> dict[str, np.ndarray]:
    """Where `trainable: neurons` may change weights: the union of `languages`' neurons, per kernel.

    Returns bool arrays broadcastable to the kernels: `layers.gate` and `layers.up` `[L, 1, F]`
    (column j of `[d_model, F]`), `layers.down` `[L, F, 1]` (row j of `[F, d_model]`), and
    `layers.up_bias` `[L, F]` (plain MLPs with biases: BLOOM, OPT, Phi).
    Raises `MaskError` subclasses for a mask of another model or a language it lacks.
    """
    masks.check_fits(num_layers, num_neurons, model=model)
    made_for = masks.meta.get("family")
    if family is not None and made_for is not None and made_for != family:
        raise MaskError(f"the masks were made for a {made_for} model, not this {family} model ({model})")
    union = np.zeros((num_layers, num_neurons), bool)
    for lang in languages:
        union |= masks[lang]  # UnknownLanguageError names the mask's languages
    if not union.any():
        raise MaskError(f"the masks hold no neuron for {list(languages)}: nothing would train")
    return {
        "layers.gate": union[:, None, :],
        "layers.up": union[:, None, :],
        "layers.down": union[:, :, None],
        "layers.up_bias": union,
    }


def count_trained(trainable: Mapping[str, Any], update_masks: Mapping[str, np.ndarray]) -> int:
    """Weights the optimizer can change (only the masked entries in "neurons" mode)."""
    return int(
        sum(
            int(np.broadcast_to(update_masks[k], np.shape(v)).sum()) if k in update_masks else int(np.prod(np.shape(v)))
            for k, v in trainable.items()
        )
    )


def make_optimizer(t: TrainSection):
    """(optax transformation, schedule) of `t`: optional global-norm clipping, then the optimizer.

    The learning rate of step k (1-based) is `peak * k / warmup` during the warm-up (no step is
    wasted at 0), then follows `schedule` from the peak over the remaining steps (a decay ends
    one step short of 0, so the last step still learns).
    """
    peak, warmup = t.learning_rate, t.warmup
    decay_steps = max(t.steps - warmup, 1)
    after = {
        "constant": optax.constant_schedule(peak),
        "cosine": optax.cosine_decay_schedule(peak, decay_steps),
        "linear": optax.linear_schedule(peak, 0.0, decay_steps),
    }[t.schedule]

    def schedule(count):  # optax counts updates from 0
        return jnp.where(count < warmup, peak * (count + 1) / max(warmup, 1), after(jnp.maximum(count - warmup, 0)))

    if t.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=t.weight_decay)
    elif t.optimizer == "adam":
        opt = optax.adam(schedule)
    else:
        opt = optax.sgd(schedule)
    parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip is not None else []
    return optax.chain(*parts, opt), schedule


# ----------------------------------------------------------------------------- the loss and the step


def token_logprob(params: Mapping[str, Any], x, targets, cfg: ModelConfig, vocab_chunk: int | None):
    """`log softmax(unembed(x))[targets]` float32 `[b, t]` for final-normed `x [b, t, D]`, differentiable.

    With `vocab_chunk`, the log-sum-exp is folded over vocabulary chunks in a scan whose body is
    rematerialised, so neither pass keeps `[b, t, vocab]` logits (the backward recomputes each chunk).
    Unlike `jlang.models.vocab.target_logprob` (evaluation only), the whole chunk, unembedding
    included, is rematerialised: only then is no chunk's logits kept for the backward.
    """
    vocab = cfg.vocab_size
    if vocab_chunk is None or vocab_chunk >= vocab:
        logits = unembed(params, x, cfg)
        return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[..., 0]
    size, n = chunk_plan(vocab, vocab_chunk)

    @jax.checkpoint
    def body(carry, i):
        m, s, hit = carry
        first_new = i * size
        start = jnp.minimum(first_new, vocab - size)  # the last chunk ends at the vocabulary's end
        ids = start + jnp.arange(size, dtype=jnp.int32)
        fresh = ids >= first_new  # ids the previous chunk already covered are skipped
        logits = unembed_slice(params, x, cfg, start, size)
        z = jnp.where(fresh, logits, -jnp.inf)
        # the log-sum-exp does not depend on the running max: no gradient through it
        m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(z, axis=-1)))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[..., None]), axis=-1)
        hit = hit + jnp.sum(jnp.where((ids == targets[..., None]) & fresh, logits, 0.0), axis=-1)
        return (m_new, s, hit), None

    shape = targets.shape
    init = (
        jnp.full(shape, -jnp.inf, jnp.float32),
        jnp.zeros(shape, jnp.float32),
        jnp.zeros(shape, jnp.float32),
    )
    (m, s, hit), _ = jax.lax.scan(body, init, jnp.arange(n, dtype=jnp.int32))
    return hit - (m + jnp.log(s))


def response_nll(params: Mapping[str, Any], batch: Mapping[str, Any], cfg: ModelConfig, vocab_chunk: int | None):
    """(summed NLL of the loss tokens, their count) of one batch (`jlang.train.data` fields)."""
    ids, attend, loss = batch["ids"], batch["attend"], batch["loss"]
    x, _ = forward(params, ids, cfg, valid=attend, output="hidden")
    logp = token_logprob(params, x[:, :-1], ids[:, 1:], cfg, vocab_chunk)  # position t predicts token t + 1
    weight = (loss[:, 1:] & attend[:, :-1]).astype(jnp.float32)
    return -jnp.sum(logp * weight), jnp.sum(weight)


def train_step(trainable, opt_state, frozen, batch, update_masks, *, cfg: ModelConfig, optimizer, vocab_chunk):
    """One optimizer step on the mean response NLL of the global batch -> (params, opt_state, metrics)."""

    def loss_fn(p):
        nll, count = response_nll({**frozen, **p}, batch, cfg, vocab_chunk)
        return nll / jnp.maximum(count, 1.0), count

    (loss, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    grads = {k: jnp.where(update_masks[k], g, 0) if k in update_masks else g for k, g in grads.items()}
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    new = {}
    for k, p in trainable.items():
        stepped = (p + updates[k]).astype(p.dtype)
        new[k] = jnp.where(update_masks[k], stepped, p) if k in update_masks else stepped
    metrics = {"loss": loss, "tokens": count, "grad_norm": optax.global_norm(grads)}
    return new, opt_state, metrics
