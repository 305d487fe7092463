"""What moved between two checkpoints on the same tokens: activation-probability shifts and spontaneous alignment.

* **Activation-probability shifts** `Δp = p^aligned − p^base` `[K, L, F]` (exact: the
  counts are over the same tokens), summarised per language and layer (`delta_summary`).
* **Spontaneous alignment** (the ternary-neuron paper, methods.md §3.5): for the languages
  *not* in the alignment set, how far their neurons (1 − Jaccard, mean |Δp|) and perplexity
  (ΔNLL) moved, next to the aligned languages' (`spontaneous_alignment`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jlang.analysis.compare.neurons import CompareError

__all__ = ["QUANTILES", "delta_summary", "nanmean", "spontaneous_alignment"]

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def nanmean(values: Sequence[float]) -> float:
    """The mean of the finite values; NaN when there is none."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


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
        groups[name] = {m: nanmean([per[l].get(m, float("nan")) for l in members]) for m in measures}
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
