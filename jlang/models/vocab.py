"""The unembedding in vocabulary chunks: next-token log-probabilities and top-k without full logits.

The default model has a 262,144-token vocabulary: `[batch, seq, vocab]` float32
logits of one 16 x 64 batch are 1 GiB. Evaluations need only two reductions of
the logits, and both fold over vocabulary chunks exactly:

* the log-probability of one token per position,
  `log p(y) = z_y - logsumexp(z)`, with the logsumexp accumulated chunk by chunk
  (running max `m` and `s = Σ exp(z - m)`, rescaled when `m` grows);
* the top-k token ids per position (the top-k of each chunk, merged with the
  running top-k).

Both run inside `jit` as a `jax.lax.scan` over chunk indices; a chunk's logits
`[..., chunk]` are the only vocabulary-sized buffer. Each chunk goes through
`jlang.models.decoder.unembed` on a slice of the unembedding (tied `embed`
`[V, D]` rows, or `lm_head` `[D, V]` columns), so soft-capping and dtype
handling are the model's own. A chunk size that does not divide the vocabulary
is fine: the last chunk is shifted back to end at `V`, and the ids it shares
with the previous chunk are masked out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jlang.models.decoder import unembed
from jlang.models.families import ModelConfig

Array = jax.Array

DEFAULT_CHUNK = 16384


def chunk_plan(vocab_size: int, chunk: int) -> tuple[int, int]:
    """(chunk size actually used, number of chunks): the chunk is capped at the vocabulary."""
    if chunk < 1:
        raise ValueError(f"vocab_chunk must be positive, got {chunk}")
    size = min(int(chunk), int(vocab_size))
    return size, -(-int(vocab_size) // size)


def unembed_slice(params: Mapping[str, Array], x: Array, cfg: ModelConfig, start: Array, size: int) -> Array:
    """float32 logits `[..., size]` of token ids `start .. start + size - 1` (the model's `unembed` on a slice)."""
    if cfg.tie_embeddings:
        sub = {"embed": jax.lax.dynamic_slice_in_dim(params["embed"], start, size, axis=0)}
    else:
        sub = {"lm_head": jax.lax.dynamic_slice_in_dim(params["lm_head"], start, size, axis=1)}
    return unembed(sub, x, cfg)


def fold_vocab(
    params: Mapping[str, Array],
    x: Array,
    cfg: ModelConfig,
    chunk: int,
    step: Callable[[Any, Array, Array, Array], Any],
    init: Any,
) -> Any:
    """Fold `step(carry, logits [..., C], ids [C], fresh [C]) -> carry` over the vocabulary chunks of `x`.

    `fresh` is False for ids already seen in the previous chunk (only in the last
    chunk, when `C` does not divide the vocabulary); `step` must ignore them.
    """
    vocab = cfg.vocab_size
    size, n = chunk_plan(vocab, chunk)

    def body(carry, i):
        first_new = i * size
        start = jnp.minimum(first_new, vocab - size)
        ids = start + jnp.arange(size, dtype=jnp.int32)
        logits = unembed_slice(params, x, cfg, start, size)
        return step(carry, logits, ids, ids >= first_new), None

    carry, _ = jax.lax.scan(body, init, jnp.arange(n, dtype=jnp.int32))
    return carry


def target_logprob(
    params: Mapping[str, Array], x: Array, targets: Array, cfg: ModelConfig, chunk: int = DEFAULT_CHUNK
) -> Array:
    """`log softmax(unembed(x))[target]`, float32 `[...]`, for final-normed states `x [..., D]`, int `targets [...]`."""
    shape = targets.shape

    def step(carry, logits, ids, fresh):
        m, s, hit = carry
        z = jnp.where(fresh, logits, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(z, axis=-1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[..., None]), axis=-1)
        hit = hit + jnp.sum(jnp.where((ids == targets[..., None]) & fresh, logits, 0.0), axis=-1)
        return m_new, s, hit

    init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))
    m, s, hit = fold_vocab(params, x, cfg, chunk, step, init)
    return hit - (m + jnp.log(s))


def top_k(
    params: Mapping[str, Array], x: Array, cfg: ModelConfig, k: int, chunk: int = DEFAULT_CHUNK
) -> tuple[Array, Array]:
    """Top-k logits and token ids (`[..., k]` float32, int32) of `unembed(x)`, in descending order.

    Ties go to the lower id, as `jax.lax.top_k` on the full logits.
    """
    size, _ = chunk_plan(cfg.vocab_size, chunk)
    if not 1 <= k <= size:
        raise ValueError(f"k must be in [1, vocab_chunk={size}], got {k}")
    shape = x.shape[:-1] + (k,)

    def step(carry, logits, ids, fresh):
        vals, idx = carry
        z = jnp.where(fresh, logits, -jnp.inf)
        cv, ci = jax.lax.top_k(z, k)
        all_v = jnp.concatenate([vals, cv], axis=-1)  # running (lower ids) first: ties keep the lower id
        all_i = jnp.concatenate([idx, ids[ci]], axis=-1)
        v, j = jax.lax.top_k(all_v, k)
        return v, jnp.take_along_axis(all_i, j, axis=-1)

    init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.full(shape, -1, jnp.int32))
    return fold_vocab(params, x, cfg, chunk, step, init)
