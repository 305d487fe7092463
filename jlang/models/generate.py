"""Text generation over a KV cache: one jitted prefill, one jitted decoding loop.

The papers generate with `temperature=0, repetition_penalty=1.1`, stop strings
(`"\\nQ:"`, `"\\nA:"`) and up to 256-2048 new tokens while neurons are edited
(methods.md §1.2, §5.4-5.5). `generate` does that with:

* a prefill: the left-padded prompts `[batch, width]` through
  `forward_cached`, which fills a `KVCache` whose slot `s` holds position `s`
  (positions of each row start at 0 at its first real token, so padding is
  invisible and batched rows give the same text as rows run one by one);
* a decoding loop: `jax.lax.while_loop` over one-token `forward_cached` calls,
  inside one jitted program that stops early once every row is done (EOS).
  Stop strings need the tokenizer, so with stop strings the loop runs in chunks
  of `STOP_CHECK_EVERY` tokens and the host checks the text between chunks.

Interventions ride along every forward of both: neuron `edits`, and a decoder
`splice` (`jlang.models.decoder`; e.g. an SAE steering vector added at a hook
point) whose per-prompt `splice_args` are cut into batches like the prompts.
Each has a scope (`SCOPES`), the tokens it acts on, given to the splice as
`splice_args["where"]` (bool `[batch, tokens of this call]`).

Sampling settings, edits, splice arguments and the scopes are traced data:
changing them reuses the compiled programs. What is static: the shapes (batch,
prompt width rounded up to `WIDTH_MULTIPLE`, `max_new_tokens`), greedy vs
sampling, `top_k`, whether `top_p` is used, and the splice function.

On several processes (`jlang.parallel.distributed`, the model on a mesh over every
process's devices) every process passes the same prompts: each batch is split
over all devices (`place_whole_batch`) and the generated tokens are gathered
back, so every process returns the continuations of a single-process run.

`greedy_reference` is the old full-recomputation greedy decoder, kept as the
reference the cached decoder is tested against.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlang import parallel
from jlang.models.decoder import (
    CACHE_AXES,
    Edits,
    KVCache,
    Splice,
    check_edits_fit,
    forward,
    forward_cached,
    unembed,
)
from jlang.models.families import ModelConfig
from jlang.models.model import Model
from jlang.parallel import distributed

Array = jax.Array

# The tokens an edit or a splice acts on: every token, the prompt's (prefill), the generated
# ones (decoding steps), or the prompt's last token only (SAE-LAPE's `..._last_token` steering).
SCOPES = ("all", "prompt", "generated", "last")
# Prompt widths are rounded up to a multiple of this, so prompts of similar
# length share a compiled prefill (left-padding does not change the result).
WIDTH_MULTIPLE = 8
# With stop strings, the host checks the text every this many tokens.
STOP_CHECK_EVERY = 16


# ----------------------------------------------------------------------------- sampling


@dataclasses.dataclass(frozen=True)
class Sampler:
    """The static part of the sampling settings (changing these recompiles)."""

    greedy: bool
    top_k: int | None  # static: `jax.lax.top_k` needs a static k
    use_top_p: bool  # static: top-p sorts the vocabulary, skipped when off


def repetition_penalty(logits: Array, seen: Array, penalty: Array) -> Array:
    """transformers' `RepetitionPenaltyLogitsProcessor`: for tokens already in the text
    (prompt included), positive logits are divided by `penalty`, negative ones multiplied.

    logits float32 `[batch, vocab]`, seen bool `[batch, vocab]`; penalty 1 is exact identity.
    """
    penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalized, logits)


def choose_tokens(logits: Array, key: Array, knobs: dict[str, Array], sampler: Sampler) -> Array:
    """Next tokens `[batch]` from float32 logits `[batch, vocab]` (after the penalty).

    transformers' order: temperature, then top-k, then top-p (keep the smallest
    prefix of the sorted distribution whose mass reaches `top_p`, at least one
    token), then a categorical draw.
    """
    if sampler.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / knobs["temperature"]
    if sampler.top_k is not None:
        logits, index = jax.lax.top_k(logits, min(sampler.top_k, logits.shape[-1]))  # sorted, descending
    elif sampler.use_top_p:
        index = jnp.argsort(-logits, axis=-1)
        logits = jnp.take_along_axis(logits, index, axis=-1)
    else:
        index = None
    if sampler.use_top_p:
        probs = jax.nn.softmax(logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        logits = jnp.where(mass_before < knobs["top_p"], logits, -jnp.inf)
    choice = jax.random.categorical(key, logits, axis=-1)
    if index is not None:
        choice = jnp.take_along_axis(index, choice[:, None], axis=-1)[:, 0]
    return choice.astype(jnp.int32)


# ----------------------------------------------------------------------------- the jitted programs


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    """Everything the decoding loop carries; rows are sequences."""

    cache: KVCache
    last: Array  # int32 [B]: the newest token, fed at the next step
    pos: Array  # int32 [B]: its position
    done: Array  # bool [B]: EOS produced, stop string seen, or a padding row
    seen: Array  # bool [B, V]: tokens in the text so far (repetition penalty)
    out: Array  # int32 [B, N]: generated tokens, -1 after a row is done
    step: Array  # int32 []: tokens generated so far (columns of `out` written)


def _emit(state: DecodeState, logits: Array, is_eos: Array, key: Array, knobs, sampler: Sampler) -> DecodeState:
    """Choose this step's tokens from last-position logits `[B, V]` and record them."""
    logits = repetition_penalty(logits, state.seen, knobs["penalty"])
    token = choose_tokens(logits, jax.random.fold_in(key, state.step), knobs, sampler)
    token = jnp.where(state.done, -1, token)
    rows = jnp.arange(token.shape[0])
    return dataclasses.replace(
        state,
        last=jnp.maximum(token, 0),
        pos=state.pos + 1,
        done=state.done | is_eos[jnp.maximum(token, 0)],
        seen=state.seen.at[rows, jnp.where(token < 0, state.seen.shape[1], token)].set(True, mode="drop"),
        out=state.out.at[:, state.step].set(token),
        step=state.step + 1,
    )


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["edits", "edit_where", "splice_args"], meta_fields=["splice"]
)
@dataclasses.dataclass(frozen=True)
class Interventions:
    """What acts on one forward (`forward_cached`'s arguments of these names); the splice is static."""

    edits: Edits | None
    edit_where: Array  # bool [B, T]: the tokens of this call the edits act on
    splice: Splice | None = None
    splice_args: Any = None  # the splice's rows of this batch, and "where" (as edit_where)


