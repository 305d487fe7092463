"""The pieces of a decoder layer: norms, activations, attention and its masks (positions: `jlang.models.positions`).

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

from jlang.models.families import ModelConfig

Array = jax.Array


def norm(x: Array, w: Array, cfg: ModelConfig, b: Array | None = None) -> Array:
    """The family's norm over the last axis: RMSNorm, or LayerNorm (mean-centred, bias `b` if any).

    LayerNorm is computed in float32 and cast back, as Cohere's `CohereLayerNorm` does
    (torch's `nn.LayerNorm` of BLOOM, OPT and Phi gives the same in float32).
    """
    if cfg.norm_kind == "rms":
        return rms_norm(x, w, cfg)
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    normed = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + cfg.norm_eps)
    out = normed * w.astype(jnp.float32)
    if b is not None:
        out = out + b.astype(jnp.float32)
    return out.astype(x.dtype)


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
    if kind == "relu":  # OPT
        return jax.nn.relu(x)
    if kind == "gelu_tanh":  # PyTorch's gelu(approximate="tanh"), Gemma's GeGLU
        return jax.nn.gelu(x, approximate=True)
    return jax.nn.gelu(x, approximate=False)  # exact erf GELU; JAX defaults to tanh


def blockwise_attention(
    q: Array, blocks: Sequence[tuple[Array, Array, Array]], cfg: ModelConfig, biases: Sequence[Array] | None = None
) -> Array:
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

    `biases` (ALiBi): per block a float32 `[batch, heads, kv_seq]` added to every query's scores.
    """
    b, t, h, d = q.shape
    kvh = blocks[0][0].shape[2]
    g = h // kvh
    rows = q.reshape(b, t, kvh, g, d).transpose(0, 2, 1, 3, 4).reshape(b * kvh, t * g, d)
    scores = []
    for i, (k, _, allowed) in enumerate(blocks):
        s_len = k.shape[1]
        keys = k.transpose(0, 2, 1, 3).reshape(b * kvh, s_len, d)
        s = jax.lax.dot_general(rows, keys, (((2,), (2,)), ((0,), (0,)))) * jnp.asarray(cfg.attn_scale, q.dtype)
        if cfg.attn_softcap is not None:
            s = jnp.tanh(s / cfg.attn_softcap) * cfg.attn_softcap
        s = s.reshape(b, kvh, t, g, s_len).astype(jnp.float32)
        if biases is not None:
            s = s + biases[i].reshape(b, kvh, g, s_len)[:, :, None]
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
