"""Base vs aligned checkpoint: ternary neuron types, overlaps, activation shifts, the four layer stages.

The ternary-neuron paper (Zhang et al. 2025, AAAI-26, NJUNLP/Language-Neurons-Alignment;
methods.md §3.5) compares a model before and after multilingual alignment and reads
the layers as four functional stages. None of that analysis code is public, so this
module defines it, from two `ActivationStats` collected on the **same tokens** (same
corpus, same batches, same order; see `jlang.analysis.compare.run`):

* **Neuron types** (per neuron, per checkpoint), from the ternary masks (`jlang.ternary`):
  *specific* = assigned to exactly one language, *related* = to 2..K-1 languages,
  *general* (language-agnostic) = `p_k > τ` for **every** language k, with τ the
  ternary assignment threshold (95th percentile of all p). AutoSweep chooses λ so
  that no *selected* neuron is general, which is why the paper studies general
  neurons separately: here they are all neurons that would be assigned to every
  language, selected or not. Everything else is *none*.
* **Overlaps**: per language, Jaccard `|M_k^base ∩ M_k^aligned| / |M_k^base ∪ M_k^aligned|`
  of its neuron set across checkpoints, and the cross-language Jaccard matrix of each.
* **Activation-probability shifts** `Δp = p^aligned − p^base` `[K, L, F]` (exact: the
  counts are over the same tokens), summarised per language and layer.
* **Four stages** (multilingual understanding, shared semantic reasoning,
  output-space transformation, vocabulary output). Per layer l, two curves:
  `divergence[l] = 1 − mean_{k<j} corr_F(p_k[l], p_j[l])` (how differently the
  languages use the layer's neurons; low in a shared semantic space) and
  `language_share[l]` = share of the layer's neurons that are specific or related.
  Each is z-scored over layers, and the layers are cut into 4 contiguous segments by
  the **exact least-squares piecewise-constant segmentation** (`segment`: dynamic
  programming over all boundary placements, O(S·L²)); stage s is segment s in depth
  order. The boundaries come from the data; nothing is hard-coded.
* **Spontaneous alignment**: for the languages *not* in the alignment set, how far
  their neurons (1 − Jaccard, mean |Δp|) and perplexity (ΔNLL) moved, next to the
  aligned languages'.

Everything here is NumPy over host arrays; no model is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from jlang.masks import NeuronMasks
from jlang.methods.common import kthvalue, torch_round
from jlang.methods.ternary import ternary, ternary_probs
from jlang.stats import ActivationStats

__all__ = [
    "STAGE_NAMES",
    "TYPE_NAMES",
    "CompareError",
    "Comparison",
    "LayerProfile",
    "ModelNeurons",
    "compare",
    "delta_summary",
    "divergence_curve",
    "jaccard",
    "layer_profile",
    "model_neurons",
    "neuron_types",
    "segment",
    "spontaneous_alignment",
    "type_counts",
]

TYPE_NAMES = ("none", "specific", "related", "general")
NONE, SPECIFIC, RELATED, GENERAL = range(4)
STAGE_NAMES = (
    "multilingual understanding",
    "shared semantic reasoning",
    "output-space transformation",
    "vocabulary output",
)
CURVES = ("both", "divergence", "language_share")
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


class CompareError(ValueError):
    """Two checkpoints' statistics cannot be compared; the message says why and how to fix it."""


# ----------------------------------------------------------------------------- one checkpoint


@dataclass
class ModelNeurons:
    """One checkpoint's neurons on the comparison tokens.

    Attributes:
      probs: float64 `[K, L, F]` activation probability `over_zero / tokens`.
      masks: the ternary `NeuronMasks` `[K, L, F]`.
      tau: the assignment threshold τ (a neuron belongs to language k when `p_k > τ`).
      types: int8 `[L, F]`, an index into `TYPE_NAMES`.
    """

    languages: list[str]
    probs: np.ndarray
    masks: NeuronMasks
    tau: float
    types: np.ndarray


def neuron_types(language_count: np.ndarray, general: np.ndarray, num_languages: int) -> np.ndarray:
    """int8 `[L, F]` type codes from the masks' language count per neuron and the general flag.

    general (all K languages above τ, or a mask assigning all K) wins; then specific
    (exactly 1 language), related (2..K-1), none.
    """
    count = np.asarray(language_count)
    out = np.full(count.shape, NONE, np.int8)
    out[count == 1] = SPECIFIC
    out[(count >= 2) & (count < num_languages)] = RELATED
    out[np.asarray(general, bool) | (count >= num_languages)] = GENERAL
    return out