@functools.partial(jax.jit, static_argnames=("cfg", "sampler", "max_new_tokens", "cache_sharding"))
def prefill(
    params,
    ids,
    valid,
    row_done,
    is_eos,
    key,
    knobs,
    acts: Interventions,
    *,
    cfg: ModelConfig,
    sampler: Sampler,
    max_new_tokens: int,
    cache_sharding=None,
) -> DecodeState:
    """Run left-padded prompts ids `[B, T]` into a fresh cache and choose the first new token."""
    b, t = ids.shape
    cache = KVCache.empty(cfg, b, t + max_new_tokens, params["embed"].dtype)
    if cache_sharding is not None:
        kv = jax.lax.with_sharding_constraint(cache.k, cache_sharding)
        cache = dataclasses.replace(cache, k=kv, v=jax.lax.with_sharding_constraint(cache.v, cache_sharding))
    positions = jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
    hidden, _, cache = forward_cached(
        params,
        ids,
        cfg,
        cache,
        positions=positions,
        valid=valid,
        **vars(acts),
        output="hidden",
    )
    logits = unembed(params, hidden[:, -1], cfg)
    rows = jnp.arange(b)[:, None]
    state = DecodeState(
        cache=cache,
        last=ids[:, -1],
        pos=positions[:, -1],
        done=row_done,
        seen=jnp.zeros((b, cfg.vocab_size), bool)
        .at[rows, jnp.where(valid, ids, cfg.vocab_size)]
        .set(True, mode="drop"),
        out=jnp.full((b, max_new_tokens), -1, jnp.int32),
        step=jnp.zeros((), jnp.int32),
    )
    return _emit(state, logits, is_eos, key, knobs, sampler)


@functools.partial(jax.jit, static_argnames=("cfg", "sampler"), donate_argnames=("state",))
def decode(
    params, state: DecodeState, limit, is_eos, key, knobs, acts: Interventions, *, cfg: ModelConfig, sampler: Sampler
) -> DecodeState:
    """Generate one token per iteration until `limit` tokens are out or every row is done (`acts` of `[B, 1]`)."""

    def running(s: DecodeState) -> Array:
        return (s.step < limit) & ~jnp.all(s.done)

    def step(s: DecodeState) -> DecodeState:
        hidden, _, cache = forward_cached(
            params,
            s.last[:, None],
            cfg,
            s.cache,
            positions=s.pos[:, None],
            **vars(acts),
            output="hidden",
        )
        logits = unembed(params, hidden[:, 0], cfg)
        return _emit(dataclasses.replace(s, cache=cache), logits, is_eos, key, knobs, sampler)

    return jax.lax.while_loop(running, step, state)


