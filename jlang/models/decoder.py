"""The one decoder behind every family: a Flax NNX module with stacked, scanned layers.

Parameters of the `L` layers are stacked on a leading `layers` axis and the
forward runs `jax.lax.scan` over them (MaxText's `scan_layers`), so a 32-layer
model compiles as fast as a 2-layer one and per-layer outputs (statistics,
probes) come back stacked as `[L, ...]` for free.

Everything a study needs from a forward is an argument or an output of
`forward`, never a hook that mutates state (DESIGN.md):

* `edits`: per-layer, per-neuron `a' = where(mask, a * scale + shift, a)` at
  the neuron hook point `mlp.act` (the activated gate, before `* up`);
* `edit_where`: bool `[batch, seq]`, which tokens the edits apply to (all by
  default), so an edit can be scoped to the prompt or to generated tokens;
* `edits.attn` (optional `AttnEdits`): per-layer scales of the attention
  projections' output dimensions (q, k, v) and of the concatenated head
  outputs before `o` (PLND's attention neurons); 0 deactivates a dimension;
* `probe`: a function of the named hook points of one layer (`HOOK_POINTS`)
  and the validity mask, whose (small, reduced) result is returned stacked
  over layers. XLA drops every hook point that the probe does not read;
* `splice`: `splice(point, value, layer, splice_args) -> value` replaces the
  value at `mlp.out` or `resid.post` (an SAE's reconstruction, a steering
  vector); `layer` is the traced layer index and `splice_args` a pytree of
  arrays (e.g. SAE weights), so new weights or another layer reuse the compiled program.

`forward_cached` is the same forward over a `KVCache`: prefill (a whole
prompt) and decoding (one token) are two shapes of one call.

Kernels are stored `[in, out]` (Flax); Hugging Face `Linear.weight` is `[out, in]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jlang.masks import MaskShapeError
from jlang.models.families import ModelConfig
from jlang.models.layers import activation, apply_rope, attention_masks, blockwise_attention, rms_norm, rope_cos_sin

Array = jax.Array
# probe(hook_points, valid[batch, seq]) -> any pytree of per-layer reductions.
Probe = Callable[[Mapping[str, Array], Array], Any]
# splice(point, value, layer, splice_args) -> value of the same shape, at SPLICE_POINTS.
Splice = Callable[[str, Array, Array, Any], Array]

# What a probe sees for one layer (shapes for batch b, seq t, heads H, kv heads G, head_dim D):
#   attn.q      [b, t, H, D]  queries after q-norm and RoPE (what the scores use)
#   attn.k      [b, t, G, D]  this call's keys after k-norm and RoPE (before GQA repetition)
#   attn.v      [b, t, G, D]  this call's values
#   attn.allowed bool [b, t, t] which keys each query may attend to (causal, window, valid)
#   attn.z      [b, t, H*D]   concatenated head outputs, the input of `o` (PLND's V/O dimensions)
#   attn.out    [b, t, d_model] the attention block's output added to the residual
#   mlp.in      [b, t, d_model] the normed input of the MLP
#   mlp.up      [b, t, F]     W_up x (PLND code mode's FFN score)
#   mlp.act     [b, t, F]     the neurons: act(W_gate x), after edits
#   mlp.hidden  [b, t, F]     act * up, the input of `down`
#   mlp.out     [b, t, d_model] the MLP's output (HF `layers.N.mlp`; before Gemma's post-norm)
#   resid.post  [b, t, d_model] the residual stream after the layer
HOOK_POINTS = (
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.allowed",
    "attn.z",
    "attn.out",
    "mlp.in",
    "mlp.up",
    "mlp.act",
    "mlp.hidden",
    "mlp.out",
    "resid.post",
)
SPLICE_POINTS = ("mlp.out", "resid.post")


# Logical axes of every parameter, mapped to mesh axes by `jlang.parallel.AXIS_RULES`.
LOGICAL_AXES: dict[str, tuple[str | None, ...]] = {
    "embed": ("vocab", "embed"),
    "final_norm": ("embed",),
    "lm_head": ("embed", "vocab"),
    "layers.attn_norm": ("layers", "embed"),
    "layers.q": ("layers", "embed", "heads"),
    "layers.k": ("layers", "embed", "kv_heads"),
    "layers.v": ("layers", "embed", "kv_heads"),
    "layers.o": ("layers", "heads", "embed"),
    "layers.q_bias": ("layers", "heads"),
    "layers.k_bias": ("layers", "kv_heads"),
    "layers.v_bias": ("layers", "kv_heads"),
    "layers.o_bias": ("layers", "embed"),
    "layers.q_norm": ("layers", "head_dim"),
    "layers.k_norm": ("layers", "head_dim"),
    "layers.mlp_norm": ("layers", "embed"),
    "layers.attn_post_norm": ("layers", "embed"),
    "layers.mlp_post_norm": ("layers", "embed"),
    "layers.gate": ("layers", "embed", "mlp"),
    "layers.up": ("layers", "embed", "mlp"),
    "layers.down": ("layers", "mlp", "embed"),
}


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """jlang name -> shape of every parameter of `cfg` (jlang layout, kernels `[in, out]`)."""
    L, D, F, V = cfg.num_layers, cfg.d_model, cfg.d_ff, cfg.vocab_size
    HD, KD = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    all_shapes = {
        "embed": (V, D),
        "final_norm": (D,),
        "lm_head": (D, V),
        "layers.attn_norm": (L, D),
        "layers.q": (L, D, HD),
        "layers.k": (L, D, KD),
        "layers.v": (L, D, KD),
        "layers.o": (L, HD, D),
        "layers.q_bias": (L, HD),
        "layers.k_bias": (L, KD),
        "layers.v_bias": (L, KD),
        "layers.o_bias": (L, D),
        "layers.q_norm": (L, cfg.head_dim),
        "layers.k_norm": (L, cfg.head_dim),
        "layers.mlp_norm": (L, D),
        "layers.attn_post_norm": (L, D),
        "layers.mlp_post_norm": (L, D),
        "layers.gate": (L, D, F),
        "layers.up": (L, D, F),
        "layers.down": (L, F, D),
    }
    return {name: all_shapes[name] for name in cfg.param_names()}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class AttnEdits:
    """Per-layer scales of attention dimensions; 1 keeps a dimension, 0 deactivates it.

    `q` `[L, H*D]`, `k` and `v` `[L, G*D]` scale the projections' outputs
    before bias and RoPE (= scaling rows of HF `q_proj/k_proj/v_proj.weight`);
    `o` `[L, H*D]` scales the concatenated head outputs (= columns of `o_proj.weight`).
    """

    q: Array
    k: Array
    v: Array
    o: Array

    @classmethod
    def ones(cls, num_layers: int, num_heads: int, num_kv_heads: int, head_dim: int) -> AttnEdits:
        qd, kd = num_heads * head_dim, num_kv_heads * head_dim
        return cls(
            q=jnp.ones((num_layers, qd), jnp.float32),
            k=jnp.ones((num_layers, kd), jnp.float32),
            v=jnp.ones((num_layers, kd), jnp.float32),
            o=jnp.ones((num_layers, qd), jnp.float32),
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Edits:
    """Per-layer, per-neuron edit at `mlp.act`: `a' = where(mask, a * scale + shift, a)`.

    Arrays are `[layers, neurons]`. They are data, not code: changing their
    values reuses the compiled forward. `attn` optionally scales attention
    dimensions too (PLND); None leaves attention alone.
    """

    mask: Array  # bool [L, F]
    scale: Array  # float [L, F]
    shift: Array  # float [L, F]
    attn: AttnEdits | None = None

    @classmethod
    def identity(cls, num_layers: int, num_neurons: int) -> Edits:
        return cls(
            mask=jnp.zeros((num_layers, num_neurons), bool),
            scale=jnp.ones((num_layers, num_neurons), jnp.float32),
            shift=jnp.zeros((num_layers, num_neurons), jnp.float32),
        )


def check_edits_fit(edits: Edits | None, cfg: ModelConfig, model: str | None = None) -> None:
    """Raise `MaskShapeError` unless `edits` (and their `attn` scales) are shaped for `cfg`'s layers.

    Called by every forward, so edits made for another model fail by name wherever they are
    passed (logits, statistics, generation, the evaluations) instead of XLA's broadcasting error
    or, for a model with fewer layers, silently ignoring the extra ones.
    """
    if edits is None:
        return
    L, F = cfg.num_layers, cfg.d_ff
    qd, kd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    arrays = {"mask": (edits.mask, (L, F)), "scale": (edits.scale, (L, F)), "shift": (edits.shift, (L, F))}
    if edits.attn is not None:
        a = edits.attn
        arrays |= {
            "attn.q": (a.q, (L, qd)),
            "attn.k": (a.k, (L, kd)),
            "attn.v": (a.v, (L, kd)),
            "attn.o": (a.o, (L, qd)),
        }
    expected = {name: shape for name, (_, shape) in arrays.items()}
    got = {name: tuple(np.shape(array)) for name, (array, _) in arrays.items()}
    wrong = {name: shape for name, shape in got.items() if shape != expected[name]}
    if wrong:
        what = ", ".join(f"{name} {list(shape)} (expected {list(expected[name])})" for name, shape in wrong.items())
        raise MaskShapeError(
            f"edits do not fit {model or 'the model'} with {L} layers x {F} MLP neurons: {what}; "
            "build the edits from masks made for this model (e.g. jlang.edits.deactivate(masks, lang, model=model))"
        )


# Logical axes of the cache's k and v (`jlang.parallel.AXIS_RULES` maps them to mesh axes).
CACHE_AXES: tuple[str, ...] = ("layers", "batch", "seq", "kv_heads", "head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values of all layers for `S` slots per row; slot `s` holds position `s`.

    Indexing slots by position (not by call order) makes left-padding, rows of
    different lengths and one-token decoding the same thing: a call writes its
    valid tokens at `slot = position` and attends to every valid slot with a
    position at or before its own (and inside the window on local layers).
    Sliding-window layers keep all `S` slots and mask the old ones; `S` is a
    generation's length, small next to the parameters.

    Keys are stored after RoPE (and qk-norm), as the attention reads them.
    """

    k: Array  # [L, B, S, KV, head_dim]
    v: Array  # [L, B, S, KV, head_dim]
    valid: Array  # bool [B, S]: slot written

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, slots: int, dtype: Any = jnp.float32) -> KVCache:
        shape = (cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), valid=jnp.zeros((batch, slots), bool))

    @property
    def slots(self) -> int:
        return self.valid.shape[1]


