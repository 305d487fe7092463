"""Per-layer curves of one checkpoint and their cut into functional stages.

The ternary-neuron paper (Zhang et al. 2025, methods.md §3.5) reads a model's layers as four
stages: multilingual understanding, shared semantic reasoning, output-space transformation,
vocabulary output. Per layer l, two curves:
`divergence[l] = 1 − mean_{k<j} corr_F(p_k[l], p_j[l])` (how differently the languages use
the layer's neurons; low in a shared semantic space) and `language_share[l]` = share of the
layer's neurons that are specific or related (`jlang.analysis.compare.neurons`). Each is
z-scored over layers, and the layers are cut into 4 contiguous segments by the **exact
least-squares piecewise-constant segmentation** (`segment`: dynamic programming over all
boundary placements, O(S·L²)); stage s is segment s in depth order. The boundaries come from
the data; nothing is hard-coded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from jlang.analysis.compare.neurons import GENERAL, RELATED, SPECIFIC, CompareError, ModelNeurons

__all__ = ["STAGE_NAMES", "LayerProfile", "divergence_curve", "layer_profile", "segment"]

STAGE_NAMES = (
    "multilingual understanding",
    "shared semantic reasoning",
    "output-space transformation",
    "vocabulary output",
)
CURVES = ("both", "divergence", "language_share")


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


def zscore(x: np.ndarray) -> np.ndarray:
    """`(x − mean) / sd`; zeros for a constant curve."""
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
        "both": [zscore(div), zscore(share)],
        "divergence": [zscore(div)],
        "language_share": [zscore(share)],
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
