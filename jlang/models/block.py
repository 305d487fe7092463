"""One decoder layer, assembled from `jlang.models.layers` and `jlang.models.positions` by the config's switches.

The switches are static Python values of `ModelConfig`, so each family traces to
its own ops and nothing else (a Llama layer has no zero biases, identity norms or
position branches):

* pre-norm (`x + f(norm(x))`, Llama and most) or post-norm (`norm(x + f(x))`, OPT-350m);
  BLOOM's `residual_from_norm` adds the block to the normed input instead of `x`;
* sequential (attention, then the MLP on the updated residual) or parallel
  (`x + attn(h) + mlp(h)`, `h = norm(x)`: Cohere, Phi);
* positions: RoPE (full, partial, interleaved; none on Cohere2's global layers),
  ALiBi biases (BLOOM), or none here (OPT's learned table is added to the embeddings);
* gated MLP `down(act(gate x) * up x)` or plain `down(act(up x + b) ) + b` (BLOOM, OPT, Phi).
  Either way the neurons (`mlp.act`) are the activation's output, where LAPE hooks.

`jlang.models.decoder` scans this over the stacked layers and documents the hook points.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jlang.models.families import ModelConfig
from jlang.models.layers import activation, blockwise_attention, norm, rms_norm
from jlang.models.positions import apply_rope

Array = jax.Array


def apply_edit(act: Array, edit: Any, where: Array | None) -> Array:
    """`a' = where(mask & where_token, a * scale + shift, a)` for act `[batch, seq, F]`, one layer's edit `[F]`.

    `where` (bool `[batch, seq]`, None = every token) scopes the edit to some
    tokens (prompt only, generated only) without changing the compiled program.
    """
    mask = edit.mask if where is None else edit.mask & where[..., None]
    return jnp.where(mask, act * edit.scale.astype(act.dtype) + edit.shift.astype(act.dtype), act)


def attention(
    h: Array,
    p: Mapping[str, Array],
    is_local: Array,
    attn_edit: Any,
    ctx: Mapping[str, Any],
    cfg: ModelConfig,
    past_kv: tuple[Array, Array] | None,
) -> tuple[Array, dict[str, Array]]:
    """Self-attention of the normed input `h` -> (output `[b, t, d_model]`, its hook points incl. `k`, `v`)."""
    b, t, _ = h.shape
    hd = cfg.head_dim
    q, k, v = h @ p["q"], h @ p["k"], h @ p["v"]
    if attn_edit is not None:
        q, k, v = (y * s.astype(y.dtype) for y, s in ((q, attn_edit.q), (k, attn_edit.k), (v, attn_edit.v)))
    if cfg.qkv_bias:
        q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    q = q.reshape(b, t, cfg.num_heads, hd)
    k = k.reshape(b, t, cfg.num_kv_heads, hd)
    v = v.reshape(b, t, cfg.num_kv_heads, hd)
    if cfg.qk_norm and cfg.qk_norm_per_head:  # Cohere: weights [heads, head_dim]
        q, k = norm(q, p["q_head_norm"], cfg), norm(k, p["k_head_norm"], cfg)
    elif cfg.qk_norm:
        q, k = norm(q, p["q_norm"], cfg, p.get("q_norm_bias")), norm(k, p["k_norm"], cfg, p.get("k_norm_bias"))
    if cfg.positions == "rope":
        cos = jnp.where(is_local, ctx["cos_local"], ctx["cos_global"])
        sin = jnp.where(is_local, ctx["sin_local"], ctx["sin_global"])
        q, k = apply_rope(q, cos, sin, cfg), apply_rope(k, cos, sin, cfg)
    allowed = [jnp.where(is_local, loc, glob) for glob, loc in zip(ctx["allowed_global"], ctx["allowed_local"])]
    kv_blocks = [(k, v, allowed[-1])]
    if past_kv is not None:
        kv_blocks.insert(0, (*past_kv, allowed[0]))
    z = blockwise_attention(q, kv_blocks, cfg, ctx.get("alibi"))  # attn.z [b, t, H*D]
    if attn_edit is not None:
        z = z * attn_edit.o.astype(z.dtype)
    out = z @ p["o"]
    if cfg.o_bias:
        out = out + p["o_bias"]
    points = {"attn.q": q, "attn.k": k, "attn.v": v, "attn.allowed": allowed[-1], "attn.z": z}
    if cfg.positions == "alibi":
        points["attn.bias"] = ctx["alibi"][-1]
    return out, points


def mlp(m: Array, p: Mapping[str, Array], edit: Any, ctx: Mapping[str, Any], cfg: ModelConfig) -> dict[str, Array]:
    """The MLP of its normed input `m` -> hook points `mlp.up`, `mlp.act` (the neurons, after edits),
    `mlp.hidden` (the input of `down`) and `mlp.out`."""
    if cfg.gated_mlp:
        act = activation(m @ p["gate"], cfg.activation)  # act(W_gate x)
        if edit is not None:
            act = apply_edit(act, edit, ctx.get("edit_where"))
        up = m @ p["up"]
        hidden = act * up
    else:
        up = m @ p["up"]  # W_in x + b, the pre-activation
        if cfg.mlp_bias:
            up = up + p["up_bias"]
        act = activation(up, cfg.activation)
        if edit is not None:
            act = apply_edit(act, edit, ctx.get("edit_where"))
        hidden = act
    out = hidden @ p["down"]
    if cfg.mlp_bias:
        out = out + p["down_bias"]
    return {"mlp.up": up, "mlp.act": act, "mlp.hidden": hidden, "mlp.out": out}


def block(
    x: Array,
    p: Mapping[str, Array],
    is_local: Array,
    edit: Any,
    ctx: Mapping[str, Any],
    cfg: ModelConfig,
    probe: Any,
    past_kv: tuple[Array, Array] | None = None,
    splice: Any = None,
    layer: Array | None = None,
    splice_args: Any = None,
) -> tuple[Array, Any, tuple[Array, Array]]:
    """One decoder layer -> (x, probe output, this call's (k, v) `[batch, seq, kv_heads, head_dim]`).

    `p` holds this layer's slices of the stacked parameters; `edit` this layer's `Edits` (or None);
    `past_kv` this layer's cache `[batch, slots, kv_heads, head_dim]`, attended as a block before this
    call's own keys (masks, RoPE tables and ALiBi biases in `ctx`, built once by the decoder).
    """
    h = x if cfg.post_norm else norm(x, p["attn_norm"], cfg, p.get("attn_norm_bias"))
    attn_out, points = attention(h, p, is_local, None if edit is None else edit.attn, ctx, cfg, past_kv)
    if cfg.sandwich_norms:
        attn_out = rms_norm(attn_out, p["attn_post_norm"], cfg)
    if cfg.parallel_residual:  # Cohere, Phi: attention and MLP both read h
        m = h
    else:
        x = (h if cfg.residual_from_norm else x) + attn_out
        if cfg.post_norm:
            x = m = norm(x, p["attn_norm"], cfg, p.get("attn_norm_bias"))
        else:
            m = norm(x, p["mlp_norm"], cfg, p.get("mlp_norm_bias"))
    mlp_points = mlp(m, p, edit, ctx, cfg)
    out = mlp_points["mlp.out"]
    if splice is not None:
        out = mlp_points["mlp.out"] = splice("mlp.out", out, layer, splice_args)
    if cfg.sandwich_norms:
        out = rms_norm(out, p["mlp_post_norm"], cfg)
    if cfg.parallel_residual:
        x = x + attn_out + out
    else:
        x = (m if cfg.residual_from_norm else x) + out
        if cfg.post_norm:
            x = norm(x, p["mlp_norm"], cfg, p.get("mlp_norm_bias"))
    if splice is not None:
        x = splice("resid.post", x, layer, splice_args)

    reduced = None
    if probe is not None:
        reduced = probe({**points, "attn.out": attn_out, "mlp.in": m, **mlp_points, "resid.post": x}, ctx["valid"])
    return x, reduced, (points["attn.k"], points["attn.v"])
