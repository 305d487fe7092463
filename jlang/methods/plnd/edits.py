"""PLND's deactivation: `Edits` that zero a language's specific FFN neurons and attention dimensions.

As released (`neuron_deactivate/test_mistral_gsm.py`), deactivation zeroes
`up_proj.weight[j, :]` and `down_proj.weight[:, j]` (here a neuron edit at `mlp.act`:
the same output), `q_proj.weight[d, :]`, and the `k_proj`/`v_proj` rows of dimension d.
**GQA bug**: the released code zeroes `k_proj.weight[d // 4]` / `v_proj.weight[d // 4]`
(Llama-3 / Mistral: 4 query heads per kv head); the dimension `d = h·D + j` of the
repeated keys is kv row `(h // group)·D + j`. jlang uses the correct row; `gqa_bug=True`
reproduces `d // group` for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jlang.methods.plnd.common import PLNDError
from jlang.methods.plnd.result import PLNDResult
from jlang.models.decoder import AttnEdits, Edits

EDIT_PARTS = ("ffn", "q", "k", "v", "o")


def gqa_kv_index(d: Any, num_heads: int, num_kv_heads: int, head_dim: int, *, gqa_bug: bool = False) -> np.ndarray:
    """k_proj / v_proj rows of query-space dimensions `d = h*D + j`: `(h // group)*D + j`.

    `gqa_bug=True`: the released `d // group` (`k_proj.weight[d // 4]` with group 4), which
    for h > 0 points into another head's dimensions; kept only to compare with the released numbers.
    """
    d = np.asarray(d, np.int64)
    if num_heads % num_kv_heads:
        raise PLNDError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    if d.size and (d.min() < 0 or d.max() >= num_heads * head_dim):
        raise PLNDError(f"query-space dimensions must lie in [0, {num_heads * head_dim})")
    group = num_heads // num_kv_heads
    if gqa_bug:
        return d // group
    return (d // head_dim // group) * head_dim + d % head_dim


def _model_shape(result: PLNDResult, model: Any) -> tuple[int, int, int, int, int]:
    """(L, F, H, G, D) of the model `result` was made on, checked against `model` when given."""
    m = result.meta
    try:
        L = result.num_layers
        F = int(result.num_neurons if result.num_neurons is not None else m["num_neurons"])
        H, G, D = int(m["num_heads"]), int(m["num_kv_heads"]), int(m["head_dim"])
    except KeyError as e:
        raise PLNDError(f"the PLND result's meta lacks {e} (model shape); it was not made by jlang.plnd") from None
    if model is not None:
        c = model.config
        if (c.num_layers, c.d_ff, c.num_heads, c.num_kv_heads, c.head_dim) != (L, F, H, G, D):
            raise PLNDError(
                f"this PLND result is for {L} layers x {F} neurons, {H} heads / {G} kv heads x {D} "
                f"(model {m.get('model')}); {getattr(model, 'name', 'the model')} has {c.num_layers} x {c.d_ff}, "
                f"{c.num_heads} / {c.num_kv_heads} x {c.head_dim}"
            )
    return L, F, H, G, D


def _kept_layers(layers: Sequence[int] | None, num_layers: int) -> np.ndarray:
    """bool `[L]`: the layers an edit touches (all when `layers` is None)."""
    keep = np.ones(num_layers, bool)
    if layers is not None:
        keep[:] = False
        for layer in layers:
            if not 0 <= int(layer) < num_layers:
                raise PLNDError(f"layer {layer} out of range [0, {num_layers})")
            keep[int(layer)] = True
    return keep


def _select(result: PLNDResult, part: str, lang: str | Sequence[str]) -> np.ndarray:
    """bool `[L, n]`: the union of the languages' specific units of `part`."""
    langs = [lang] if isinstance(lang, str) else list(lang)
    if not langs:
        raise PLNDError(f"no language given; this PLND result holds {result.languages}")
    spec = result.specific(part)
    return np.logical_or.reduce([spec[result.index(x)] for x in langs])


def plnd_edits(
    result: PLNDResult,
    lang: str | Sequence[str],
    *,
    parts: Sequence[str] = ("ffn", "q", "k", "v"),
    layers: Sequence[int] | None = None,
    gqa_bug: bool = False,
    model: Any = None,
) -> Edits:
    """`Edits` deactivating language `lang`'s specific PLND units (several languages: their union).

    Parts (released `test_mistral_gsm.py` zeroes ffn, q, k, v):
      * "ffn": neuron j set to 0 at `mlp.act` (= zeroing `up_proj.weight[j]` and `down_proj.weight[:, j]`);
      * "q": Q/K dims d -> `q_proj.weight[d]` = 0 (`AttnEdits.q`);
      * "k": Q/K dims d -> `k_proj.weight[gqa_kv_index(d)]` = 0 (`AttnEdits.k`);
      * "v": V/O dims d -> `v_proj.weight[gqa_kv_index(d)]` = 0 (`AttnEdits.v`);
      * "o": V/O dims d -> `o_proj.weight[:, d]` = 0 (`AttnEdits.o`; not in the released code).
    `layers` restricts the edit to some layers (the released understanding / generation splits).
    `gqa_bug=True` maps k/v rows as the released code did (`d // group`), for comparison only.
    """
    bad = [p for p in parts if p not in EDIT_PARTS]
    if bad or not parts:
        raise PLNDError(f"unknown parts {bad or list(parts)}; use some of {EDIT_PARTS}")
    L, F, H, G, D = _model_shape(result, model)
    keep = _kept_layers(layers, L)
    ffn = _select(result, "ffn", lang) & keep[:, None] if "ffn" in parts else np.zeros((L, F), bool)
    qk = _select(result, "qk", lang) & keep[:, None] if {"q", "k"} & set(parts) else np.zeros((L, H * D), bool)
    vo = _select(result, "vo", lang) & keep[:, None] if {"v", "o"} & set(parts) else np.zeros((L, H * D), bool)
    scales = {
        "q": np.ones((L, H * D), np.float32),
        "k": np.ones((L, G * D), np.float32),
        "v": np.ones((L, G * D), np.float32),
        "o": np.ones((L, H * D), np.float32),
    }
    for layer in range(L):
        if "q" in parts:
            scales["q"][layer, np.flatnonzero(qk[layer])] = 0.0
        if "k" in parts:
            scales["k"][layer, gqa_kv_index(np.flatnonzero(qk[layer]), H, G, D, gqa_bug=gqa_bug)] = 0.0
        if "v" in parts:
            scales["v"][layer, gqa_kv_index(np.flatnonzero(vo[layer]), H, G, D, gqa_bug=gqa_bug)] = 0.0
        if "o" in parts:
            scales["o"][layer, np.flatnonzero(vo[layer])] = 0.0
    attn = None
    if any(p in parts for p in ("q", "k", "v", "o")):
        attn = AttnEdits(**{k: jnp.asarray(v) for k, v in scales.items()})
    scale = np.where(ffn, 0.0, 1.0).astype(np.float32)  # outside the mask 1 and 0, like `jlang.edits`
    return Edits(mask=jnp.asarray(ffn), scale=jnp.asarray(scale), shift=jnp.zeros((L, F), jnp.float32), attn=attn)