def block(
    x: Array,
    p: Mapping[str, Array],
    is_local: Array,
    edit: Edits | None,
    ctx: Mapping[str, Any],
    cfg: ModelConfig,
    probe: Probe | None,
    past_kv: tuple[Array, Array] | None = None,
    splice: Splice | None = None,
    layer: Array | None = None,
    splice_args: Any = None,
) -> tuple[Array, Any, tuple[Array, Array]]:
    """One decoder layer -> (x, probe output, this call's (k, v) `[batch, seq, kv_heads, head_dim]`).

    `p` holds this layer's slices of the stacked parameters; `past_kv` this
    layer's cache `[batch, slots, kv_heads, head_dim]`, attended as a block
    before this call's own keys (masks in `ctx`, built once by `_run`).
    """
    b, t, _ = x.shape
    hd = cfg.head_dim

    h = rms_norm(x, p["attn_norm"], cfg)
    q, k, v = h @ p["q"], h @ p["k"], h @ p["v"]
    attn_edit = None if edit is None else edit.attn
    if attn_edit is not None:
        q, k, v = (y * s.astype(y.dtype) for y, s in ((q, attn_edit.q), (k, attn_edit.k), (v, attn_edit.v)))
    if cfg.qkv_bias:
        q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    q = q.reshape(b, t, cfg.num_heads, hd)
    k = k.reshape(b, t, cfg.num_kv_heads, hd)
    v = v.reshape(b, t, cfg.num_kv_heads, hd)
    if cfg.qk_norm:
        q, k = rms_norm(q, p["q_norm"], cfg), rms_norm(k, p["k_norm"], cfg)
    cos = jnp.where(is_local, ctx["cos_local"], ctx["cos_global"])
    sin = jnp.where(is_local, ctx["sin_local"], ctx["sin_global"])
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    allowed = [jnp.where(is_local, loc, glob) for glob, loc in zip(ctx["allowed_global"], ctx["allowed_local"])]
    kv_blocks = [(k, v, allowed[-1])]
    if past_kv is not None:
        kv_blocks.insert(0, (*past_kv, allowed[0]))
    z = blockwise_attention(q, kv_blocks, cfg)  # attn.z [b, t, H*D]
    if attn_edit is not None:
        z = z * attn_edit.o.astype(z.dtype)
    h = z @ p["o"]
    if cfg.o_bias:
        h = h + p["o_bias"]
    if cfg.sandwich_norms:
        h = rms_norm(h, p["attn_post_norm"], cfg)
    x = x + h
    attn_out = h

    m = rms_norm(x, p["mlp_norm"], cfg)
    act = activation(m @ p["gate"], cfg.activation)  # mlp.act: the neurons [b, t, F]
    if edit is not None:
        act = apply_edit(act, edit, ctx.get("edit_where"))
    up = m @ p["up"]
    hidden = act * up  # mlp.hidden
    out = hidden @ p["down"]  # mlp.out
    if splice is not None:
        out = splice("mlp.out", out, layer, splice_args)
    x = x + (rms_norm(out, p["mlp_post_norm"], cfg) if cfg.sandwich_norms else out)
    if splice is not None:
        x = splice("resid.post", x, layer, splice_args)

    reduced = None
    if probe is not None:
        points = {
            "attn.q": q,
            "attn.k": k,
            "attn.v": v,
            "attn.allowed": allowed[-1],
            "attn.z": z,
            "attn.out": attn_out,
            "mlp.in": m,
            "mlp.up": up,
            "mlp.act": act,
            "mlp.hidden": hidden,
            "mlp.out": out,
            "resid.post": x,
        }
        reduced = probe(points, ctx["valid"])
    return x, reduced, (k, v)


