"""PLND: parallel language-specific neuron detection (Zhao et al., NeurIPS 2024).

"How do Large Language Models Handle Multilingualism?", code in
DAMO-NLP-SG/multilingual_analysis (methods.md §2): the scores are computed in
patched copies of transformers' `modeling_llama.py` (`neuron_detection/`), the
language-specific sets and the deactivation in `neuron_deactivate/test_mistral_gsm.py`.

What is scored, for one document `c` (one prefill), in every layer:

* **FFN neuron j** (`up_proj` row j and `down_proj` column j share the score):
  - mode `code`, as released: `Σ_t |(W_up x_t)_j|` (hook point `mlp.up`). It
    ignores the gate and `W_down`.
  - mode `paper`: the norm of the neuron's contribution to the FFN's output,
    i.e. the change of the FFN output when the neuron is zeroed, summed over tokens:
    `Σ_t ‖a_j(t)·(W_up x_t)_j · W_down[:, j]‖₂ = Σ_t |mlp.hidden_j(t)| · ‖W_down[:, j]‖₂`
    (methods.md §2.4). The output is `mlp.out`, before Gemma 2/3's post-norm.
* **Q/K dimension d = h·D + j** (both modes, as released; Q and K share the score):
  `Σ_{t,s} (softmax(S − Δ_d) − softmax(S))²` with `S` the layer's attention
  logits (scaled by `cfg.attn_scale`, soft-capped on Gemma 2, masked) and
  `Δ_d[t, s] = q_t[d] · k_s[d]` over post-RoPE queries and keys, `k` repeated
  to the `H·D` query space (`repeat_kv`: head h reads kv head `h // group`).
  The released code does **not** scale `Δ_d` by `1/√D` although `S` is scaled, so
  `S − Δ_d` are the logits with `q[d]` multiplied by `1 − √D` (about −10 for
  D = 128), not with `q[d]` removed; `delta_scaled=True` gives the removal
  (`S` recomputed with `q[d] = 0`, exact without a soft-cap).
* **V/O dimension d** (both modes): `Σ_t |z_t[d]|`, `z` the concatenated head
  outputs before `o_proj` (hook point `attn.z`).

Selection (as released): per document and layer, the `top_ffn` FFN neurons and
the `top_attn` Q/K and V/O dimensions with the largest scores (ties: the lower
index first, `lax.top_k`); a language's *activated* set is the intersection over
its documents; its *language-specific* set is the activated set minus the
neurons activated by every language (`act_L − ⋂_k act_k`).

Deactivation (`plnd_edits`) zeroes `up_proj.weight[j, :]` and `down_proj.weight[:, j]`
(as a neuron edit at `mlp.act`: the same output), `q_proj.weight[d, :]`, and
the `k_proj`/`v_proj` rows of dimension d. **GQA bug**: the released code zeroes
`k_proj.weight[d // 4]` / `v_proj.weight[d // 4]` (Llama-3 / Mistral: 4 query heads
per kv head); the dimension `d = h·D + j` of the repeated keys is kv row
`(h // group)·D + j`. jlang uses the correct row; `gqa_bug=True` reproduces
`d // group` for comparison.

Everything is computed inside one jitted forward per batch (one document per
row, padding never counts), sharded by the model's mesh; only per-language
top-k counts `[K, L, n]` come back to the host, where they fold exactly (int64).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlang.masks import NeuronMasks, UnknownLanguageError
from jlang.methods.common import MethodError, _version

__all__ = [
    "MODES",
    "PARTS",
    "PLNDError",
    "PLNDResult",
    "abs_sum",
    "document_scores",
    "ffn_code_score",
    "ffn_paper_score",
    "gqa_kv_index",
    "language_counts",
    "layer_scores",
    "plnd",
    "plnd_edits",
    "plnd_step",
    "qk_score",
    "read_original_text",
    "run_plnd",
    "sample_documents",
    "topk_membership",
    "vo_score",
]

MODES = ("code", "paper")
PARTS = ("ffn", "qk", "vo")  # FFN neurons [F]; Q/K and V/O dimensions [H*D]
EDIT_PARTS = ("ffn", "q", "k", "v", "o")
RELEASED_SEED = 112  # neuron_detection.py: random.seed(112); random.sample(lines, N)
_FORMAT = "jlang.PLND/1"
# Elements of one `[b, H, chunk, t, t]` block of the Q/K score: 2^19 float32 = 2 MiB stays in cache
# (on 2 CPU cores 5-10x faster than 32 MiB blocks; at least one head dimension per block).
QK_BLOCK_ELEMENTS = 2**19


class PLNDError(MethodError):
    """PLND cannot run on these inputs; the message says what and how to fix it."""


# ----------------------------------------------------------------------------- scores (pure functions)


def abs_sum(x: jax.Array, valid: jax.Array) -> jax.Array:
    """float32 `[batch, n]`: `Σ_t |x[b, t, n]|` over valid tokens (`valid` bool `[batch, seq]`)."""
    return jnp.sum(jnp.where(valid[:, :, None], jnp.abs(x.astype(jnp.float32)), 0.0), axis=1)


def ffn_code_score(up: jax.Array, valid: jax.Array) -> jax.Array:
    """Released FFN score `Σ_t |(W_up x_t)_j|` `[batch, F]` from `mlp.up` `[batch, seq, F]`."""
    return abs_sum(up, valid)


def ffn_paper_score(hidden: jax.Array, valid: jax.Array, down: jax.Array) -> jax.Array:
    """Paper FFN score `Σ_t ‖hidden_j(t) · W_down[j, :]‖₂` `[batch, F]`.

    `hidden` is `mlp.hidden` `[batch, seq, F]` (`act ⊙ up`), `down` this layer's
    kernel `[F, d_model]` (row j = HF `down_proj.weight[:, j]`). The norm of a
    rank-one term factors: `|hidden_j(t)| · ‖W_down[j]‖₂`.
    """
    return abs_sum(hidden, valid) * jnp.linalg.norm(down.astype(jnp.float32), axis=-1)


def _dim_chunk(batch: int, heads: int, seq: int, head_dim: int, budget: int = QK_BLOCK_ELEMENTS) -> int:
    """The largest divisor of `head_dim` whose `[batch, heads, chunk, seq, seq]` block fits `budget` elements."""
    per_dim = max(batch * heads * seq * seq, 1)
    best = 1
    for c in range(1, head_dim + 1):
        if head_dim % c == 0 and c * per_dim <= budget:
            best = c
    return best


def qk_score(
    q: jax.Array,
    k: jax.Array,
    allowed: jax.Array,
    valid: jax.Array,
    *,
    attn_scale: float,
    softcap: float | None = None,
    delta_scaled: bool = False,
    block_elements: int = QK_BLOCK_ELEMENTS,
) -> jax.Array:
    """Released Q/K score `[batch, H*D]`: `Σ_{t valid, s} (softmax(S − Δ_d) − softmax(S))²` for every d.

    Args:
      q: `attn.q` `[batch, seq, H, D]` (post q-norm and RoPE).
      k: `attn.k` `[batch, seq, G, D]` (before the GQA repetition; head h reads kv head `h // (H/G)`).
      allowed: `attn.allowed` bool `[batch, seq, seq]` (causal, window, valid keys).
      valid: bool `[batch, seq]`; padding query rows are left out.
      attn_scale, softcap: the model's `cfg.attn_scale` and `cfg.attn_softcap`, so `S` is the
        logits the model computes.
      delta_scaled: scale `Δ_d` like `S` (the removal of dimension d); the released code does not.
      block_elements: memory bound of one block; head dimensions are processed in chunks.
    Returns:
      float32 `[batch, H*D]`, index `h*D + j` (the flattened `num_heads * head_dim` space of the code).
    """
    b, t, H, D = q.shape
    G = k.shape[2]
    g = H // G
    q32 = q.astype(jnp.float32).reshape(b, t, G, g, D)
    k32 = k.astype(jnp.float32)
    scale = jnp.float32(attn_scale)
    s = jnp.einsum("btkgd,bskd->bkgts", q32, k32, precision="highest") * scale
    if softcap is not None:
        s = jnp.tanh(s / softcap) * softcap
    neg = jnp.finfo(jnp.float32).min
    mask = allowed[:, None, None, None, :, :]  # [b, 1, 1, 1, t, s] against [b, G, g, chunk, t, s]
    p = jax.nn.softmax(jnp.where(allowed[:, None, None], s, neg), axis=-1)  # [b, G, g, t, s]
    rows = valid[:, None, None, None, :, None]
    c = _dim_chunk(b, H, t, D, block_elements)

    # Δ as a broadcast product (not an einsum without contraction) so XLA fuses it into the softmax.
    qT = jnp.transpose(q32, (0, 2, 3, 4, 1))  # [b, G, g, D, t]
    kT = jnp.transpose(k32, (0, 2, 3, 1))  # [b, G, D, s]

    def chunk_score(start):
        qc = jax.lax.dynamic_slice_in_dim(qT, start, c, axis=3)[..., :, None]  # [b, G, g, c, t, 1]
        kc = jax.lax.dynamic_slice_in_dim(kT, start, c, axis=2)[:, :, None, :, None, :]  # [b, G, 1, c, 1, s]
        delta = qc * kc * scale if delta_scaled else qc * kc
        pd = jax.nn.softmax(jnp.where(mask, s[:, :, :, None] - delta, neg), axis=-1)
        diff = jnp.where(rows, pd - p[:, :, :, None], 0.0)
        return jnp.sum(diff * diff, axis=(-2, -1))  # [b, G, g, c]

    out = jax.lax.map(chunk_score, jnp.arange(0, D, c))  # [D // c, b, G, g, c]
    return jnp.moveaxis(out, 0, 3).reshape(b, H * D)  # [b, G, g, D//c, c] -> h = G_i*g + g_i, d = h*D + j


def vo_score(z: jax.Array, valid: jax.Array) -> jax.Array:
    """Released V/O score `Σ_t |z_t[d]|` `[batch, H*D]` from `attn.z` `[batch, seq, H*D]`."""
    return abs_sum(z, valid)


def _check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    """The scored parts in canonical order; unknown or no part is an error."""
    bad = [p for p in parts if p not in PARTS] if not isinstance(parts, str) else [parts]
    if bad or not parts:
        raise PLNDError(f"unknown parts {bad or list(parts)}; score some of {PARTS}")
    return tuple(p for p in PARTS if p in parts)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise PLNDError(
            f"unknown PLND mode {mode!r}; use one of {MODES} ('code': as released, 'paper': FFN output norm)"
        )
    return mode


def layer_scores(
    points: Mapping[str, jax.Array], valid: jax.Array, cfg: Any, mode: str, parts: Sequence[str] = PARTS
) -> dict[str, jax.Array]:
    """A decoder `probe`: one layer's per-document scores `{"ffn": [b, F], "qk": [b, H*D], "vo": [b, H*D]}`.

    Only `parts` are computed (the Q/K score costs `H·D·T²` per document; FFN-only PLND is
    about one forward). In `paper` mode "ffn" is `Σ_t |mlp.hidden|`; `document_scores`
    multiplies it by `‖W_down[j]‖` (a probe does not see the layer's weights).
    """
    out = {}
    if "ffn" in parts:
        hook = points["mlp.up"] if mode == "code" else points["mlp.hidden"]
        out["ffn"] = abs_sum(hook, valid)
    if "qk" in parts:
        out["qk"] = qk_score(
            points["attn.q"],
            points["attn.k"],
            points["attn.allowed"],
            valid,
            attn_scale=cfg.attn_scale,
            softcap=cfg.attn_softcap,
        )
    if "vo" in parts:
        out["vo"] = vo_score(points["attn.z"], valid)
    return out


def document_scores_fn(
    params, ids, positions, valid, *, cfg: Any, mode: str, parts: tuple[str, ...] = PARTS
) -> dict[str, jax.Array]:
    """Traced scores of every row and layer: `{"ffn": [b, L, F], "qk": [b, L, H*D], "vo": [b, L, H*D]}`."""
    from jlang.models.decoder import forward

    _, per_layer = forward(
        params,
        ids,
        cfg,
        positions=positions,
        valid=valid,
        output="none",
        probe=lambda points, v: layer_scores(points, v, cfg, mode, parts),
    )
    if mode == "paper" and "ffn" in per_layer:  # Σ_t |hidden_j| · ‖W_down[j]‖, layer by layer
        per_layer["ffn"] = (
            per_layer["ffn"] * jnp.linalg.norm(params["layers.down"].astype(jnp.float32), axis=-1)[:, None]
        )
    return {name: jnp.moveaxis(x, 0, 1) for name, x in per_layer.items()}  # [L, b, n] -> [b, L, n]


# One compilation per (config, mode, shapes), shared by every call.
_document_scores_jit = jax.jit(document_scores_fn, static_argnames=("cfg", "mode", "parts"))


def document_scores(
    model: Any, ids: Any, valid: Any | None = None, *, mode: str = "code", parts: Sequence[str] = PARTS
) -> dict[str, np.ndarray]:
    """Host float32 scores of each row (one document per row) and layer: "ffn" `[b, L, F]`, "qk"/"vo" `[b, L, H*D]`."""
    from jlang import parallel

    _check_mode(mode)
    parts = _check_parts(parts)
    ids = model.check_ids(ids)
    b, t = ids.shape
    valid = np.ones((b, t), bool) if valid is None else np.asarray(valid, bool)
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    out = _document_scores_jit(
        model.params,
        model.place_batch(ids),
        model.place_batch(positions),
        model.place_batch(valid),
        cfg=model.config,
        mode=mode,
        parts=parts,
    )
    return {k: parallel.to_host(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- selection


def topk_membership(scores: jax.Array, k: int) -> jax.Array:
    """bool, same shape as `scores` `[..., n]`: the `k` largest along the last axis (ties: lower index first)."""
    _, idx = jax.lax.top_k(scores, k)
    return jnp.put_along_axis(jnp.zeros(scores.shape, bool), idx, True, axis=-1, inplace=False)


def language_counts(member: jax.Array, is_doc: jax.Array, lang: jax.Array, num_languages: int) -> jax.Array:
    """int32 `[K, L, n]`: for each language, the documents whose top-k held each neuron.

    `member` bool `[b, L, n]`, `is_doc` bool `[b]` (rows with a valid token), `lang` int `[b]` (-1: padding row).
    """
    onehot = jax.nn.one_hot(lang, num_languages, dtype=jnp.int32) * is_doc[:, None].astype(jnp.int32)
    return jnp.einsum("bk,bln->kln", onehot, member.astype(jnp.int32))


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "mode", "parts", "top_ffn", "top_attn", "num_languages"),
)
def plnd_step(
    params,
    ids,
    positions,
    valid,
    lang,
    *,
    cfg: Any,
    mode: str,
    top_ffn: int,
    top_attn: int,
    num_languages: int,
    parts: tuple[str, ...] = PARTS,
) -> dict[str, jax.Array]:
    """The jitted per-batch step: one document per row -> per-language top-k counts.

    Returns `{"ffn": int32 [K, L, F], "qk", "vo": int32 [K, L, H*D], "documents": int32 [K]}` (the scored parts).
    """
    tops = {"ffn": top_ffn, "qk": top_attn, "vo": top_attn}
    scores = document_scores_fn(params, ids, positions, valid, cfg=cfg, mode=mode, parts=parts)
    is_doc = jnp.any(valid, axis=1) & (lang >= 0)
    out = {
        name: language_counts(topk_membership(x, tops[name]), is_doc, lang, num_languages) for name, x in scores.items()
    }
    out["documents"] = jnp.sum(jax.nn.one_hot(lang, num_languages, dtype=jnp.int32) * is_doc[:, None], axis=0)
    return out


# ----------------------------------------------------------------------------- result


def _counts_array(name: str, x: Any, k: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 3 or a.shape[0] != k or a.dtype.kind not in "iu":
        raise PLNDError(f"{name} counts must be integer [K={k}, L, n], got {a.dtype} {a.shape}")
    return a.astype(np.int64)


@dataclass
class PLNDResult:
    """Per-language PLND counts and the masks they give.

    `counts[part][k, l, i]` is the number of language k's documents whose per-layer
    top-k held unit i (`part`: "ffn" `[K, L, F]`, "qk" and "vo" `[K, L, H*D]`);
    `documents[k]` the number of documents. Derived, exactly:

    * `activated(part)` = counts == documents (the intersection over documents);
    * `shared(part)` = activated by every language of `shared_languages` (all by default);
    * `specific(part)` = activated and not shared (what the deactivation uses);
    * `ffn` (a `NeuronMasks`), `qk`, `vo`: the language-specific masks.

    `meta` holds the mode, top-k, model shape (`num_heads`, `num_kv_heads`, `head_dim`), corpus.
    """

    languages: list[str]
    documents: np.ndarray  # int64 [K]
    counts: dict[str, np.ndarray]  # part -> int64 [K, L, n]
    shared_languages: list[str] | None = None  # None: every language (none removed when K == 1)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.languages = [str(x) for x in self.languages]
        k = len(self.languages)
        if k == 0 or len(set(self.languages)) != k:
            raise PLNDError(f"languages must be non-empty and distinct, got {self.languages}")
        self.documents = np.asarray(self.documents, np.int64)
        if self.documents.shape != (k,):
            raise PLNDError(f"documents must be [K={k}], got shape {self.documents.shape}")
        empty = [lang for lang, n in zip(self.languages, self.documents) if n <= 0]
        if empty:
            raise PLNDError(
                f"languages {empty} have no document: an intersection over no document is undefined; "
                "give every language at least one non-empty document"
            )
        unknown = [p for p in self.counts if p not in PARTS]
        if unknown or not self.counts:
            raise PLNDError(f"counts must hold some of the parts {PARTS}, got {list(self.counts)}")
        self.counts = {p: _counts_array(p, self.counts[p], k) for p in PARTS if p in self.counts}
        shapes = {p: c.shape for p, c in self.counts.items()}
        if len({sh[1] for sh in shapes.values()}) != 1 or (
            "qk" in shapes and "vo" in shapes and shapes["qk"] != shapes["vo"]
        ):
            raise PLNDError(f"count shapes disagree: {shapes}")
        if any((c < 0).any() or (c > self.documents[:, None, None]).any() for c in self.counts.values()):
            raise PLNDError("counts must lie in [0, documents] (documents holding a unit in their top-k)")
        if self.shared_languages is not None:
            self.shared_languages = [str(x) for x in self.shared_languages]
            for lang in self.shared_languages:
                self.index(lang)

    # -- shape ---------------------------------------------------------------------------------------

    @property
    def parts(self) -> tuple[str, ...]:
        """The scored parts ("ffn", "qk", "vo"; a pass may score only some)."""
        return tuple(self.counts)

    @property
    def num_layers(self) -> int:
        return int(next(iter(self.counts.values())).shape[1])

    @property
    def num_neurons(self) -> int | None:
        """F, or None if the FFN was not scored."""
        return int(self.counts["ffn"].shape[2]) if "ffn" in self.counts else self.meta.get("num_neurons")

    @property
    def attn_width(self) -> int | None:
        """H*D, the flattened query-head dimensions (None if attention was not scored and meta does not say)."""
        for p in ("qk", "vo"):
            if p in self.counts:
                return int(self.counts[p].shape[2])
        m = self.meta
        return int(m["num_heads"]) * int(m["head_dim"]) if "num_heads" in m and "head_dim" in m else None

    def index(self, language: str) -> int:
        try:
            return self.languages.index(language)
        except ValueError:
            raise UnknownLanguageError(
                f"unknown language {language!r}; this PLND result holds {self.languages}"
            ) from None

    def _part(self, part: str) -> np.ndarray:
        if part not in PARTS:
            raise PLNDError(f"unknown part {part!r}; use one of {PARTS}")
        if part not in self.counts:
            raise PLNDError(f"part {part!r} was not scored in this PLND result (scored: {list(self.counts)})")
        return self.counts[part]

    # -- masks ---------------------------------------------------------------------------------------

    def activated(self, part: str) -> np.ndarray:
        """bool `[K, L, n]`: in the top-k of every one of the language's documents."""
        return self._part(part) == self.documents[:, None, None]

    def removal_languages(self) -> list[str]:
        """The languages whose common activated units are removed (`shared_languages`, default all; none for K = 1)."""
        if self.shared_languages is not None:
            return list(self.shared_languages)
        return list(self.languages) if len(self.languages) > 1 else []

    def shared(self, part: str) -> np.ndarray:
        """bool `[L, n]`: activated by every language of `removal_languages()` (all False when there is none)."""
        act = self.activated(part)
        idx = [self.index(x) for x in self.removal_languages()]
        if not idx:
            return np.zeros(act.shape[1:], bool)
        return act[idx].all(axis=0)

    def specific(self, part: str) -> np.ndarray:
        """bool `[K, L, n]`: activated and not shared (`spec_L = act_L − ⋂ act`, test_mistral_gsm.py)."""
        return self.activated(part) & ~self.shared(part)[None]

    @property
    def ffn(self) -> NeuronMasks:
        """The language-specific FFN neurons as `NeuronMasks` `[K, L, F]` (usable by every mask tool)."""
        meta = dict(
            self.meta,
            method=f"plnd-{self.meta.get('mode', '?')}",
            hook_point="mlp.act",
            params={k: self.meta.get(k) for k in ("mode", "top_ffn", "top_attn")},
            documents={l: int(n) for l, n in zip(self.languages, self.documents)},
            removed_shared_by=self.removal_languages(),
        )
        return NeuronMasks(list(self.languages), self.specific("ffn"), meta)

    @property
    def qk(self) -> np.ndarray:
        """bool `[K, L, H*D]`: language-specific Q/K dimensions (query space `h*D + j`)."""
        return self.specific("qk")

    @property
    def vo(self) -> np.ndarray:
        """bool `[K, L, H*D]`: language-specific V/O dimensions (the `o_proj` input space `h*D + j`)."""
        return self.specific("vo")

    def layer_counts(self, part: str, which: str = "specific") -> np.ndarray:
        """int64 `[K, L]`: units per language and layer (`which`: "specific", "activated")."""
        masks = self.specific(part) if which == "specific" else self.activated(part)
        return masks.sum(axis=2, dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        """Counts per language (activated, specific; FFN, Q/K, V/O), shared units, parameters."""
        per = {}
        for k, lang in enumerate(self.languages):
            per[lang] = {"documents": int(self.documents[k])}
            for p in self.parts:
                per[lang][f"{p}_activated"] = int(self.activated(p)[k].sum())
                per[lang][f"{p}_specific"] = int(self.specific(p)[k].sum())
        return {
            "method": "plnd",
            "mode": self.meta.get("mode"),
            "top_ffn": self.meta.get("top_ffn"),
            "top_attn": self.meta.get("top_attn"),
            "num_layers": self.num_layers,
            "num_neurons": self.num_neurons,
            "attn_width": self.attn_width,
            "removed_shared_by": self.removal_languages(),
            "parts": list(self.parts),
            "shared": {p: int(self.shared(p).sum()) for p in self.parts},
            "per_language": per,
            "specific_per_layer": {
                p: {lang: self.layer_counts(p)[k].tolist() for k, lang in enumerate(self.languages)} for p in self.parts
            },
        }

    def with_shared_languages(self, languages: Sequence[str] | None) -> PLNDResult:
        """The same counts, removing the units shared by `languages` (the released script used en es fr zh ru)."""
        return dataclasses.replace(self, shared_languages=None if languages is None else list(languages))

    # -- files ---------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write an `.npz` (NumPy only; atomic): documents, `{part}_counts`, languages, meta (JSON)."""
        from jlang.io.npz import write_npz

        p = Path(path)
        meta = dict(self.meta, shared_languages=self.shared_languages)
        arrays = {
            "documents": self.documents,
            **{f"{k}_counts": v for k, v in self.counts.items()},
        }
        write_npz(
            p,
            format=_FORMAT,
            languages=self.languages,
            arrays=arrays,
            meta=meta,
            compressed=True,
        )
        return p

    @classmethod
    def load(cls, path: str | Path) -> PLNDResult:
        from jlang.io.npz import read_npz

        try:
            arrays, languages, meta = read_npz(path, format_prefix="jlang.PLND/")
        except ValueError as e:
            raise PLNDError(str(e)) from None
        counts = {p: arrays[f"{p}_counts"] for p in PARTS if f"{p}_counts" in arrays}
        if "documents" not in arrays or not counts:
            raise PLNDError(f"{path}: missing arrays: needs 'documents' and some of {[f'{p}_counts' for p in PARTS]}")
        shared = meta.pop("shared_languages", None)
        return cls(languages, arrays["documents"], counts, shared, meta)

    def original_text(self, language: str, *, specific: bool = False) -> str:
        """The released output file of one language: 5 lines, each `str({layer: set(indices)})`.

        Lines: fwd_up, fwd_down (FFN), q, k (Q/K, both in the `H*D` query space, as the code
        scores K after `repeat_kv`), v (V/O). `neuron_detection.py` writes the *activated*
        sets (the intersection over documents); `specific=True` writes the sets after removing
        the units shared by all languages (what `test_mistral_gsm.py` deactivates).
        """
        k = self.index(language)
        if self.parts != PARTS:
            raise PLNDError(f"the released format holds FFN, Q/K and V/O sets; this result scored only {self.parts}")
        get = self.specific if specific else self.activated
        lines = []
        for part in ("ffn", "ffn", "qk", "qk", "vo"):
            m = get(part)[k]
            lines.append(str({layer: {int(i) for i in np.flatnonzero(m[layer])} for layer in range(self.num_layers)}))
        return "\n".join(lines) + "\n"

    def to_original_text(
        self,
        directory: str | Path,
        *,
        specific: bool = False,
        template: str = "{lang}.txt",
    ) -> list[Path]:
        """Write `original_text` of every language to `directory/template`; returns the paths (atomic writes)."""
        from jlang.io.atomic import atomic_file

        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        out = []
        for lang in self.languages:
            p = root / template.format(lang=lang)
            with atomic_file(p) as tmp:
                tmp.write_text(self.original_text(lang, specific=specific), encoding="utf-8")
            out.append(p)
        return out

    def plot_heatmap(self, path: str | Path, *, which: str = "specific", title: str | None = None) -> Path:
        """A PNG of units per layer (rows) x language (columns): FFN, Q/K and V/O panels."""
        from jlang.io.report import save_heatmaps

        layers = [str(l) for l in range(self.num_layers)]
        names = {
            "ffn": f"FFN neurons (of {self.num_neurons})",
            "qk": f"Q/K dims (of {self.attn_width})",
            "vo": f"V/O dims (of {self.attn_width})",
        }
        panels = [
            {
                "matrix": self.layer_counts(p, which).T,
                "rows": layers,
                "cols": self.languages,
                "title": names[p],
                "cbar_label": f"{which} units",
                "fmt": "{:.0f}",
                "xlabel": "language",
                "ylabel": "layer",
                "origin": "lower",
                "annotate": self.num_layers * len(self.languages) <= 400,
            }
            for p in self.parts
        ]
        head = title or f"PLND ({self.meta.get('mode')} mode) {which} units per layer: {self.meta.get('model', '')}"
        return save_heatmaps(
            path,
            panels,
            ncols=3,
            suptitle=head,
            panel_size=(1.2 + 0.45 * len(self.languages), 1.8 + 0.22 * self.num_layers),
        )


def read_original_text(path: str | Path) -> dict[str, dict[int, set[int]]]:
    """Parse a released PLND output file (5 lines of `str(dict)`) safely, with `ast.literal_eval`."""
    lines = [x for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    names = ("fwd_up", "fwd_down", "q", "k", "v")
    if len(lines) != len(names):
        raise PLNDError(f"{path}: expected {len(names)} lines ({', '.join(names)}), found {len(lines)}")
    out = {}
    for name, line in zip(names, lines):
        try:
            value = ast.literal_eval(line)
        except (ValueError, SyntaxError) as e:
            raise PLNDError(f"{path}: line {name!r} is not a Python dict literal ({e})") from None
        if not isinstance(value, dict):
            raise PLNDError(f"{path}: line {name!r} is {type(value).__name__}, not a dict")
        out[name] = {int(k): set(v) for k, v in value.items()}
    return out


# ----------------------------------------------------------------------------- the pass


def _check_tops(cfg: Any, top_ffn: int, top_attn: int) -> None:
    width = cfg.num_heads * cfg.head_dim
    for name, k, n, what in (
        ("top_ffn", top_ffn, cfg.d_ff, "FFN neurons per layer"),
        ("top_attn", top_attn, width, "attention dimensions (heads x head_dim) per layer"),
    ):
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= int(k) <= n:
            raise PLNDError(f"{name}={k!r} must be an integer in [1, {n}]: the model has {n} {what}")


def run_plnd(
    model: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    languages: Sequence[str],
    *,
    mode: str = "code",
    top_ffn: int,
    top_attn: int,
    parts: Sequence[str] = PARTS,
    shared_languages: Sequence[str] | None = None,
    total: int | None = None,
    trim: bool = True,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> PLNDResult:
    """Fold the per-language top-k counts of every batch (one document per row) into a `PLNDResult`.

    `batches` yield host dicts: `ids` int `[b, seq]`, `valid` bool `[b, seq]`, `lang` int `[b]`
    (-1: padding row), optionally `positions`. Only `parts` are scored. With `trim` (one process),
    each batch is cut to the power of two (>= 16) above its longest row, so short documents do
    not pay the `seq²` attention score of the longest.
    """
    from tqdm.auto import tqdm

    from jlang import parallel
    from jlang.parallel.batch_loop import bucket_width, pad_rows

    _check_mode(mode)
    parts = _check_parts(parts)
    _check_tops(model.config, top_ffn, top_attn)
    K = len(languages)
    step = functools.partial(
        plnd_step,
        cfg=model.config,
        mode=mode,
        top_ffn=int(top_ffn),
        top_attn=int(top_attn),
        num_languages=K,
        parts=parts,
    )
    totals: dict[str, np.ndarray] | None = None
    pending = None
    bar = tqdm(total=total, desc=f"PLND ({mode})", unit="batch", disable=not progress)
    start, docs_seen = time.perf_counter(), 0
    trim = trim and jax.process_count() == 1

    def fold(result):
        nonlocal totals, docs_seen
        host = {k: parallel.to_host(v).astype(np.int64) for k, v in result.items()}
        totals = host if totals is None else {k: totals[k] + host[k] for k in totals}
        docs_seen += int(host["documents"].sum())
        bar.update()
        bar.set_postfix(
            documents=docs_seen,
            docs_per_s=f"{docs_seen / max(time.perf_counter() - start, 1e-9):.1f}",
        )

    for batch in batches:
        batch = pad_rows(batch, parallel.pad_batch_to(len(batch["ids"]), model.mesh))
        ids, valid = model.check_ids(batch["ids"]), np.asarray(batch["valid"], bool)
        if trim:
            longest = int(
                np.max(
                    np.where(valid.any(axis=0), np.arange(1, ids.shape[1] + 1), 0),
                    initial=1,
                )
            )
            width = bucket_width(longest, ids.shape[1])
            ids, valid = ids[:, :width], valid[:, :width]
        b, t = ids.shape
        positions = batch.get("positions")
        positions = (
            np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)) if positions is None else np.asarray(positions)[:, :t]
        )
        result = step(
            model.params,
            model.place_batch(ids),
            model.place_batch(np.ascontiguousarray(positions, np.int32)),
            model.place_batch(valid),
            model.place_batch(np.asarray(batch["lang"], np.int32)),
        )
        if pending is not None:
            fold(pending)
        pending = result
    if pending is not None:
        fold(pending)
    bar.close()
    if totals is None:
        raise PLNDError("no batch: the corpus gave no document")
    c = model.config
    info = dict(meta or {})
    info.update(
        mode=mode,
        parts=list(parts),
        top_ffn=int(top_ffn),
        top_attn=int(top_attn),
        model=model.name,
        family=model.family,
        num_layers=c.num_layers,
        num_neurons=c.d_ff,
        num_heads=c.num_heads,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        jlang_version=_version(),
        seconds=time.perf_counter() - start,
        reference="Zhao et al. 2024, DAMO-NLP-SG/multilingual_analysis (neuron_detection, neuron_deactivate)",
    )
    counts = {p: totals[p] for p in parts}
    return PLNDResult(list(languages), totals["documents"], counts, shared_languages, info)


def sample_documents(
    tok: Any,
    per_language: int,
    *,
    seed: int = RELEASED_SEED,
    doc_mode: str = "pad",
    seq_len: int | None = None,
) -> Any:
    """A `TokenizedCorpus` holding the documents PLND reads, per language.

    * `doc_mode="pad"` (released): `per_language` documents drawn as
      `random.seed(seed); random.sample(documents, per_language)` (`neuron_detection.py`, seed 112),
      each one row (truncated to `seq_len` by `make_batches`).
    * `doc_mode="pack"` (corpora of short messages): documents in the same random order,
      concatenated and cut into `per_language` windows of `seq_len` tokens; each window is a document.
    """
    from jlang.data.pipeline import TokenizedCorpus, TokenizedLanguage

    if doc_mode not in ("pad", "pack"):
        raise PLNDError(f"doc_mode must be 'pad' or 'pack', got {doc_mode!r}")
    if not isinstance(per_language, (int, np.integer)) or per_language < 1:
        raise PLNDError(f"documents per language must be a positive integer, got {per_language!r}")
    if doc_mode == "pack" and not seq_len:
        raise PLNDError("doc_mode='pack' needs seq_len (the window size)")
    data = {}
    for lang in tok.languages:
        t = tok.data[lang]
        if t.from_ids_file:
            raise PLNDError(f"language {lang!r} is a token-id stream without document boundaries; PLND needs documents")
        if tok.has_pairs.get(lang):
            raise PLNDError(f"language {lang!r} holds (prompt, response) pairs; PLND scores plain documents")
        n = t.n_docs
        if n == 0:
            raise PLNDError(f"language {lang!r} has no document")
        rng = random.Random(seed)
        if doc_mode == "pad":
            if per_language > n:
                raise PLNDError(
                    f"language {lang!r} has {n} documents, fewer than {per_language} requested; "
                    "ask for fewer documents per language"
                )
            chosen = rng.sample(range(n), per_language)
        else:
            order = rng.sample(range(n), n)
            lengths = np.diff(t.offsets)[order]
            need = per_language * int(seq_len)
            enough = np.flatnonzero(np.cumsum(lengths) >= need)
            if enough.size == 0:
                raise PLNDError(
                    f"language {lang!r} has {int(lengths.sum())} tokens, fewer than {per_language} "
                    f"windows of {seq_len}; ask for fewer documents or a shorter seq_len"
                )
            chosen = order[: int(enough[0]) + 1]
        pieces = [t.ids[t.offsets[d] : t.offsets[d + 1]] for d in chosen]
        offsets = np.zeros(len(pieces) + 1, np.int64)
        np.cumsum([len(p) for p in pieces], out=offsets[1:])
        data[lang] = TokenizedLanguage(
            np.concatenate(pieces).astype(np.int32),
            offsets,
            np.zeros(len(pieces), np.int64),
        )
    return TokenizedCorpus(
        tok.languages,
        data,
        tok.pad_id,
        tok.bos_id,
        tok.add_bos,
        tok.add_eos,
        dict(tok.has_pairs),
    )


def plnd(
    model: Any,
    corpus: Any,
    *,
    languages: Sequence[str] | None = None,
    documents_per_language: int = 100,
    top_ffn: int,
    top_attn: int,
    mode: str = "code",
    parts: Sequence[str] = PARTS,
    doc_mode: str = "pad",
    seq_len: int = 256,
    batch_size: int = 8,
    seed: int = RELEASED_SEED,
    shared_languages: Sequence[str] | None = None,
    add_bos: bool | None = None,
    mesh: Any = None,
    progress: bool = True,
) -> PLNDResult:
    """PLND on a multilingual corpus: sample documents, score them in one jitted pass, intersect, remove shared.

    Args:
      model: a `jlang.Model` (its mesh, or `mesh`, shards the pass: rows over `data`, heads/neurons over `model`).
      corpus: a `Corpus` or mapping language -> source of plain-text documents.
      languages: which languages (default: the corpus's).
      documents_per_language: documents sampled per language (released: 1000 web documents; `random.seed(112)`).
      top_ffn, top_attn: per-document, per-layer top-k (released README: 2000 / 1000; Llama-3: 12000 / 2000).
      mode: "code" (bit-faithful to the released scores) or "paper" (FFN: norm of the neuron's output).
      parts: what to score, of "ffn", "qk", "vo" (all; FFN alone costs about one forward).
      doc_mode, seq_len: one document per row truncated to `seq_len` ("pad"), or `seq_len` windows ("pack").
      shared_languages: languages whose common units are removed (default: all).
    """
    from jlang.data.pipeline import make_batches, tokenize_corpus
    from jlang.data.sources import Corpus, CorpusError
    from jlang.parallel import distributed

    _check_mode(mode)
    parts = _check_parts(parts)
    _check_tops(model.config, top_ffn, top_attn)
    if not isinstance(corpus, Corpus):
        corpus = Corpus(corpus)
    langs = list(languages) if languages is not None else list(corpus.languages)
    if not langs:
        raise PLNDError("no language given")
    for lang in shared_languages or ():
        if lang not in langs:
            raise PLNDError(f"shared language {lang!r} is not among the languages {langs}")
    mesh = mesh or model.mesh or distributed.default_mesh()
    if mesh is not None:
        model = model.with_mesh(mesh)
    if model.tokenizer is None:
        raise PLNDError(f"{model.name} has no tokenizer; PLND needs one to tokenize the corpus")
    try:
        tok = tokenize_corpus(corpus, model.tokenizer, languages=langs, add_bos=add_bos, progress=progress)
    except CorpusError as e:
        raise PLNDError(str(e)) from None
    sub = sample_documents(tok, documents_per_language, seed=seed, doc_mode=doc_mode, seq_len=seq_len)
    process_index, process_count = distributed.data_shard(model.mesh)
    max_tokens = documents_per_language * seq_len if doc_mode == "pack" else None
    batches = make_batches(
        sub,
        batch_size=batch_size,
        seq_len=seq_len,
        mode=doc_mode,
        max_tokens=max_tokens,
        process_index=process_index,
        process_count=process_count,
        progress=False,
    )
    meta = {
        "documents_per_language": documents_per_language,
        "doc_mode": doc_mode,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "seed": seed,
        "add_bos": sub.add_bos,
        "tokens": batches.tokens,
        "corpus": {lang: corpus[lang].describe() for lang in langs},
    }
    return run_plnd(
        model,
        batches,
        langs,
        mode=mode,
        top_ffn=top_ffn,
        top_attn=top_attn,
        parts=parts,
        shared_languages=shared_languages,
        total=len(batches),
        progress=progress,
        meta=meta,
    )


# ----------------------------------------------------------------------------- deactivation edits


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


def _select(result: PLNDResult, part: str, lang: str | Sequence[str]) -> np.ndarray:
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
) -> Any:
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
    from jlang.models.decoder import AttnEdits, Edits

    bad = [p for p in parts if p not in EDIT_PARTS]
    if bad or not parts:
        raise PLNDError(f"unknown parts {bad or list(parts)}; use some of {EDIT_PARTS}")
    m = result.meta
    try:
        L, F = (
            result.num_layers,
            int(result.num_neurons if result.num_neurons is not None else m["num_neurons"]),
        )
        H, G, D = int(m["num_heads"]), int(m["num_kv_heads"]), int(m["head_dim"])
    except KeyError as e:
        raise PLNDError(f"the PLND result's meta lacks {e} (model shape); it was not made by jlang.plnd") from None
    if model is not None:
        c = model.config
        if (c.num_layers, c.d_ff, c.num_heads, c.num_kv_heads, c.head_dim) != (
            L,
            F,
            H,
            G,
            D,
        ):
            raise PLNDError(
                f"this PLND result is for {L} layers x {F} neurons, {H} heads / {G} kv heads x {D} "
                f"(model {m.get('model')}); {getattr(model, 'name', 'the model')} has {c.num_layers} x {c.d_ff}, "
                f"{c.num_heads} / {c.num_kv_heads} x {c.head_dim}"
            )
    keep = np.ones(L, bool)
    if layers is not None:
        keep[:] = False
        for layer in layers:
            if not 0 <= int(layer) < L:
                raise PLNDError(f"layer {layer} out of range [0, {L})")
            keep[int(layer)] = True
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
    return Edits(
        mask=jnp.asarray(ffn),
        scale=jnp.asarray(scale),
        shift=jnp.zeros((L, F), jnp.float32),
        attn=attn,
    )
