"""Position encodings: rotary (full, partial, interleaved), ALiBi biases and learned tables.

* RoPE (Llama and most families): `rope_cos_sin` and `apply_rope`. Phi rotates only
  the first `rope_dims` of each head (`partial_rotary_factor`); Cohere rotates
  interleaved pairs `(2i, 2i+1)` (its `rotate_half` and `repeat_interleave`) where
  Llama rotates the two halves; Cohere2's global layers use none.
* ALiBi (BLOOM): a per-head bias `slope_h * key_position` added to the scores
  (transformers' `build_alibi_tensor`: positions from the cumulative sum of the
  attention mask, which jlang's positions are; the query's own position cancels in
  the softmax). Slopes for a head count that is not a power of two interleave a
  second geometric series (`alibi_slopes`).
* learned (OPT): row `position + offset` of a table added to the embeddings.

Pure functions of arrays and a `ModelConfig`, like `jlang.models.layers`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jlang.models.families import ModelConfig, RoPE

Array = jax.Array


def rope_inv_freq(rope: RoPE, head_dim: int) -> np.ndarray:
    """Inverse frequencies `[head_dim // 2]`, as transformers' ROPE_INIT_FUNCTIONS compute them."""
    inv_freq = 1.0 / (rope.theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    if rope.kind == "linear":
        inv_freq = inv_freq / rope.factor
    elif rope.kind == "llama3":
        low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
        high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
        wavelen = 2 * np.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def rope_cos_sin(positions: Array, rope: RoPE, head_dim: int, interleaved: bool = False) -> tuple[Array, Array]:
    """cos, sin `[batch, seq, head_dim]` (`head_dim`: the rotated dimensions), in transformers' layout:
    frequencies repeated as two halves, or each twice in a row when `interleaved` (Cohere)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(rope, head_dim))
    emb = jnp.repeat(freqs, 2, axis=-1) if interleaved else jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array, cfg: ModelConfig | None = None) -> Array:
    """x `[batch, seq, heads, head_dim]`; cos/sin `[batch, seq, rope_dims]` (`rope_cos_sin`).

    With `cfg.rope_dims` (partial rotary, Phi) only the first `rope_dims` dimensions rotate, the rest
    pass. Interleaved RoPE (Cohere) is computed in float32 and cast back, as Cohere's `apply_rotary_pos_emb`.
    """
    if cfg is None or (cfg.rope_dims is None and not cfg.rope_interleaved):
        return _rotate(x, cos, sin, interleaved=False)
    if cfg.rope_dims is not None:
        r = cfg.rope_dims
        return jnp.concatenate([_rotate(x[..., :r], cos, sin, cfg.rope_interleaved), x[..., r:]], axis=-1)
    return _rotate(x.astype(jnp.float32), cos, sin, interleaved=True).astype(x.dtype)


def _rotate(x: Array, cos: Array, sin: Array, interleaved: bool) -> Array:
    half = x.shape[-1] // 2
    if interleaved:
        # Cohere's rotate_half: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)
        swapped = jnp.flip(x.reshape(*x.shape[:-1], half, 2), axis=-1).reshape(x.shape)
        sign = np.tile(np.array([-1.0, 1.0], np.float32), half)
    else:
        # rotate_half(x) = [-x2, x1] = [x2, x1] * [-1, +1]: the halves are swapped by a reverse
        # of a [2, half] view (an elementwise op XLA fuses) instead of a concatenation (a copy).
        swapped = jnp.flip(x.reshape(*x.shape[:-1], 2, half), axis=-2).reshape(x.shape)
        sign = np.concatenate([-np.ones(half), np.ones(half)]).astype(np.float32)
    cos, sin = cos[:, :, None, :].astype(x.dtype), (sin * sign)[:, :, None, :].astype(x.dtype)
    return x * cos + swapped * sin


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi slopes `[heads]` float32, as transformers' BLOOM `_get_alibi_slopes` computes them."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = np.float32(2 ** (-(2 ** -(math.log2(closest) - 3))))
    slopes = base ** np.arange(1, 1 + closest, dtype=np.float32)
    if closest != num_heads:
        extra_base = np.float32(2 ** (-(2 ** -(math.log2(2 * closest) - 3))))
        remaining = min(closest, num_heads - closest)
        slopes = np.concatenate([slopes, extra_base ** np.arange(1, 1 + 2 * remaining, 2, dtype=np.float32)])
    return slopes.astype(np.float32)


def alibi_bias(key_positions: Array, cfg: ModelConfig) -> Array:
    """float32 `[batch, heads, keys]`: `slope_h * key_position`, the bias every query adds to its scores."""
    return jnp.asarray(alibi_slopes(cfg.num_heads))[None, :, None] * key_positions.astype(jnp.float32)[:, None, :]


def learned_positions(table: Array, positions: Array, cfg: ModelConfig) -> Array:
    """Rows `position + offset` of the learned table `[num_positions, d_model]` (OPT), for positions `[b, t]`.

    Padding tokens may carry any position; they are clipped into the table (their outputs are never read).
    """
    rows = jnp.clip(positions + cfg.position_offset, 0, cfg.num_positions - 1)
    return jnp.take(table, rows, axis=0)