def apply_edit(act: Array, edit: Edits, where: Array | None) -> Array:
    """`a' = where(mask & where_token, a * scale + shift, a)` for act `[batch, seq, F]`, one layer's edit `[F]`.

    `where` (bool `[batch, seq]`, None = every token) scopes the edit to some
    tokens (prompt only, generated only) without changing the compiled program.
    """
    mask = edit.mask if where is None else edit.mask & where[..., None]
    return jnp.where(mask, act * edit.scale.astype(act.dtype) + edit.shift.astype(act.dtype), act)


def forward(
    params: Mapping[str, Array],
    ids: Array,
    cfg: ModelConfig,
    *,
    positions: Array | None = None,
    valid: Array | None = None,
    edits: Edits | None = None,
    edit_where: Array | None = None,
    probe: Probe | None = None,
    splice: Splice | None = None,
    splice_args: Any = None,
    output: str = "logits",
) -> tuple[Array | None, Any]:
    """The forward pass: ids `[batch, seq]` -> (logits `[batch, seq, vocab]` float32, probes).

    Args:
      params: flat jlang-named parameters (`param_shapes`).
      positions: `[batch, seq]` token positions (default `0..seq-1`).
      valid: bool `[batch, seq]`; invalid (padding) tokens are never attended to
        and are passed to `probe` so reductions can skip them.
      edits: `Edits` with `[L, F]` arrays, applied at `mlp.act` in every layer.
      edit_where: bool `[batch, seq]`, the tokens `edits` apply to (None: all).
      probe: per-layer reduction of the hook points (`HOOK_POINTS`); its outputs come back stacked `[L, ...]`.
      splice: `splice(point, value, layer, splice_args) -> value` at `SPLICE_POINTS`
        (static: pass arrays through `splice_args`, not a closure, to reuse the compilation).
      output: "logits", "hidden" (final-normed residual `[batch, seq, d_model]`)
        or "none" (skip the unembedding: statistics passes need no logits).
    """
    out, probes, _ = _run(
        params, ids, cfg, positions, valid, edits, edit_where, probe, output, None, splice, splice_args
    )
    return out, probes


