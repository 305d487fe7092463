"""The pieces of a decoder layer: norms, activations, rotary embeddings, attention and its masks.

Pure functions of arrays and a `ModelConfig`; `jlang.models.decoder.block` assembles
them into a layer. Attention is computed as batched matmuls over
`[batch * kv_heads, seq * group, head_dim]` (grouped-query attention without
repeating keys), over one or more key blocks (a KV cache, then this call's keys).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jlang.models.families import ModelConfig, RoPE

Array = jax.Array


def rms_norm(x: Array, w: Array, cfg: ModelConfig) -> Array:
    """RMSNorm over the last axis, computed in float32 as in transformers."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
    if cfg.norm_cast_before_weight:  # Llama: cast, then weight (in the weight's dtype)
        return (cfg.norm_offset + w) * normed.astype(x.dtype)
    return (normed * (cfg.norm_offset + w.astype(jnp.float32))).astype(x.dtype)  # Gemma: float32, then cast


def activation(x: Array, kind: str) -> Array:
    if kind == "silu":
        return jax.nn.silu(x)
    if kind == "gelu_tanh":  # PyTorch's gelu(approximate="tanh"), Gemma's GeGLU
        return jax.nn.gelu(x, approximate=True)
    return jax.nn.gelu(x, approximate=False)  # exact erf GELU; JAX defaults to tanh


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


def rope_cos_sin(positions: Array, rope: RoPE, head_dim: int) -> tuple[Array, Array]:
    """cos, sin `[batch, seq, head_dim]` in the rotate-half layout of transformers."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(rope, head_dim))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x `[batch, seq, heads, head_dim]`; cos/sin `[batch, seq, head_dim]`."""
    # rotate_half(x) = [-x2, x1] = [x2, x1] * [-1, +1]: the halves are swapped by a reverse
    # of a [2, half] view (an elementwise op XLA fuses) instead of a concatenation (a copy).
    half = x.shape[-1] // 2
    swapped = jnp.flip(x.reshape(*x.shape[:-1], 2, half), axis=-2).reshape(x.shape)
    sign = np.concatenate([-np.ones(half), np.ones(half)]).astype(np.float32)
    cos, sin = cos[:, :, None, :].astype(x.dtype), (sin * sign)[:, :, None, :].astype(x.dtype)
    return x * cos + swapped * sin


def blockwise_attention(q: Array, blocks: Sequence[tuple[Array, Array, Array]], cfg: ModelConfig) -> Array:
    """Grouped-query attention over several key/value blocks `(k, v, allowed)` with one softmax.

    q `[batch, seq, heads, head_dim]`, each block's k/v `[batch, kv_seq, kv_heads, head_dim]` and
    allowed bool `[batch, seq, kv_seq]`. Query head `h` reads kv head `h // group`
    (transformers' `repeat_kv`). Softmax in float32 -> `[batch, seq, heads * head_dim]`.

    Cached calls attend to the cache (read-only) and to this call's own keys as
    two blocks, so a decoding step never copies the cache to append one key.
    Scores are concatenated (small: `[.., seq, sum kv_seq]`), values are not.

    Both products are batched matmuls over `[batch * kv_heads]` whose rows are
    (query position, head in group): with one kv head (MQA, Gemma 3 270M) neither
    the queries nor the output are transposed, and XLA:CPU keeps its matmul
    layouts (the `bkgts` einsum made it transpose both, 1.5x slower on CPU).
    """
    b, t, h, d = q.shape
    kvh = blocks[0][0].shape[2]
    g = h // kvh
    rows = q.reshape(b, t, kvh, g, d).transpose(0, 2, 1, 3, 4).reshape(b * kvh, t * g, d)
    scores = []
    for k, _, allowed in blocks:
        s_len = k.shape[1]
        keys = k.transpose(0, 2, 1, 3).reshape(b * kvh, s_len, d)
        s = jax.lax.dot_general(rows, keys, (((2,), (2,)), ((0,), (0,)))) * jnp.asarray(cfg.attn_scale, q.dtype)
        if cfg.attn_softcap is not None:
            s = jnp.tanh(s / cfg.attn_softcap) * cfg.attn_softcap
        s = s.reshape(b, kvh, t, g, s_len).astype(jnp.float32)
        scores.append(jnp.where(allowed[:, None, :, None, :], s, jnp.finfo(jnp.float32).min))
    probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1) if len(scores) > 1 else scores[0], axis=-1)
    ends = np.cumsum([s.shape[-1] for s in scores])
    out = None
    for (_, v, _), s, end in zip(blocks, scores, ends):
        s_len = s.shape[-1]
        p = probs[..., end - s_len : end].astype(v.dtype).reshape(b * kvh, t * g, s_len)
        values = v.transpose(0, 2, 1, 3).reshape(b * kvh, s_len, d)
        o = jax.lax.dot_general(p, values, (((2,), (1,)), ((0,), (0,))))  # [b * kv, t * g, d]
        out = o if out is None else out + o
    return out.reshape(b, kvh, t, g, d).transpose(0, 2, 1, 3, 4).reshape(b, t, h * d)


def attention_masks(q_pos: Array, k_pos: Array, k_valid: Array, window: int | None) -> tuple[Array, Array]:
    """(global, local) allowed-masks `[batch, q, k]`: causal by position, valid keys,
    and for local layers `q_pos - k_pos < window` (transformers' sliding-window rule)."""
    causal = (k_pos[:, None, :] <= q_pos[:, :, None]) & k_valid[:, None, :]
    if window is None:
        return causal, causal
    return causal, causal & (q_pos[:, :, None] - k_pos[:, None, :] < window)