# ----------------------------------------------------------------------------- host side


def _encode(model: Model, prompts: Sequence[str] | Sequence[Sequence[int]] | np.ndarray) -> list[np.ndarray]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings (or of token-id lists), not one string: use [prompt]")
    if isinstance(prompts, np.ndarray) and prompts.ndim == 2:
        prompts = list(prompts)
    if len(prompts) and isinstance(prompts[0], str):
        if model.tokenizer is None:
            raise ValueError(f"{model.name} has no tokenizer; pass token ids instead of strings")
        rows = [np.asarray(model.tokenizer(p)["input_ids"], np.int32) for p in prompts]
    else:
        rows = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
    for i, r in enumerate(rows):
        if r.size == 0:
            raise ValueError(f"prompt {i} is empty (no tokens); generation needs at least one token")
        if r.min() < 0 or r.max() >= model.config.vocab_size:
            raise ValueError(f"prompt {i}: token ids must lie in [0, {model.config.vocab_size})")
    return rows


def eos_ids(model: Model) -> np.ndarray:
    """Every id that ends a sequence: the tokenizer's EOS and the checkpoint's `eos_token_id`(s)."""
    ids = set()
    if model.tokenizer is not None and model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    config_eos = (model.hf_config or {}).get("eos_token_id")
    for e in config_eos if isinstance(config_eos, (list, tuple)) else [config_eos]:
        if e is not None:
            ids.add(int(e))
    return np.array(sorted(ids), np.int32)