def model_neurons(
    stats: ActivationStats,
    masks: NeuronMasks | None = None,
    *,
    top_rate: float = 0.01,
    lam: float | str = "auto",
    activation_bar_ratio: float = 0.95,
) -> ModelNeurons:
    """Ternary masks (computed with `jlang.ternary` unless given), τ and neuron types of one checkpoint.

    General neurons use the ternary code's float32 probabilities and its τ (the
    `kthvalue` of all p at `round(activation_bar_ratio · N)`), so "general" means exactly
    "would be assigned to every language" in `jlang.ternary`.
    """
    if masks is None:
        masks = ternary(stats, top_rate=top_rate, lam=lam, activation_bar_ratio=activation_bar_ratio)
    if masks.languages != stats.languages:
        raise CompareError(
            f"masks have languages {masks.languages}, statistics {stats.languages}; use .select() to align them"
        )
    masks.check_fits(stats.num_layers, stats.num_neurons)
    p32 = ternary_probs(stats)
    tau = masks.meta.get("tau")
    if tau is None:
        tau = float(kthvalue(p32, torch_round(p32.size * activation_bar_ratio)))
    general = (p32 > np.float32(tau)).all(axis=0)
    types = neuron_types(masks.language_count(), general, stats.num_languages)
    return ModelNeurons(list(stats.languages), stats.probs, masks, float(tau), types)


