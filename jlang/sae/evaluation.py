"""How good a trained SAE is inside the model: ΔNLL with its reconstruction spliced in, MSE, explained variance, L0.

`evaluate` runs the whole model three times per held-out batch: clean, with
the SAE's reconstruction spliced in at its hook point (`sae_splice`), and with
the hook point zeroed. It reports the next-token NLL of each (chunked
log-softmax, `jlang.models.vocab.target_logprob`), ΔNLL = NLL(SAE) - NLL(clean),
the share of the zero-ablation loss the SAE recovers, and MSE, explained
variance and L0 on the same tokens. Batches are dispatched one ahead of the
host (`jlang.parallel.batch_loop.pipelined`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlang import parallel
from jlang.models.decoder import forward
from jlang.models.families import ModelConfig
from jlang.models.scoring import TokenRows, effective_score
from jlang.models.vocab import target_logprob
from jlang.parallel.batch_loop import Throughput, pipelined, place_rows
from jlang.sae.model import (
    SAE,
    Params,
    SAEConfig,
    SAEError,
    pre_activations,
    reconstruct,
    reconstruct_with,
    topk_sparse,
)
from jlang.sae.stream import check_hook, iterate_rows, token_weight

Array = jax.Array
MODES = ("clean", "sae", "zero")  # the splice's `mode` 0, 1, 2


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


def _summary(nll: np.ndarray, scored: int, sums: dict[str, Any]) -> dict:
    """The result of `evaluate` from its host totals."""
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


def evaluate(
    model,
    sae: SAE,
    rows: TokenRows,
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
    c = sae.config
    check_hook(model, c.layer, c.hook_point)
    if c.d_in != model.config.d_model:
        raise SAEError(f"SAE d_in={c.d_in} does not fit {model.name} (d_model {model.config.d_model})")
    step, stats_fn = _eval_fns(model.config, c, vocab_chunk)
    params = sae.jax_params
    score = effective_score(rows.attend, rows.score)
    bos = getattr(model.tokenizer, "bos_token_id", None)
    plan = list(iterate_rows(model, rows, batch_size))
    nll, totals, sums = np.zeros(len(MODES)), {"scored": 0}, {}
    rate = Throughput(len(plan), "SAE evaluation", "tokens", enabled=progress)

    def dispatch(batch):
        _, host = batch
        placed = place_rows(model, host)
        inputs = (model.params, placed["ids"], placed["positions"], placed["valid"])
        runs = [step(*inputs, {"layer": jnp.int32(c.layer), "mode": jnp.int32(m), "params": params}) for m in range(3)]
        acts = runs[0][1]  # the clean forward's activations at the hook
        w = token_weight(host["ids"], host["valid"], bos, skip_bos).reshape(-1)
        return [logp for logp, _ in runs], stats_fn(params, acts.reshape(-1, acts.shape[-1]), jnp.asarray(w))

    def fold(i, batch, result):
        idx, host = batch
        logps, stats = result
        real = idx >= 0
        width = host["ids"].shape[1]
        mask = np.zeros((len(idx), width - 1), bool)
        mask[real] = score[idx[real], 1:width]
        for mode, logp in enumerate(logps):
            nll[mode] -= float(np.where(mask, parallel.to_host(logp), 0.0).sum())
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
        totals["scored"] += int(mask.sum())
        rate.update(int(mask.sum()))

    pipelined(plan, dispatch, fold)
    rate.close()
    return _summary(nll, totals["scored"], sums)