def forward_cached(
    params: Mapping[str, Array],
    ids: Array,
    cfg: ModelConfig,
    cache: KVCache,
    *,
    positions: Array,
    valid: Array | None = None,
    edits: Edits | None = None,
    edit_where: Array | None = None,
    probe: Probe | None = None,
    splice: Splice | None = None,
    splice_args: Any = None,
    output: str = "logits",
) -> tuple[Array | None, Any, KVCache]:
    """`forward` for tokens that continue what `cache` holds -> (output, probes, updated cache).

    Token `[b, i]` (if valid) is written at slot `positions[b, i]` and attends
    to the cache's valid slots at earlier-or-equal positions (windowed on local
    layers) and causally to this call's tokens. A prompt (prefill, `t` = prompt
    width) and one new token (decoding, `t` = 1) are the same call. Positions
    must lie in `[0, cache.slots)`; a slot this call writes is not read from
    the old cache, so re-running positions replaces them.
    """
    if positions is None:
        raise ValueError("forward_cached needs positions (the slots this call writes)")
    return _run(params, ids, cfg, positions, valid, edits, edit_where, probe, output, cache, splice, splice_args)


def _run(
    params: Mapping[str, Array],
    ids: Array,
    cfg: ModelConfig,
    positions: Array | None,
    valid: Array | None,
    edits: Edits | None,
    edit_where: Array | None,
    probe: Probe | None,
    output: str,
    cache: KVCache | None,
    splice: Splice | None = None,
    splice_args: Any = None,
) -> tuple[Array | None, Any, KVCache | None]:
    """The body shared by `forward` and `forward_cached` (the cache is scanned per layer as xs)."""
    check_edits_fit(edits, cfg)  # at trace time: shapes are static
    b, t = ids.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if valid is None:
        valid = jnp.ones((b, t), bool)
    dtype = params["embed"].dtype
    x = jnp.take(params["embed"], ids, axis=0)
    if cfg.embed_scale:
        x = x * jnp.asarray(cfg.d_model**0.5, dtype)
    cos_g, sin_g = rope_cos_sin(positions, cfg.rope_global, cfg.head_dim)
    cos_l, sin_l = rope_cos_sin(positions, cfg.rope_local, cfg.head_dim)
    self_g, self_l = attention_masks(positions, positions, valid, cfg.sliding_window)
    allowed_g, allowed_l = (self_g,), (self_l,)
    if cache is not None:
        slots = jnp.where(valid, positions, cache.slots)  # invalid tokens write nowhere (dropped)
        rows = jnp.arange(b)[:, None]
        written = jnp.zeros_like(cache.valid).at[rows, slots].set(True, mode="drop")
        slot_pos = jnp.broadcast_to(jnp.arange(cache.slots, dtype=positions.dtype), cache.valid.shape)
        past_g, past_l = attention_masks(positions, slot_pos, cache.valid & ~written, cfg.sliding_window)
        allowed_g, allowed_l = (past_g, self_g), (past_l, self_l)
    ctx = dict(
        cos_global=cos_g,
        sin_global=sin_g,
        cos_local=cos_l,
        sin_local=sin_l,
        allowed_global=allowed_g,
        allowed_local=allowed_l,
        valid=valid,
    )
    if edit_where is not None:
        ctx["edit_where"] = edit_where
    layer_params = {k.removeprefix("layers."): v for k, v in params.items() if k.startswith("layers.")}
    is_local = jnp.asarray(cfg.local_layers)
    past = None if cache is None else (cache.k, cache.v)

    def body(x, xs):
        p, local, edit, past_kv, layer = xs
        x, reduced, kv = block(x, p, local, edit, ctx, cfg, probe, past_kv, splice, layer, splice_args)
        return x, (reduced, kv if cache is not None else None)

    layer_index = jnp.arange(cfg.num_layers, dtype=jnp.int32)
    if isinstance(next(iter(layer_params.values())), (list, tuple)):
        # Per-layer arrays (`jlang.models.model.layer_views`): each layer reads its own weight
        # buffers in place, where a scan would copy its slice out of the stacked arrays first
        # (on CPU that copy doubles a memory-bound decoding step's traffic).
        outs = []
        for layer in range(cfg.num_layers):
            p = {k: v[layer] for k, v in layer_params.items()}
            edit, past_kv = jax.tree.map(lambda a, i=layer: a[i], (edits, past))
            x, out = body(x, (p, cfg.local_layers[layer], edit, past_kv, layer_index[layer]))
            outs.append(out)
        probes, new_kv = jax.tree.map(lambda *a: jnp.stack(a), *outs)
    else:
        x, (probes, new_kv) = jax.lax.scan(body, x, (layer_params, is_local, edits, past, layer_index))
    if cache is not None:
        cache = KVCache(
            k=cache.k.at[:, rows, slots].set(new_kv[0].astype(cache.k.dtype), mode="drop"),
            v=cache.v.at[:, rows, slots].set(new_kv[1].astype(cache.v.dtype), mode="drop"),
            valid=cache.valid | written,
        )
    if output == "none":
        return None, probes, cache
    x = rms_norm(x, params["final_norm"], cfg)
    if output == "hidden":
        return x, probes, cache
    return unembed(params, x, cfg), probes, cache