def _left_pad(rows: list[np.ndarray], batch: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """ids, valid `[batch, width]`: rows right-aligned; missing rows copy row 0 (dropped later)."""
    ids = np.zeros((batch, width), np.int32)
    valid = np.zeros((batch, width), bool)
    for i in range(batch):
        r = rows[i] if i < len(rows) else rows[0]
        ids[i, width - len(r) :] = r
        valid[i, width - len(r) :] = True
    return ids, valid


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None


def _cut(tokens: np.ndarray, eos: np.ndarray) -> np.ndarray:
    """Generated tokens up to (not including) the first EOS or the end marker -1."""
    end = np.flatnonzero((tokens < 0) | np.isin(tokens, eos))
    return tokens[: end[0]] if end.size else tokens


def _scope_where(scope: str, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tokens `scope` covers: bool `[B, T]` of the left-padded prompts (prefill), bool `[B, 1]` of each step."""
    b, t = valid.shape
    prompt = {
        "all": valid,
        "prompt": valid,
        "generated": np.zeros_like(valid),
        "last": valid & (np.arange(t) == t - 1),
    }[scope]
    return prompt, np.full((b, 1), scope in ("all", "generated"))


def _per_prompt(splice, splice_args, n: int) -> dict | None:
    """`splice_args` checked, as host arrays: a mapping of arrays with one row per prompt (None without a splice)."""
    if splice is None:
        if splice_args is not None:
            raise ValueError("splice_args without a splice")
        return None
    if not isinstance(splice_args, Mapping | None):
        raise TypeError(f"splice_args must be a mapping of per-prompt arrays, got {type(splice_args).__name__}")
    args = jax.tree.map(np.asarray, dict(splice_args or {}))
    if "where" in args:
        raise ValueError('splice_args["where"] is set by generate (the tokens of splice_scope); use another key')
    for path, leaf in jax.tree_util.tree_leaves_with_path(args):
        if np.shape(leaf)[:1] != (n,):
            raise ValueError(
                f"splice_args{jax.tree_util.keystr(path)} needs one row per prompt ({n}): {np.shape(leaf)}"
            )
    return args


def _interventions(
    valid: np.ndarray, place, edits: Edits | None, scope: str, splice: Splice | None, splice_args, splice_scope: str
) -> tuple[Interventions, Interventions]:
    """What acts on the prefill (`[B, T]`) and on each decoding step (`[B, 1]`) of one batch.

    `splice_args` holds the batch's prompts' rows; padding rows (dropped later) repeat them.
    """
    edit_prompt, edit_step = (place(w) for w in _scope_where(scope, valid))
    if splice is None:
        return Interventions(edits, edit_prompt), Interventions(edits, edit_step)
    rows = np.arange(valid.shape[0])
    args = jax.tree.map(lambda a: place(a[rows % len(a)]), splice_args)
    splice_prompt, splice_step = (place(w) for w in _scope_where(splice_scope, valid))
    return (
        Interventions(edits, edit_prompt, splice, {**args, "where": splice_prompt}),
        Interventions(edits, edit_step, splice, {**args, "where": splice_step}),
    )


def _run_batch(
    model: Model,
    rows: list[np.ndarray],
    *,
    max_new_tokens: int,
    sampler: Sampler,
    knobs: dict,
    key: Array,
    eos: np.ndarray,
    edits: Edits | None,
    scope: str,
    splice: Splice | None,
    splice_args: dict | None,
    splice_scope: str,
    stop: Sequence[str],
    chunk: int | None,
) -> list[np.ndarray]:
    """Generated token ids of each row (cut at EOS), for one batch of prompts (`splice_args`: their rows)."""
    batch = parallel.pad_batch_to(len(rows), model.mesh)
    width = -(-max(len(r) for r in rows) // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    ids, valid = _left_pad(rows, batch, width)
    row_done = np.arange(batch) >= len(rows)
    cache_sharding = None
    if model.mesh is not None:
        shape = (model.num_layers, batch, width + max_new_tokens, model.config.num_kv_heads, model.config.head_dim)
        cache_sharding = parallel.named_sharding(shape, CACHE_AXES, model.mesh)
    params, cfg = model.params, model.config
    place = functools.partial(distributed.place_whole_batch, model)  # the same prompts on every process
    is_eos = jnp.zeros(cfg.vocab_size, bool).at[eos].set(True, mode="drop")  # [V]: any count of EOS ids, one shape
    prompt_acts, step_acts = _interventions(valid, place, edits, scope, splice, splice_args, splice_scope)
    state = prefill(
        params,
        place(ids),
        place(valid),
        place(row_done),
        is_eos,
        key,
        knobs,
        prompt_acts,
        cfg=cfg,
        sampler=sampler,
        max_new_tokens=max_new_tokens,
        cache_sharding=cache_sharding,
    )
    if stop and chunk is None:
        chunk = STOP_CHECK_EVERY
    chunk = chunk or max_new_tokens
    decode_params = model.unstacked_params()  # one CPU device: per-layer views, no weight copy per decoding step
    while True:
        step, done = int(parallel.to_host(state.step)), np.array(parallel.to_host(state.done))
        if stop:  # mark rows whose text already holds a stop string as done
            out = parallel.to_host(state.out)
            for i in np.flatnonzero(~done[: len(rows)]):
                if _first_stop(model.tokenizer.decode(_cut(out[i], eos), skip_special_tokens=True), stop) is not None:
                    done[i] = True
            state = dataclasses.replace(state, done=place(done))
        if step >= max_new_tokens or done.all():
            break
        limit = jnp.asarray(min(step + chunk, max_new_tokens), jnp.int32)
        state = decode(decode_params, state, limit, is_eos, key, knobs, step_acts, cfg=cfg, sampler=sampler)
    out = parallel.to_host(state.out)
    return [_cut(out[i], eos) for i in range(len(rows))]


def generate(
    model: Model,
    prompts: Sequence[str] | Sequence[Sequence[int]] | np.ndarray,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop: Sequence[str] = (),
    edits: Edits | None = None,
    edit_scope: str = "all",
    splice: Splice | None = None,
    splice_args: Mapping[str, Any] | None = None,
    splice_scope: str = "all",
    seed: int = 0,
    batch_size: int | None = None,
    chunk: int | None = None,
) -> list[str]:
    """Continue each prompt; return the text after the prompt, cut at the first stop string.

    Args:
      prompts: strings (tokenized as the tokenizer does by default, e.g. with
        BOS), or token-id sequences.
      max_new_tokens: at most this many new tokens per prompt; EOS (the
        tokenizer's and the config's `eos_token_id`s) ends a sequence early.
      temperature: 0 is greedy (argmax); otherwise logits are divided by it and sampled.
      top_k, top_p: sampling filters (transformers' semantics); ignored when greedy.
      repetition_penalty: transformers' semantics on every token already in
        the text, prompt included (padding excluded); 1.0 is off.
      stop: strings that end a continuation; the text is cut before the first one.
      edits: neuron edits at `mlp.act` (`Edits`, `[L, F]`).
      edit_scope: the tokens the edits act on (`SCOPES`): "all" of them, the
        "prompt" only (prefill), the "generated" ones only (decoding steps), or
        the prompt's "last" token only.
      splice: `splice(point, value, layer, splice_args) -> value`, run by the
        decoder at its splice points (`jlang.models.decoder`); static, so pass
        data through `splice_args`.
      splice_args: a mapping of arrays with one row per prompt (leading axis
        `len(prompts)`), cut into batches with the prompts; the splice gets each
        batch's rows plus `"where"`, bool `[batch, tokens of this call]`: the
        tokens of `splice_scope` (as `edit_scope`).
      seed: the sampling seed (the same seed and batch give the same samples).
      batch_size: prompts per batch (default: all at once). Prompts are sorted
        by length into batches, so similar lengths share padding.
      chunk: tokens per jitted decoding call (default: all of them, or
        `STOP_CHECK_EVERY` with stop strings); a tuning knob, not a semantic one.
    """
    for name, scope in (("edit_scope", edit_scope), ("splice_scope", splice_scope)):
        if scope not in SCOPES:
            raise ValueError(f"{name} must be one of {SCOPES}, got {scope!r}")
    if temperature < 0 or repetition_penalty <= 0:
        raise ValueError(f"need temperature >= 0 and repetition_penalty > 0, got {temperature}, {repetition_penalty}")
    if top_k is not None and top_k < 1 or top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"need top_k >= 1 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}")
    if stop and model.tokenizer is None:
        raise ValueError("stop strings need a tokenizer to read the generated text")
    check_edits_fit(edits, model.config, model.name)
    rows = _encode(model, prompts)
    splice_args = _per_prompt(splice, splice_args, len(rows))
    if max_new_tokens <= 0 or not rows:
        return [""] * len(rows)
    greedy = temperature == 0
    sampler = Sampler(greedy=greedy, top_k=None if greedy else top_k, use_top_p=not greedy and top_p not in (None, 1.0))
    knobs = {
        "temperature": jnp.float32(temperature or 1.0),
        "top_p": jnp.float32(top_p or 1.0),
        "penalty": jnp.float32(repetition_penalty),
    }
    eos = eos_ids(model)
    key = jax.random.key(seed)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i])) if batch_size else list(range(len(rows)))
    size = batch_size or len(rows)
    tokens: list[np.ndarray | None] = [None] * len(rows)
    for start in range(0, len(order), size):
        part = order[start : start + size]
        out = _run_batch(
            model,
            [rows[i] for i in part],
            max_new_tokens=max_new_tokens,
            sampler=sampler,
            knobs=knobs,
            key=key,
            eos=eos,
            edits=edits,
            scope=edit_scope,
            splice=splice,
            splice_args=jax.tree.map(lambda a, part=part: a[part], splice_args),
            splice_scope=splice_scope,
            stop=stop,
            chunk=chunk,
        )
        for i, t in zip(part, out):
            tokens[i] = t
    return [_finish(model, t, stop) for t in tokens]


def _finish(model: Model, tokens: np.ndarray, stop: Sequence[str]) -> str:
    if model.tokenizer is None:
        return " ".join(map(str, tokens.tolist()))
    text = model.tokenizer.decode(tokens, skip_special_tokens=True)
    cut = _first_stop(text, stop)
    return text if cut is None else text[:cut]


def greedy(model: Model, prompts: list[str], *, max_new_tokens: int = 20, edits: Edits | None = None) -> list[str]:
    """Greedy continuations (text after the prompt) of each prompt, stopping at EOS."""
    return generate(model, prompts, max_new_tokens=max_new_tokens, edits=edits)


# ----------------------------------------------------------------------------- the reference


@functools.partial(jax.jit, static_argnames=("cfg",))
def _next_token(params, buffer, length, edits, cfg):
    hidden, _ = forward(params, buffer, cfg, edits=edits, output="hidden")
    last = jnp.take_along_axis(hidden, (length - 1)[:, None, None], axis=1)[:, 0]  # [batch, d_model]
    return jnp.argmax(unembed(params, last, cfg), axis=-1).astype(jnp.int32)


def greedy_reference(
    model: Model, prompts: list[str], *, max_new_tokens: int = 20, edits: Edits | None = None
) -> list[str]:
    """Greedy decoding by full recomputation: the reference for `generate`.

    A fixed `[batch, prompt + new]` token buffer is run through the causal
    forward once per new token; causality makes the not-yet-written tail
    irrelevant to the position being predicted, so every step reuses one
    compiled program. O(steps x length^2) work, and no cache to get wrong.
    Stops at the tokenizer's EOS only.
    """
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"{model.name} has no tokenizer; greedy_reference() needs one to encode prompts")
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
