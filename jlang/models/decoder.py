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
from jlang.models.block import block
from jlang.models.families import ModelConfig
from jlang.models.layers import attention_masks, norm
from jlang.models.positions import alibi_bias, learned_positions, rope_cos_sin

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
#   mlp.up      [b, t, F]     W_up x (PLND code mode's FFN score); plain MLPs: W_in x + b, the pre-activation
#   mlp.act     [b, t, F]     the neurons: act(W_gate x), plain MLPs (BLOOM, OPT, Phi) act(W_in x + b); after edits
#   mlp.hidden  [b, t, F]     act * up, the input of `down` (plain MLPs: act)
#   mlp.out     [b, t, d_model] the MLP's output (HF `layers.N.mlp`; before Gemma's post-norm)
#   resid.post  [b, t, d_model] the residual stream after the layer
# ALiBi models (BLOOM) also have
#   attn.bias   [b, H, t]     float32 ALiBi bias `slope_h * key_position` added to every query's scores
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
    # Cohere, BLOOM, OPT, Phi
    "final_norm_bias": ("embed",),
    "embed_norm": ("embed",),
    "embed_norm_bias": ("embed",),
    "positions": (None, "embed"),
    "project_in": (None, "embed"),
    "project_out": ("embed", None),
    "lm_head_bias": ("vocab",),
    "layers.attn_norm_bias": ("layers", "embed"),
    "layers.mlp_norm_bias": ("layers", "embed"),
    "layers.q_norm_bias": ("layers", "head_dim"),
    "layers.k_norm_bias": ("layers", "head_dim"),
    "layers.q_head_norm": ("layers", None, "head_dim"),
    "layers.k_head_norm": ("layers", None, "head_dim"),
    "layers.up_bias": ("layers", "mlp"),
    "layers.down_bias": ("layers", "embed"),
}


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """jlang name -> shape of every parameter of `cfg` (jlang layout, kernels `[in, out]`)."""
    L, D, F, V = cfg.num_layers, cfg.d_model, cfg.d_ff, cfg.vocab_size
    HD, KD = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    E = cfg.embed_dim or D  # OPT's word_embed_proj_dim
    all_shapes = {
        "embed": (V, E),
        "final_norm": (D,),
        "lm_head": (E, V),
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
        "final_norm_bias": (D,),
        "embed_norm": (D,),
        "embed_norm_bias": (D,),
        "positions": (cfg.num_positions, D),
        "project_in": (E, D),
        "project_out": (D, E),
        "lm_head_bias": (V,),
        "layers.attn_norm_bias": (L, D),
        "layers.mlp_norm_bias": (L, D),
        "layers.q_norm_bias": (L, cfg.head_dim),
        "layers.k_norm_bias": (L, cfg.head_dim),
        "layers.q_head_norm": (L, cfg.num_heads, cfg.head_dim),
        "layers.k_head_norm": (L, cfg.num_kv_heads, cfg.head_dim),
        "layers.up_bias": (L, F),
        "layers.down_bias": (L, D),
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
    x = embed(params, ids, positions, cfg)
    ctx = _position_context(positions, valid, cfg)
    if cache is not None:
        slots = jnp.where(valid, positions, cache.slots)  # invalid tokens write nowhere (dropped)
        rows = jnp.arange(b)[:, None]
        written = jnp.zeros_like(cache.valid).at[rows, slots].set(True, mode="drop")
        slot_pos = jnp.broadcast_to(jnp.arange(cache.slots, dtype=positions.dtype), cache.valid.shape)
        past_g, past_l = attention_masks(positions, slot_pos, cache.valid & ~written, cfg.sliding_window)
        ctx["allowed_global"] = (past_g, *ctx["allowed_global"])
        ctx["allowed_local"] = (past_l, *ctx["allowed_local"])
        if cfg.positions == "alibi":
            ctx["alibi"] = (alibi_bias(slot_pos, cfg), *ctx["alibi"])
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
    x = final_norm(params, x, cfg)
    if output == "hidden":
        return x, probes, cache
    return unembed(params, x, cfg), probes, cache


def embed(params: Mapping[str, Array], ids: Array, positions: Array, cfg: ModelConfig) -> Array:
    """Token embeddings `[batch, seq, d_model]`: looked up (and scaled, projected, position-added, normed
    as the family does)."""
    x = jnp.take(params["embed"], ids, axis=0)
    if cfg.embed_scale:
        x = x * jnp.asarray(cfg.d_model**0.5, x.dtype)
    if cfg.embed_dim is not None:  # OPT's project_in
        x = x @ params["project_in"]
    if cfg.positions == "learned":
        x = x + learned_positions(params["positions"], positions, cfg)
    if cfg.embed_norm:  # BLOOM
        x = norm(x, params["embed_norm"], cfg, params.get("embed_norm_bias"))
    return x


def _position_context(positions: Array, valid: Array, cfg: ModelConfig) -> dict[str, Any]:
    """What every layer reads about positions: RoPE tables, allowed-masks, ALiBi biases (this call's keys)."""
    self_g, self_l = attention_masks(positions, positions, valid, cfg.sliding_window)
    ctx: dict[str, Any] = dict(allowed_global=(self_g,), allowed_local=(self_l,), valid=valid)
    if cfg.positions == "rope":
        dims = cfg.rope_dims or cfg.head_dim
        ctx["cos_local"], ctx["sin_local"] = rope_cos_sin(positions, cfg.rope_local, dims, cfg.rope_interleaved)
        if cfg.rope_on_global:
            ctx["cos_global"], ctx["sin_global"] = rope_cos_sin(positions, cfg.rope_global, dims, cfg.rope_interleaved)
        else:  # Cohere2: no RoPE on global layers (cos 1, sin 0 rotate by nothing, exactly)
            ctx["cos_global"], ctx["sin_global"] = jnp.ones_like(ctx["cos_local"]), jnp.zeros_like(ctx["sin_local"])
    elif cfg.positions == "alibi":
        ctx["alibi"] = (alibi_bias(positions, cfg),)
    return ctx


def final_norm(params: Mapping[str, Array], x: Array, cfg: ModelConfig) -> Array:
    """The final norm of the residual stream (none on post-norm OPT), then OPT's `project_out` where present."""
    if cfg.has_final_norm:
        x = norm(x, params["final_norm"], cfg, params.get("final_norm_bias"))
    if cfg.embed_dim is not None:
        x = x @ params["project_out"]
    return x


def unembed(params: Mapping[str, Array], x: Array, cfg: ModelConfig) -> Array:
    """Final-normed residual `[..., d_model]` -> float32 logits `[..., vocab]` (with Gemma's soft-cap,
    Phi's `lm_head` bias, Cohere's `logit_scale`)."""
    if cfg.tie_embeddings:
        logits = jnp.einsum("...d,vd->...v", x, params["embed"])
    else:
        logits = x @ params["lm_head"]
    if cfg.lm_head_bias:
        logits = logits + params["lm_head_bias"]
    logits = logits.astype(jnp.float32)
    if cfg.logit_scale is not None:
        logits = logits * jnp.float32(cfg.logit_scale)
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