def type_counts(types: np.ndarray) -> np.ndarray:
    """int64 `[4, L]`: neurons of each type (`TYPE_NAMES` order) per layer."""
    return np.stack([(types == t).sum(axis=1) for t in range(len(TYPE_NAMES))]).astype(np.int64)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """`|a ∩ b| / |a ∪ b|` of two boolean masks; NaN when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else float("nan")


# ----------------------------------------------------------------------------- layer stages


def divergence_curve(probs: np.ndarray) -> np.ndarray:
    """float64 `[L]`: `1 − mean over language pairs of the Pearson correlation (over neurons) of p_k[l] and p_j[l]`.

    0 when every language uses the layer's neurons with proportional-plus-offset
    probabilities, up to 2 for anti-correlated use. A language whose p is constant over a
    layer's neurons has no correlation with anything; such pairs are left out (if every
    pair is, the layer gets 0).
    """
    p = np.asarray(probs, np.float64)
    k, n_layers, _ = p.shape
    if k < 2:
        raise CompareError("the cross-language divergence needs at least 2 languages")
    centred = p - p.mean(axis=2, keepdims=True)
    norm = np.sqrt((centred**2).sum(axis=2))  # [K, L]
    iu = np.triu_indices(k, 1)
    out = np.zeros(n_layers)
    for l in range(n_layers):
        ok = norm[:, l] > 0
        x = np.where(ok[:, None], centred[:, l] / np.where(ok, norm[:, l], 1.0)[:, None], 0.0)
        corr = (x @ x.T)[iu]
        valid = (ok[:, None] & ok[None, :])[iu]
        out[l] = 1.0 - float(corr[valid].mean()) if valid.any() else 0.0
    return out


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def segment(curve: np.ndarray, num_segments: int) -> tuple[list[int], float]:
    """Exact least-squares piecewise-constant segmentation of a per-layer curve.

    Args:
      curve: `[L]` or `[L, D]` (D curves segmented jointly: the cost is the sum over columns).
      num_segments: S, 1 <= S <= L.
    Returns:
      (boundaries, cost): the first layer of segments 2..S (S − 1 increasing indices in
      1..L−1) and the minimal total within-segment sum of squared deviations from the
      segment means. Among equal-cost solutions the one with the earliest boundaries wins.

    Dynamic programming: `best[s][j]` = lowest cost of cutting layers `[0, j)` into s
    segments; `best[s][j] = min_i best[s−1][i] + sse(i, j)`, with `sse` from prefix sums.
    """
    x = np.asarray(curve, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or not np.isfinite(x).all():
        raise CompareError(f"curve must be a finite [L] or [L, D] array, got shape {np.shape(curve)}")
    n = x.shape[0]
    if not 1 <= num_segments <= n:
        raise CompareError(f"cannot cut {n} layers into {num_segments} segments (need 1 <= segments <= layers)")
    c1 = np.vstack([np.zeros(x.shape[1]), np.cumsum(x, axis=0)])
    c2 = np.concatenate([[0.0], np.cumsum((x**2).sum(axis=1))])

    def sse(i: int, j: int) -> float:
        s = c1[j] - c1[i]
        return max(float(c2[j] - c2[i] - (s @ s) / (j - i)), 0.0)

    inf = math.inf
    best = np.full((num_segments + 1, n + 1), inf)
    arg = np.zeros((num_segments + 1, n + 1), np.int64)
    best[0, 0] = 0.0
    for s in range(1, num_segments + 1):
        for j in range(s, n - (num_segments - s) + 1):
            cands = [(best[s - 1, i] + sse(i, j), i) for i in range(s - 1, j) if best[s - 1, i] < inf]
            # round so that float noise between equal-cost placements does not decide: earliest boundary wins
            cost, i = min(cands, key=lambda c: (round(c[0], 9), c[1]))
            best[s, j], arg[s, j] = cost, i
    bounds, j = [], n
    for s in range(num_segments, 0, -1):
        j = int(arg[s, j])
        bounds.append(j)
    return sorted(bounds)[1:], float(best[num_segments, n])


@dataclass
class LayerProfile:
    """Per-layer curves of one checkpoint and their segmentation into stages.

    Attributes:
      divergence: `[L]` see `divergence_curve`.
      language_share: `[L]` share of the layer's neurons that are language specific or related.
      specific_share, general_share: `[L]` shares of specific and of general neurons.
      curve: which curve(s) were segmented ("both" = z-scored divergence and language share).
      boundaries: first layer of stages 2..S (empty when the model has fewer layers than stages).
      cost: the segmentation's sum of squared deviations (on the z-scored curve).
    """

    divergence: np.ndarray
    language_share: np.ndarray
    specific_share: np.ndarray
    general_share: np.ndarray
    curve: str
    num_stages: int
    boundaries: list[int]
    cost: float | None
    note: str = ""

    @property
    def num_layers(self) -> int:
        return int(self.divergence.shape[0])

    def stages(self) -> list[dict[str, Any]]:
        """Per stage: name, first and last layer, mean divergence and language share."""
        if not self.boundaries and self.num_stages > 1:
            return []
        edges = [0, *self.boundaries, self.num_layers]
        names = (
            STAGE_NAMES
            if self.num_stages == len(STAGE_NAMES)
            else tuple(f"stage {i + 1}" for i in range(self.num_stages))
        )
        out = []
        for s in range(self.num_stages):
            a, b = edges[s], edges[s + 1]
            out.append(
                {
                    "stage": s + 1,
                    "name": names[s],
                    "first_layer": a,
                    "last_layer": b - 1,
                    "divergence": float(self.divergence[a:b].mean()),
                    "language_share": float(self.language_share[a:b].mean()),
                    "general_share": float(self.general_share[a:b].mean()),
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "curve": self.curve,
            "num_stages": self.num_stages,
            "boundaries": self.boundaries,
            "cost": self.cost,
            "note": self.note,
            "divergence": self.divergence,
            "language_share": self.language_share,
            "specific_share": self.specific_share,
            "general_share": self.general_share,
            "stages": self.stages(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerProfile:
        arr = lambda k: np.asarray(d[k], np.float64)
        return cls(
            arr("divergence"),
            arr("language_share"),
            arr("specific_share"),
            arr("general_share"),
            d["curve"],
            int(d["num_stages"]),
            list(d["boundaries"]),
            d.get("cost"),
            d.get("note", ""),
        )


def layer_profile(neurons: ModelNeurons, *, curve: str = "both", num_stages: int = 4) -> LayerProfile:
    """The per-layer curves of one checkpoint and their optimal cut into `num_stages` stages (module docstring)."""
    if curve not in CURVES:
        raise CompareError(f"curve must be one of {CURVES}, got {curve!r}")
    if num_stages < 1:
        raise CompareError(f"num_stages must be >= 1, got {num_stages}")
    types = neurons.types
    f = types.shape[1]
    div = divergence_curve(neurons.probs)
    share = ((types == SPECIFIC) | (types == RELATED)).sum(axis=1) / f
    columns = {
        "both": [_zscore(div), _zscore(share)],
        "divergence": [_zscore(div)],
        "language_share": [_zscore(share)],
    }[curve]
    profile = LayerProfile(
        div,
        share.astype(np.float64),
        (types == SPECIFIC).sum(axis=1) / f,
        (types == GENERAL).sum(axis=1) / f,
        curve,
        num_stages,
        [],
        None,
    )
    if len(div) < num_stages:
        profile.note = f"{len(div)} layers cannot be cut into {num_stages} stages; no segmentation"
        return profile
    profile.boundaries, profile.cost = segment(np.stack(columns, axis=1), num_stages)
    return profile


# ----------------------------------------------------------------------------- two checkpoints


def delta_summary(delta: np.ndarray, *, bins: int = 41) -> dict[str, np.ndarray]:
    """Summaries of Δp `[K, L, F]`.

    Returns: `mean`, `mean_abs` `[K, L]`; `quantiles` `[L, Q]` over all languages' neurons of
    a layer (`QUANTILES`); `histogram` int64 `[L, bins]` with `bin_edges` `[bins + 1]`
    (symmetric around 0, odd `bins` keeps a bin centred on 0).
    """
    d = np.asarray(delta, np.float64)
    k, n_layers, f = d.shape
    pooled = d.transpose(1, 0, 2).reshape(n_layers, k * f)
    lim = float(np.abs(d).max()) if d.size else 0.0
    lim = lim if lim > 0 else 1.0
    edges = np.linspace(-lim, lim, bins + 1)
    hist = np.stack([np.histogram(row, bins=edges)[0] for row in pooled]).astype(np.int64)
    return {
        "mean": d.mean(axis=2),
        "mean_abs": np.abs(d).mean(axis=2),
        "quantiles": np.quantile(pooled, QUANTILES, axis=1).T,
        "quantile_levels": np.asarray(QUANTILES),
        "histogram": hist,
        "bin_edges": edges,
    }


def spontaneous_alignment(
    languages: Sequence[str],
    aligned_languages: Sequence[str],
    own_jaccard: np.ndarray,
    mean_abs_delta: np.ndarray,
    nll_base: Mapping[str, float] | None = None,
    nll_aligned: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """How far the languages outside the alignment set moved, next to the aligned ones.

    Per language: `moved` = 1 − Jaccard of its neuron set across checkpoints, `mean_abs_dp`
    = mean |Δp| over all its neurons, and (when perplexities are given) `delta_nll` =
    NLL_aligned − NLL_base (log of the PPL ratio). Per group ("aligned", "other") the
    means, and `ratio` = other / aligned for each measure (1 = the untouched languages
    moved as much as the trained ones; 0 = not at all).
    """
    langs = list(languages)
    aligned = [l for l in aligned_languages if l in langs]
    unknown = [l for l in aligned_languages if l not in langs]
    if unknown:
        raise CompareError(f"aligned languages {unknown} are not among the compared languages {langs}")
    others = [l for l in langs if l not in aligned]
    per: dict[str, dict[str, Any]] = {}
    for k, lang in enumerate(langs):
        row: dict[str, Any] = {
            "group": "aligned" if lang in aligned else "other",
            "moved": 1.0 - float(own_jaccard[k]) if np.isfinite(own_jaccard[k]) else float("nan"),
            "mean_abs_dp": float(mean_abs_delta[k]),
        }
        if nll_base is not None and nll_aligned is not None and lang in nll_base and lang in nll_aligned:
            row.update(
                nll_base=float(nll_base[lang]),
                nll_aligned=float(nll_aligned[lang]),
                delta_nll=float(nll_aligned[lang]) - float(nll_base[lang]),
            )
        per[lang] = row
    measures = ["moved", "mean_abs_dp"] + (["delta_nll"] if any("delta_nll" in r for r in per.values()) else [])
    groups: dict[str, dict[str, float]] = {}
    for name, members in (("aligned", aligned), ("other", others)):
        groups[name] = {m: _nanmean([per[l].get(m, float("nan")) for l in members]) for m in measures}
    ratio = {}
    for m in measures:
        a, o = groups["aligned"][m], groups["other"][m]
        ratio[m] = o / a if np.isfinite(a) and np.isfinite(o) and a != 0 else float("nan")
    return {
        "aligned_languages": aligned,
        "other_languages": others,
        "per_language": per,
        "groups": groups,
        "ratio": ratio,
        "measures": measures,
    }


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


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
            "mean_own_jaccard": _nanmean(self.own_jaccard),
            "mean_cross_jaccard_base": _nanmean(self.cross_jaccard_base[off]),
            "mean_cross_jaccard_aligned": _nanmean(self.cross_jaccard_aligned[off]),
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
