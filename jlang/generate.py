"""Greedy continuation of prompts.

A fixed `[batch, prompt + new]` token buffer is run through the causal forward
once per new token; causality makes the not-yet-written tail irrelevant to the
position being predicted, so every step reuses one compiled program. This is
O(steps x length^2) work: fine for the short continuations of `jlang info` and
tests, and the reference that faster decoders are checked against.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jlang.models.decoder import Edits, forward, unembed
from jlang.models.model import Model


@functools.partial(jax.jit, static_argnames=("cfg",))
def _next_token(params, buffer, length, edits, cfg):
    hidden, _ = forward(params, buffer, cfg, edits=edits, output="hidden")
    last = jnp.take_along_axis(hidden, (length - 1)[:, None, None], axis=1)[:, 0]  # [batch, d_model]
    return jnp.argmax(unembed(params, last, cfg), axis=-1).astype(jnp.int32)


def greedy(model: Model, prompts: list[str], *, max_new_tokens: int = 20, edits: Edits | None = None) -> list[str]:
    """Greedy continuations (text after the prompt) of each prompt, stopping at EOS."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"{model.name} has no tokenizer; greedy() needs one to encode prompts")
    encoded = [tok(p)["input_ids"] for p in prompts]
    lengths = np.array([len(e) for e in encoded], np.int32)
    width = int(lengths.max()) + max_new_tokens
    buffer = np.full((len(prompts), width), tok.pad_token_id or 0, np.int32)
    for i, e in enumerate(encoded):
        buffer[i, : len(e)] = e
    eos = tok.eos_token_id
    done = np.zeros(len(prompts), bool)
    params = model.params
    for _ in range(max_new_tokens):
        nxt = np.asarray(_next_token(params, jnp.asarray(buffer), jnp.asarray(lengths), edits, model.config))
        for i in np.flatnonzero(~done):
            buffer[i, lengths[i]] = nxt[i]
            lengths[i] += 1
            done[i] |= nxt[i] == eos
        if done.all():
            break
    return [tok.decode(buffer[i, len(e) : lengths[i]], skip_special_tokens=True) for i, e in enumerate(encoded)]
