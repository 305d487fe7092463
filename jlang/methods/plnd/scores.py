"""PLND's importance scores: what one document (one prefill) does with each FFN neuron and attention dimension.

What is scored, for one document `c`, in every layer (Zhao et al. 2024; the released
scores are computed in patched copies of transformers' `modeling_llama.py`,
DAMO-NLP-SG/multilingual_analysis `neuron_detection/`):

* **FFN neuron j** (`up_proj` row j and `down_proj` column j share the score):
  - mode `code`, as released: `Σ_t |(W_up x_t)_j|` (hook point `mlp.up`). It
    ignores the gate and `W_down`.
  - mode `paper`: the norm of the neuron's contribution to the FFN's output,
    i.e. the change of the FFN output when the neuron is zeroed, summed over tokens:
    `Σ_t ‖a_j(t)·(W_up x_t)_j · W_down[:, j]‖₂ = Σ_t |mlp.hidden_j(t)| · ‖W_down[:, j]‖₂`
    (methods.md §2.4). The output is `mlp.out`, before Gemma 2/3's post-norm.
* **Q/K dimension d = h·D + j** (both modes, as released; Q and K share the score):
  `Σ_{t,s} (softmax(S − Δ_d) − softmax(S))²` with `S` the layer's attention
  logits (scaled by `cfg.attn_scale`, soft-capped on Gemma 2, masked) and
  `Δ_d[t, s] = q_t[d] · k_s[d]` over post-RoPE queries and keys, `k` repeated
  to the `H·D` query space (`repeat_kv`: head h reads kv head `h // group`).
  The released code does **not** scale `Δ_d` by `1/√D` although `S` is scaled, so
  `S − Δ_d` are the logits with `q[d]` multiplied by `1 − √D` (about −10 for
  D = 128), not with `q[d]` removed; `delta_scaled=True` gives the removal
  (`S` recomputed with `q[d] = 0`, exact without a soft-cap).
* **V/O dimension d** (both modes): `Σ_t |z_t[d]|`, `z` the concatenated head
  outputs before `o_proj` (hook point `attn.z`).

All of it is computed inside the decoder's forward as a `probe` (`layer_scores`), so
no activation leaves the device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlang import parallel
from jlang.methods.plnd.common import PARTS, check_mode, check_parts
from jlang.models.decoder import forward

# Elements of one `[b, H, chunk, t, t]` block of the Q/K score: 2^19 float32 = 2 MiB stays in cache
# (on 2 CPU cores 5-10x faster than 32 MiB blocks; at least one head dimension per block).
QK_BLOCK_ELEMENTS = 2**19


def abs_sum(x: jax.Array, valid: jax.Array) -> jax.Array:
    """float32 `[batch, n]`: `Σ_t |x[b, t, n]|` over valid tokens (`valid` bool `[batch, seq]`)."""
    return jnp.sum(jnp.where(valid[:, :, None], jnp.abs(x.astype(jnp.float32)), 0.0), axis=1)


def ffn_code_score(up: jax.Array, valid: jax.Array) -> jax.Array:
    """Released FFN score `Σ_t |(W_up x_t)_j|` `[batch, F]` from `mlp.up` `[batch, seq, F]`."""
    return abs_sum(up, valid)


def ffn_paper_score(hidden: jax.Array, valid: jax.Array, down: jax.Array) -> jax.Array:
    """Paper FFN score `Σ_t ‖hidden_j(t) · W_down[j, :]‖₂` `[batch, F]`.

    `hidden` is `mlp.hidden` `[batch, seq, F]` (`act ⊙ up`), `down` this layer's
    kernel `[F, d_model]` (row j = HF `down_proj.weight[:, j]`). The norm of a
    rank-one term factors: `|hidden_j(t)| · ‖W_down[j]‖₂`.
    """
    return abs_sum(hidden, valid) * jnp.linalg.norm(down.astype(jnp.float32), axis=-1)


def dim_chunk(batch: int, heads: int, seq: int, head_dim: int, budget: int = QK_BLOCK_ELEMENTS) -> int:
    """The largest divisor of `head_dim` whose `[batch, heads, chunk, seq, seq]` block fits `budget` elements."""
    per_dim = max(batch * heads * seq * seq, 1)
    best = 1
    for c in range(1, head_dim + 1):
        if head_dim % c == 0 and c * per_dim <= budget:
            best = c
    return best


def qk_score(
    q: jax.Array,
    k: jax.Array,
    allowed: jax.Array,
    valid: jax.Array,
    *,
    attn_scale: float,
    softcap: float | None = None,
    bias: jax.Array | None = None,
    delta_scaled: bool = False,
    block_elements: int = QK_BLOCK_ELEMENTS,
) -> jax.Array:
    """Released Q/K score `[batch, H*D]`: `Σ_{t valid, s} (softmax(S − Δ_d) − softmax(S))²` for every d.

    Args:
      q: `attn.q` `[batch, seq, H, D]` (post q-norm and RoPE).
      k: `attn.k` `[batch, seq, G, D]` (before the GQA repetition; head h reads kv head `h // (H/G)`).
      allowed: `attn.allowed` bool `[batch, seq, seq]` (causal, window, valid keys).
      valid: bool `[batch, seq]`; padding query rows are left out.
      attn_scale, softcap: the model's `cfg.attn_scale` and `cfg.attn_softcap`, so `S` is the
        logits the model computes.
      bias: `attn.bias` float32 `[batch, H, seq]`, ALiBi's per-key bias (BLOOM), part of `S`.
      delta_scaled: scale `Δ_d` like `S` (the removal of dimension d); the released code does not.
      block_elements: memory bound of one block; head dimensions are processed in chunks.
    Returns:
      float32 `[batch, H*D]`, index `h*D + j` (the flattened `num_heads * head_dim` space of the code).
    """
    b, t, H, D = q.shape
    G = k.shape[2]
    g = H // G
    q32 = q.astype(jnp.float32).reshape(b, t, G, g, D)
    k32 = k.astype(jnp.float32)
    scale = jnp.float32(attn_scale)
    s = jnp.einsum("btkgd,bskd->bkgts", q32, k32, precision="highest") * scale
    if softcap is not None:
        s = jnp.tanh(s / softcap) * softcap
    if bias is not None:
        s = s + bias.reshape(b, G, g, 1, -1)
    neg = jnp.finfo(jnp.float32).min
    mask = allowed[:, None, None, None, :, :]  # [b, 1, 1, 1, t, s] against [b, G, g, chunk, t, s]
    p = jax.nn.softmax(jnp.where(allowed[:, None, None], s, neg), axis=-1)  # [b, G, g, t, s]
    rows = valid[:, None, None, None, :, None]
    c = dim_chunk(b, H, t, D, block_elements)

    # Δ as a broadcast product (not an einsum without contraction) so XLA fuses it into the softmax.
    qT = jnp.transpose(q32, (0, 2, 3, 4, 1))  # [b, G, g, D, t]
    kT = jnp.transpose(k32, (0, 2, 3, 1))  # [b, G, D, s]

    def chunk_score(start):
        qc = jax.lax.dynamic_slice_in_dim(qT, start, c, axis=3)[..., :, None]  # [b, G, g, c, t, 1]
        kc = jax.lax.dynamic_slice_in_dim(kT, start, c, axis=2)[:, :, None, :, None, :]  # [b, G, 1, c, 1, s]
        delta = qc * kc * scale if delta_scaled else qc * kc
        pd = jax.nn.softmax(jnp.where(mask, s[:, :, :, None] - delta, neg), axis=-1)
        diff = jnp.where(rows, pd - p[:, :, :, None], 0.0)
        return jnp.sum(diff * diff, axis=(-2, -1))  # [b, G, g, c]

    out = jax.lax.map(chunk_score, jnp.arange(0, D, c))  # [D // c, b, G, g, c]
    return jnp.moveaxis(out, 0, 3).reshape(b, H * D)  # [b, G, g, D//c, c] -> h = G_i*g + g_i, d = h*D + j


def vo_score(z: jax.Array, valid: jax.Array) -> jax.Array:
    """Released V/O score `Σ_t |z_t[d]|` `[batch, H*D]` from `attn.z` `[batch, seq, H*D]`."""
    return abs_sum(z, valid)


def layer_scores(
    points: Mapping[str, jax.Array], valid: jax.Array, cfg: Any, mode: str, parts: Sequence[str] = PARTS
) -> dict[str, jax.Array]:
    """A decoder `probe`: one layer's per-document scores `{"ffn": [b, F], "qk": [b, H*D], "vo": [b, H*D]}`.

    Only `parts` are computed (the Q/K score costs `H·D·T²` per document; FFN-only PLND is
    about one forward). In `paper` mode "ffn" is `Σ_t |mlp.hidden|`; `document_scores`
    multiplies it by `‖W_down[j]‖` (a probe does not see the layer's weights).
    """
    out = {}
    if "ffn" in parts:
        hook = points["mlp.up"] if mode == "code" else points["mlp.hidden"]
        out["ffn"] = abs_sum(hook, valid)
    if "qk" in parts:
        out["qk"] = qk_score(
            points["attn.q"],
            points["attn.k"],
            points["attn.allowed"],
            valid,
            attn_scale=cfg.attn_scale,
            softcap=cfg.attn_softcap,
            bias=points.get("attn.bias"),
        )
    if "vo" in parts:
        out["vo"] = vo_score(points["attn.z"], valid)
    return out


def document_scores_fn(
    params, ids, positions, valid, *, cfg: Any, mode: str, parts: tuple[str, ...] = PARTS
) -> dict[str, jax.Array]:
    """Traced scores of every row and layer: `{"ffn": [b, L, F], "qk": [b, L, H*D], "vo": [b, L, H*D]}`."""
    _, per_layer = forward(
        params,
        ids,
        cfg,
        positions=positions,
        valid=valid,
        output="none",
        probe=lambda points, v: layer_scores(points, v, cfg, mode, parts),
    )
    if mode == "paper" and "ffn" in per_layer:  # Σ_t |hidden_j| · ‖W_down[j]‖, layer by layer
        down_norms = jnp.linalg.norm(params["layers.down"].astype(jnp.float32), axis=-1)  # [L, F]
        per_layer["ffn"] = per_layer["ffn"] * down_norms[:, None]
    return {name: jnp.moveaxis(x, 0, 1) for name, x in per_layer.items()}  # [L, b, n] -> [b, L, n]


# One compilation per (config, mode, shapes), shared by every call.
_document_scores_jit = jax.jit(document_scores_fn, static_argnames=("cfg", "mode", "parts"))


def document_scores(
    model: Any, ids: Any, valid: Any | None = None, *, mode: str = "code", parts: Sequence[str] = PARTS
) -> dict[str, np.ndarray]:
    """Host float32 scores of each row (one document per row) and layer: "ffn" `[b, L, F]`, "qk"/"vo" `[b, L, H*D]`."""
    check_mode(mode)
    parts = check_parts(parts)
    ids = model.check_ids(ids)
    b, t = ids.shape
    valid = np.ones((b, t), bool) if valid is None else np.asarray(valid, bool)
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    out = _document_scores_jit(
        model.params,
        model.place_batch(ids),
        model.place_batch(positions),
        model.place_batch(valid),
        cfg=model.config,
        mode=mode,
        parts=parts,
    )
    return {k: parallel.to_host(v) for k, v in out.items()}