def unembed(params: Mapping[str, Array], x: Array, cfg: ModelConfig) -> Array:
    """Final-normed residual `[..., d_model]` -> float32 logits `[..., vocab]` (with Gemma's soft-cap)."""
    if cfg.tie_embeddings:
        logits = jnp.einsum("...d,vd->...v", x, params["embed"])
    else:
        logits = x @ params["lm_head"]
    logits = logits.astype(jnp.float32)
    if cfg.final_softcap is not None:
        logits = jnp.tanh(logits / cfg.final_softcap) * cfg.final_softcap
    return logits


# ----------------------------------------------------------------------------- NNX module


class Decoder(nnx.Module):
    """The parameters of one model, as an NNX module; `__call__` is `forward`.

    Parameter names are jlang's (`LOGICAL_AXES`); stacked layer parameters live
    in `self.layers`, whose attributes drop the `layers.` prefix.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype: Any = jnp.float32, init_std: float = 0.02):
        self.cfg = cfg
        self.layers = nnx.Dict()
        for name, shape in param_shapes(cfg).items():
            if name.endswith("norm"):  # norm scales start at 1 (stored as 0 where the family adds 1)
                value = jnp.full(shape, 1.0 - cfg.norm_offset, dtype)
            elif name.endswith("bias"):
                value = jnp.zeros(shape, dtype)
            else:
                value = (init_std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
            self._set(name, nnx.Param(value))

    def _set(self, name: str, value: nnx.Param) -> None:
        if name.startswith("layers."):
            self.layers[name.removeprefix("layers.")] = value
        else:
            setattr(self, name, value)

    def params(self) -> dict[str, Array]:
        """Flat jlang-named parameter arrays."""
        out = {}
        for name in param_shapes(self.cfg):
            holder = self.layers[name.removeprefix("layers.")] if name.startswith("layers.") else getattr(self, name)
            out[name] = holder[...]
        return out

    def __call__(self, ids: Array, **kwargs) -> tuple[Array | None, Any]:
        return forward(self.params(), ids, self.cfg, **kwargs)
