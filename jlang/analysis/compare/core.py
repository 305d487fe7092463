"""Base vs aligned checkpoint: ternary neuron types, overlaps, activation shifts, the four layer stages.

The ternary-neuron paper (Zhang et al. 2025, AAAI-26, NJUNLP/Language-Neurons-Alignment;
methods.md §3.5) compares a model before and after multilingual alignment and reads
the layers as four functional stages. None of that analysis code is public, so this
package defines it, from two `ActivationStats` collected on the **same tokens** (same
corpus, same batches, same order; see `jlang.analysis.compare.run`). `compare` puts
together, for both checkpoints:

* **Neuron types** (specific, related, general, none) from the ternary masks
  (`jlang.analysis.compare.neurons`), and how neurons moved between types.
* **Overlaps**: per language, Jaccard `|M_k^base ∩ M_k^aligned| / |M_k^base ∪ M_k^aligned|`
  of its neuron set across checkpoints, and the cross-language Jaccard matrix of each.
* **Activation-probability shifts** `Δp = p^aligned − p^base` and **spontaneous alignment**
  (`jlang.analysis.compare.shifts`).
* **Four stages**: per-layer curves cut into contiguous stages by an exact least-squares
  segmentation (`jlang.analysis.compare.profile`).

Everything here is NumPy over host arrays; no model is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from jlang.analysis.compare.neurons import TYPE_NAMES, CompareError, jaccard, model_neurons, type_counts
from jlang.analysis.compare.profile import LayerProfile, layer_profile
from jlang.analysis.compare.shifts import delta_summary, nanmean, spontaneous_alignment
from jlang.masks import NeuronMasks
from jlang.stats import ActivationStats

__all__ = ["Comparison", "check_same_tokens", "compare"]


@dataclass
class Comparison:
    """Base vs aligned on the same tokens (module docstring). Arrays are host NumPy.

    Attributes:
      languages, tokens `[K]`: compared languages and the tokens each was counted on.
      type_counts_base / type_counts_aligned: int64 `[4, L]` neurons per type (`TYPE_NAMES`) per layer.
      transitions: int64 `[4, 4]`, `[t_base, t_aligned]` = neurons that went from type t_base to t_aligned.
      own_jaccard: `[K]` Jaccard of each language's neuron set across checkpoints;
        own_jaccard_layers `[K, L]` the same per layer.
      set_sizes_base / set_sizes_aligned / set_intersection: int64 `[K]`.
      cross_jaccard_base / cross_jaccard_aligned: `[K, K]` overlaps between languages in each checkpoint.
      delta: `delta_summary` of Δp = p_aligned − p_base; own_shift `[K]` = mean Δp_k over k's base neurons.
      profile_base / profile_aligned: `LayerProfile` (curves and four-stage boundaries).
      spontaneous: `spontaneous_alignment(...)` when the aligned languages are known, else None.
      nll_base / nll_aligned: per-language mean NLL (NJUNLP convention, see `jlang.evals.perplexity`) or None.
    """

    languages: list[str]
    tokens: np.ndarray
    num_layers: int
    num_neurons: int
    type_counts_base: np.ndarray
    type_counts_aligned: np.ndarray
    transitions: np.ndarray
    own_jaccard: np.ndarray
    own_jaccard_layers: np.ndarray
    set_sizes_base: np.ndarray
    set_sizes_aligned: np.ndarray
    set_intersection: np.ndarray
    cross_jaccard_base: np.ndarray
    cross_jaccard_aligned: np.ndarray
    delta: dict[str, np.ndarray]
    own_shift: np.ndarray
    profile_base: LayerProfile
    profile_aligned: LayerProfile
    lambda_base: float | None = None
    lambda_aligned: float | None = None
    tau_base: float | None = None
    tau_aligned: float | None = None
    aligned_languages: list[str] | None = None
    spontaneous: dict[str, Any] | None = None
    nll_base: dict[str, float] | None = None
    nll_aligned: dict[str, float] | None = None
    meta: dict = field(default_factory=dict)

    def headline(self) -> dict[str, Any]:
        """The few numbers a reader wants first."""
        off = ~np.eye(len(self.languages), dtype=bool)
        totals = lambda c: {n: int(c[i].sum()) for i, n in enumerate(TYPE_NAMES) if n != "none"}
        out = {
            "types_base": totals(self.type_counts_base),
            "types_aligned": totals(self.type_counts_aligned),
            "mean_own_jaccard": nanmean(self.own_jaccard),
            "mean_cross_jaccard_base": nanmean(self.cross_jaccard_base[off]),
            "mean_cross_jaccard_aligned": nanmean(self.cross_jaccard_aligned[off]),
            "mean_abs_dp": float(self.delta["mean_abs"].mean()),
            "stage_boundaries_base": self.profile_base.boundaries,
            "stage_boundaries_aligned": self.profile_aligned.boundaries,
        }
        if self.spontaneous is not None:
            out["spontaneous_groups"] = self.spontaneous["groups"]
            out["spontaneous_ratio"] = self.spontaneous["ratio"]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "jlang.Comparison/1",
            "headline": self.headline(),
            "languages": self.languages,
            "tokens": self.tokens,
            "num_layers": self.num_layers,
            "num_neurons": self.num_neurons,
            "type_names": list(TYPE_NAMES),
            "type_counts_base": self.type_counts_base,
            "type_counts_aligned": self.type_counts_aligned,
            "transitions": self.transitions,
            "own_jaccard": self.own_jaccard,
            "own_jaccard_layers": self.own_jaccard_layers,
            "set_sizes_base": self.set_sizes_base,
            "set_sizes_aligned": self.set_sizes_aligned,
            "set_intersection": self.set_intersection,
            "cross_jaccard_base": self.cross_jaccard_base,
            "cross_jaccard_aligned": self.cross_jaccard_aligned,
            "delta": self.delta,
            "own_shift": self.own_shift,
            "profile_base": self.profile_base.to_dict(),
            "profile_aligned": self.profile_aligned.to_dict(),
            "lambda_base": self.lambda_base,
            "lambda_aligned": self.lambda_aligned,
            "tau_base": self.tau_base,
            "tau_aligned": self.tau_aligned,
            "aligned_languages": self.aligned_languages,
            "spontaneous": self.spontaneous,
            "nll_base": self.nll_base,
            "nll_aligned": self.nll_aligned,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Comparison:
        f64 = lambda x: np.array(
            [[np.nan if v is None else v for v in r] for r in x]
            if x and isinstance(x[0], list)
            else [np.nan if v is None else v for v in x],
            np.float64,
        )
        i64 = lambda x: np.asarray(x, np.int64)
        delta = {k: (i64(v) if k == "histogram" else f64(v)) for k, v in d["delta"].items()}
        return cls(
            languages=list(d["languages"]),
            tokens=i64(d["tokens"]),
            num_layers=int(d["num_layers"]),
            num_neurons=int(d["num_neurons"]),
            type_counts_base=i64(d["type_counts_base"]),
            type_counts_aligned=i64(d["type_counts_aligned"]),
            transitions=i64(d["transitions"]),
            own_jaccard=f64(d["own_jaccard"]),
            own_jaccard_layers=f64(d["own_jaccard_layers"]),
            set_sizes_base=i64(d["set_sizes_base"]),
            set_sizes_aligned=i64(d["set_sizes_aligned"]),
            set_intersection=i64(d["set_intersection"]),
            cross_jaccard_base=f64(d["cross_jaccard_base"]),
            cross_jaccard_aligned=f64(d["cross_jaccard_aligned"]),
            delta=delta,
            own_shift=f64(d["own_shift"]),
            profile_base=LayerProfile.from_dict(d["profile_base"]),
            profile_aligned=LayerProfile.from_dict(d["profile_aligned"]),
            lambda_base=d.get("lambda_base"),
            lambda_aligned=d.get("lambda_aligned"),
            tau_base=d.get("tau_base"),
            tau_aligned=d.get("tau_aligned"),
            aligned_languages=d.get("aligned_languages"),
            spontaneous=d.get("spontaneous"),
            nll_base=d.get("nll_base"),
            nll_aligned=d.get("nll_aligned"),
            meta=dict(d.get("meta", {})),
        )


def check_same_tokens(base: ActivationStats, aligned: ActivationStats) -> None:
    """Both statistics must count the same tokens of the same languages with the same layers x neurons."""
    if base.languages != aligned.languages:
        raise CompareError(
            f"base statistics have languages {base.languages}, aligned {aligned.languages}; "
            "use .select() to put them in the same order"
        )
    if base.shape != aligned.shape:
        raise CompareError(
            f"base statistics are {base.shape} (K, L, F), aligned {aligned.shape}: the two checkpoints "
            "must share the architecture"
        )
    if not np.array_equal(base.tokens, aligned.tokens):
        raise CompareError(
            f"the statistics count different tokens (base {base.tokens.tolist()}, aligned "
            f"{aligned.tokens.tolist()}); collect both on the same corpus and batches "
            "(jlang.analysis.compare.run.run_compare)"
        )
    db, da = base.meta.get("tokens_digest"), aligned.meta.get("tokens_digest")
    if db is not None and da is not None and db != da:
        raise CompareError(
            "the statistics were collected on different token batches (tokens_digest differs); "
            "collect both with the same tokenizer, corpus and batch settings"
        )


def compare(
    base: ActivationStats,
    aligned: ActivationStats,
    *,
    base_masks: NeuronMasks | None = None,
    aligned_masks: NeuronMasks | None = None,
    aligned_languages: Sequence[str] | None = None,
    nll_base: Mapping[str, float] | None = None,
    nll_aligned: Mapping[str, float] | None = None,
    top_rate: float = 0.01,
    lam: float | str = "auto",
    activation_bar_ratio: float = 0.95,
    curve: Literal["both", "divergence", "language_share"] = "both",
    num_stages: int = 4,
    bins: int = 41,
    meta: Mapping[str, Any] | None = None,
) -> Comparison:
    """Compare two checkpoints' statistics collected on the same tokens (module docstring).

    Args:
      base, aligned: `ActivationStats` of the two checkpoints on the same tokens.
      base_masks, aligned_masks: ternary masks to use (default: `jlang.ternary` with
        `top_rate`, `lam` ("auto" = AutoSweep) and `activation_bar_ratio`).
      aligned_languages: the languages used in alignment; enables the spontaneous-alignment section.
      nll_base, nll_aligned: per-language mean NLL of each checkpoint (e.g. from
        `jlang.evals.perplexity.ppl_matrix`), for the perplexity part of that section.
      curve, num_stages: what `layer_profile` segments, and into how many stages.
      bins: histogram bins of Δp per layer.
    """
    check_same_tokens(base, aligned)
    kw = {
        "top_rate": top_rate,
        "lam": lam,
        "activation_bar_ratio": activation_bar_ratio,
    }
    nb = model_neurons(base, base_masks, **kw)
    na = model_neurons(aligned, aligned_masks, **kw)
    mb, ma = nb.masks.masks, na.masks.masks  # [K, L, F]
    k, n_layers, _ = mb.shape
    own = np.array([jaccard(mb[i], ma[i]) for i in range(k)])
    own_layers = np.array([[jaccard(mb[i, l], ma[i, l]) for l in range(n_layers)] for i in range(k)])
    transitions = np.zeros((len(TYPE_NAMES), len(TYPE_NAMES)), np.int64)
    np.add.at(transitions, (nb.types.ravel(), na.types.ravel()), 1)
    d = na.probs - nb.probs
    summary = delta_summary(d, bins=bins)
    own_shift = np.array([float(d[i][mb[i]].mean()) if mb[i].any() else float("nan") for i in range(k)])
    spont = None
    if aligned_languages is not None:
        spont = spontaneous_alignment(
            base.languages, aligned_languages, own, summary["mean_abs"].mean(axis=1), nll_base, nll_aligned
        )
    return Comparison(
        languages=list(base.languages),
        tokens=base.tokens.copy(),
        num_layers=n_layers,
        num_neurons=base.num_neurons,
        type_counts_base=type_counts(nb.types),
        type_counts_aligned=type_counts(na.types),
        transitions=transitions,
        own_jaccard=own,
        own_jaccard_layers=own_layers,
        set_sizes_base=mb.sum(axis=(1, 2)).astype(np.int64),
        set_sizes_aligned=ma.sum(axis=(1, 2)).astype(np.int64),
        set_intersection=(mb & ma).sum(axis=(1, 2)).astype(np.int64),
        cross_jaccard_base=nb.masks.jaccard(),
        cross_jaccard_aligned=na.masks.jaccard(),
        delta=summary,
        own_shift=own_shift,
        profile_base=layer_profile(nb, curve=curve, num_stages=num_stages),
        profile_aligned=layer_profile(na, curve=curve, num_stages=num_stages),
        lambda_base=nb.masks.meta.get("lambda"),
        lambda_aligned=na.masks.meta.get("lambda"),
        tau_base=nb.tau,
        tau_aligned=na.tau,
        aligned_languages=list(aligned_languages) if aligned_languages is not None else None,
        spontaneous=spont,
        nll_base=dict(nll_base) if nll_base is not None else None,
        nll_aligned=dict(nll_aligned) if nll_aligned is not None else None,
        meta={
            "top_rate": top_rate,
            "lam": lam,
            "activation_bar_ratio": activation_bar_ratio,
            "curve": curve,
            "num_stages": num_stages,
            **dict(meta or {}),
        },
    )
