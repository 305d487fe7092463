"""How much languages share neurons: IoU per layer and overall, clustering, script/family, specialisation.

* **IoU / Jaccard** `|A ∩ B| / |A ∪ B|` of two languages' neuron sets, over all
  layers (`overall_iou`) and layer by layer (`layer_iou`); NaN where both sets are
  empty (nothing to compare).
* **Clustering**: average-linkage (UPGMA) hierarchical clustering of `1 - IoU`;
  `cluster_order` gives the leaf order for the heat map. SciPy's
  `scipy.cluster.hierarchy.linkage(method="average")` is used when installed; a
  small NumPy UPGMA gives the same order otherwise (equal when no two distances tie).
* **Script and family**: `group_relation` correlates each pair's IoU with "the two
  languages share a script / family" (the built-in table `jlang.data.langinfo`)
  and tests it with a Mantel permutation test (language labels permuted, rows and
  columns together, so the dependence between pairs that share a language is kept).
* **Neuron specialisation** (Tan et al. 2024, EMNLP, as used by the Aya-23 study,
  Trinley et al. 2025, `get_specialized_neurons` / `remove_shared_neurons` /
  `compute_iou`; methods.md §8.2): per layer and direction, sort neurons by how
  often they fire (descending), keep the longest prefix whose cumulative share of
  the total is `<= threshold` (0.9); then drop the neurons kept by *every* direction
  and compare directions by IoU per layer.

  What "fires" means: Tan et al. counted non-zero inputs of the down projection,
  which for ReLU models (mBART) is `relu(W x) > 0`. For gated MLPs the down-proj
  input is `act(gate) ⊙ up`, which is almost never exactly 0, so every neuron's
  count is ≈ the token count and the 90 % prefix becomes an arbitrary 90 % of the
  neurons. jlang counts `a > 0` at `mlp.act` (`a = act(gate)`) instead: for SiLU
  and GELU `a > 0 ⇔ gate > 0`, the same event as ReLU's non-zero, and it is the
  count `ActivationStats.over_zero` already holds (so no extra pass is needed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jlang.data.langinfo import family_of, script_of
from jlang.io.report import FigureWriter, Report, new_figure, save_figure, save_heatmaps

__all__ = [
    "OverlapResult",
    "SpecializationResult",
    "average_linkage",
    "cluster_order",
    "distance_matrix",
    "group_relation",
    "layer_iou",
    "mask_activation",
    "overall_iou",
    "overlap",
    "pairwise_iou",
    "specialization",
    "specialized_neurons",
]


# ----------------------------------------------------------------------------- IoU


def pairwise_iou(sets: np.ndarray) -> np.ndarray:
    """float64 `[K, K]` IoU of K boolean sets `[K, N]`; NaN where both sets are empty."""
    flat = np.asarray(sets, bool).reshape(len(sets), -1).astype(np.float64)
    inter = flat @ flat.T
    size = flat.sum(axis=1)
    union = size[:, None] + size[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)


def overall_iou(masks: np.ndarray) -> np.ndarray:
    """IoU `[K, K]` of the neuron sets `[K, L, F]` over all layers at once (neuron = (layer, index))."""
    m = np.asarray(masks, bool)
    if m.ndim != 3:
        raise ValueError(f"masks must be [K, L, F], got shape {m.shape}")
    return pairwise_iou(m.reshape(m.shape[0], -1))


def layer_iou(masks: np.ndarray) -> np.ndarray:
    """IoU `[L, K, K]` of the neuron sets `[K, L, F]`, layer by layer (NaN where both are empty in that layer)."""
    m = np.asarray(masks, bool)
    if m.ndim != 3:
        raise ValueError(f"masks must be [K, L, F], got shape {m.shape}")
    return np.stack([pairwise_iou(m[:, l]) for l in range(m.shape[1])])


def _off_diagonal_mean(matrix: np.ndarray) -> float:
    k = matrix.shape[-1]
    if k < 2:
        return float("nan")
    vals = matrix[~np.eye(k, dtype=bool)]
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else float("nan")


# ----------------------------------------------------------------------------- clustering


def distance_matrix(similarity: np.ndarray) -> np.ndarray:
    """`1 - similarity` with NaN (no information) as the largest distance, 1, and a zero diagonal."""
    s = np.asarray(similarity, np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"similarity must be a square [K, K] matrix, got shape {s.shape}")
    d = 1.0 - np.where(np.isfinite(s), s, 0.0)
    d = (d + d.T) / 2.0
    np.fill_diagonal(d, 0.0)
    return d


def average_linkage(distance: np.ndarray) -> np.ndarray:
    """UPGMA in NumPy: a SciPy-style linkage matrix `[K-1, 4]` (child a < child b, distance, size).

    The closest pair of clusters is merged first (ties: the lowest cluster slots);
    the merged cluster's distance to another is the size-weighted mean, i.e. the
    mean distance between their members (average linkage).
    """
    d = np.array(distance, np.float64)
    n = d.shape[0]
    if n < 2:
        return np.zeros((0, 4))
    d[np.diag_indices(n)] = np.inf
    ids = list(range(n))  # cluster id held by each slot
    size = np.ones(n)
    active = np.ones(n, bool)
    z = np.zeros((n - 1, 4))
    for step in range(n - 1):
        masked = np.where(active[:, None] & active[None, :], d, np.inf)
        i, j = divmod(int(np.argmin(masked)), n)
        i, j = min(i, j), max(i, j)
        a, b = sorted((ids[i], ids[j]))
        z[step] = (a, b, masked[i, j], size[i] + size[j])
        merged = (size[i] * d[i] + size[j] * d[j]) / (size[i] + size[j])
        d[i], d[:, i] = merged, merged
        d[i, i] = np.inf
        active[j] = False
        d[j], d[:, j] = np.inf, np.inf
        size[i] += size[j]
        ids[i] = n + step
    return z


def _leaves(z: np.ndarray, n: int) -> list[int]:
    """Leaf order of a linkage matrix (left subtree first), as `scipy.cluster.hierarchy.leaves_list`."""
    if n == 1:
        return [0]
    out: list[int] = []
    stack = [2 * n - 2]
    while stack:
        node = stack.pop()
        if node < n:
            out.append(node)
        else:
            left, right = int(z[node - n, 0]), int(z[node - n, 1])
            stack += [right, left]
    return out


def cluster_order(similarity: np.ndarray, *, use_scipy: bool | None = None) -> list[int]:
    """Leaf order of average-linkage clustering of `1 - similarity` `[K, K]` (the heat map's row/column order).

    `use_scipy`: None = SciPy when importable, else the NumPy UPGMA; True/False forces one.
    """
    d = distance_matrix(similarity)
    n = d.shape[0]
    if n <= 2:
        return list(range(n))
    if use_scipy is None:
        try:
            import scipy.cluster.hierarchy  # noqa: F401

            use_scipy = True
        except ImportError:
            use_scipy = False
    if use_scipy:
        from scipy.cluster.hierarchy import leaves_list, linkage
        from scipy.spatial.distance import squareform

        return [int(i) for i in leaves_list(linkage(squareform(d, checks=False), method="average"))]
    return _leaves(average_linkage(d), n)


# ----------------------------------------------------------------------------- script / family


def group_relation(
    similarity: np.ndarray,
    labels: Sequence[str | None],
    *,
    permutations: int = 9999,
    seed: int = 0,
) -> dict[str, Any]:
    """Do languages with the same label (script, family) share more neurons? A Mantel permutation test.

    Over the pairs i < j with both labels known and a finite similarity: `r` = Pearson
    correlation between the similarity and the indicator "same label"; `mean_same` /
    `mean_diff` the mean similarity of same-label / different-label pairs. The null
    distribution permutes the labels among the languages (`permutations` times, seeded);
    `p_value` = (1 + #{r_perm >= r}) / (1 + permutations), one-sided (more sharing
    within a group). `r` and `p_value` are NaN when all or no pairs share a label.
    """
    s = np.asarray(similarity, np.float64)
    k = len(labels)
    if s.shape != (k, k):
        raise ValueError(f"similarity has shape {s.shape} but {k} labels were given")
    known = [i for i, lab in enumerate(labels) if lab is not None]
    lab = np.array([labels[i] for i in known], dtype=object)
    sub = s[np.ix_(known, known)]
    iu = np.triu_indices(len(known), 1)
    vals = sub[iu]
    finite = np.isfinite(vals)

    def stat(lab_perm: np.ndarray) -> tuple[float, np.ndarray]:
        same = (lab_perm[:, None] == lab_perm[None, :])[iu][finite].astype(np.float64)
        x, y = same, vals[finite]
        if x.size < 2 or x.min() == x.max() or y.min() == y.max():
            return float("nan"), same
        return float(np.corrcoef(x, y)[0, 1]), same

    r, same = stat(lab)
    y = vals[finite]
    out: dict[str, Any] = {
        "pairs": int(y.size),
        "same_pairs": int(same.sum()),
        "diff_pairs": int(y.size - same.sum()),
        "mean_same": float(y[same > 0].mean()) if same.sum() else float("nan"),
        "mean_diff": float(y[same == 0].mean()) if (same == 0).sum() else float("nan"),
        "r": r,
        "permutations": int(permutations),
        "unknown": [labels[i] is None for i in range(k)].count(True),
    }
    if math.isnan(r) or permutations < 1:
        out["p_value"] = float("nan")
        return out
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        rp, _ = stat(lab[rng.permutation(len(lab))])
        hits += int(not math.isnan(rp) and rp >= r - 1e-12)
    out["p_value"] = (1 + hits) / (1 + permutations)
    return out


# ----------------------------------------------------------------------------- the overlap report


@dataclass
class OverlapResult(Report):
    """Neuron-set overlap of K languages: IoU overall `[K, K]` and per layer `[L, K, K]`, clustering, relations."""

    languages: list[str]
    overall: np.ndarray  # [K, K]
    per_layer: np.ndarray  # [L, K, K]
    sizes: np.ndarray  # int [K, L]
    order: list[int]
    relations: dict[str, dict] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def mean_by_layer(self) -> np.ndarray:
        """float `[L]`: mean off-diagonal IoU of each layer."""
        return np.array([_off_diagonal_mean(m) for m in self.per_layer])

    def mean_overall(self) -> float:
        return _off_diagonal_mean(self.overall)

    def top_pairs(self, n: int = 5) -> list[tuple[str, str, float]]:
        k = len(self.languages)
        pairs = [
            (self.languages[i], self.languages[j], float(self.overall[i, j]))
            for i in range(k)
            for j in range(i + 1, k)
            if np.isfinite(self.overall[i, j])
        ]
        return sorted(pairs, key=lambda p: -p[2])[:n]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "jlang.OverlapResult/1",
            "languages": self.languages,
            "overall_iou": self.overall,
            "per_layer_iou": self.per_layer,
            "sizes": self.sizes,
            "cluster_order": [self.languages[i] for i in self.order],
            "mean_overall_iou": self.mean_overall(),
            "mean_iou_by_layer": self.mean_by_layer(),
            "relations": self.relations,
            "meta": self.meta,
        }

    def table(self, fmt: str = "{:.3f}") -> str:
        """Markdown table of the overall IoU in cluster order."""
        langs = [self.languages[i] for i in self.order]
        m = self.overall[np.ix_(self.order, self.order)]
        lines = [
            "| IoU | " + " | ".join(langs) + " |",
            "|---" + "|---:" * len(langs) + "|",
        ]
        for i, lang in enumerate(langs):
            lines.append(f"| {lang} | " + " | ".join("–" if not np.isfinite(v) else fmt.format(v) for v in m[i]) + " |")
        return "\n".join(lines)

    def figures(self) -> dict[str, FigureWriter]:
        """`{prefix}.png`: clustered heat map; `{prefix}_layers.png`: IoU per layer."""
        return {"": functools.partial(plot_clustered, self), "layers": functools.partial(plot_layers, self)}


def overlap(masks, *, permutations: int = 9999, seed: int = 0, use_scipy: bool | None = None) -> OverlapResult:
    """IoU of the languages of `masks` (a `NeuronMasks`), clustering and script/family relations.

    Languages outside the `langinfo` table get no label (left out of the relation tests).
    """
    languages = list(masks.languages)
    m = np.asarray(masks.masks, bool)
    overall = overall_iou(m)
    relations = {}
    for key, labels in (
        ("script", [script_of(c) for c in languages]),
        ("family", [family_of(c) for c in languages]),
        ("branch", [family_of(c, "branch") for c in languages]),
    ):
        rel = group_relation(overall, labels, permutations=permutations, seed=seed)
        rel["labels"] = dict(zip(languages, labels))
        relations[key] = rel
    return OverlapResult(
        languages=languages,
        overall=overall,
        per_layer=layer_iou(m),
        sizes=m.sum(axis=2).astype(np.int64),
        order=cluster_order(overall, use_scipy=use_scipy),
        relations=relations,
        meta={
            "method": masks.meta.get("method"),
            "model": masks.meta.get("model"),
            "measure": "IoU (Jaccard)",
            "clustering": "average linkage on 1 - IoU",
        },
    )


def _label(code: str) -> str:
    script = script_of(code)
    return f"{code} ({script[:4]})" if script else code


def plot_clustered(result: OverlapResult, path: str | Path) -> Path:
    """Heat map of the overall IoU, rows and columns in cluster order, labels with the script."""
    order = result.order
    m = result.overall[np.ix_(order, order)].copy()
    np.fill_diagonal(m, np.nan)  # the diagonal (1.0) would wash out the colour scale
    labels = [_label(result.languages[i]) for i in order]
    k = len(labels)
    return save_heatmaps(
        path,
        [
            {
                "matrix": m,
                "rows": labels,
                "cols": labels,
                "title": "neuron-set IoU (clustered, average linkage)",
                "cbar_label": "IoU",
                "fmt": "{:.2f}",
            }
        ],
        ncols=1,
        panel_size=(0.55 * k + 3.0, 0.5 * k + 2.0),
    )


def plot_layers(result: OverlapResult, path: str | Path) -> Path:
    """Mean IoU per layer (all pairs, same-script pairs, different-script pairs) and neurons per layer."""
    langs = result.languages
    scripts = [script_of(c) for c in langs]
    k, L = len(langs), result.per_layer.shape[0]
    same = np.array(
        [[scripts[i] is not None and scripts[i] == scripts[j] and i != j for j in range(k)] for i in range(k)]
    )
    diff = np.array(
        [
            [scripts[i] is not None and scripts[j] is not None and scripts[i] != scripts[j] for j in range(k)]
            for i in range(k)
        ]
    )

    def mean_where(sel):
        out = []
        for l in range(L):
            v = result.per_layer[l][sel]
            v = v[np.isfinite(v)]
            out.append(v.mean() if v.size else np.nan)
        return np.array(out)

    fig = new_figure(11, 4)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(range(L), result.mean_by_layer(), "k-o", ms=3, label="all pairs")
    if same.any():
        ax.plot(range(L), mean_where(same), "-s", ms=3, label="same script")
    if diff.any():
        ax.plot(range(L), mean_where(diff), "-^", ms=3, label="different script")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean IoU")
    ax.set_title("neuron-set IoU per layer")
    ax.legend(fontsize=8)
    ax2 = fig.add_subplot(1, 2, 2)
    im = ax2.imshow(
        result.sizes.T,
        aspect="auto",
        origin="lower",
        cmap="viridis",
        interpolation="nearest",
    )
    ax2.set_xticks(range(k), labels=langs)
    ax2.set_xlabel("language")
    ax2.set_ylabel("layer")
    ax2.set_title("neurons per layer")
    fig.colorbar(im, ax=ax2, label="neurons")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- neuron specialisation (§8.2)


def specialized_neurons(counts: np.ndarray, threshold: float = 0.9, *, remove_shared: bool = True) -> np.ndarray:
    """bool `[K, L, F]`: each direction's specialised neurons per layer (Tan et al. 2024 `get_specialized_neurons`).

    Args:
      counts: `[K, L, F]` how often each neuron fires per direction (jlang: `over_zero`,
        the count of `a > 0` at `mlp.act`; see the module docstring).
      threshold: keep, per direction and layer, the neurons sorted by count (descending; ties by
        index) whose cumulative share of the layer's total is `<= threshold`.
      remove_shared: drop, per layer, the neurons kept by every direction (`remove_shared_neurons`).
    """
    c = np.abs(np.asarray(counts, np.float64))
    if c.ndim != 3:
        raise ValueError(f"counts must be [K, L, F], got shape {c.shape}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    out = np.zeros(c.shape, bool)
    for k in range(c.shape[0]):
        for l in range(c.shape[1]):
            row = c[k, l]
            total = row.sum()
            if total <= 0:
                continue
            order = np.argsort(-row, kind="stable")
            share = np.cumsum(row[order]) / total
            out[k, l, order[share <= threshold + 1e-12]] = True
    if remove_shared and c.shape[0] > 1:
        out &= ~out.all(axis=0, keepdims=True)
    return out


@dataclass
class SpecializationResult(Report):
    """Specialised neurons per direction `[K, L, F]` and their IoU per layer `[L, K, K]` (Tan et al. 2024)."""

    languages: list[str]
    masks: np.ndarray  # bool [K, L, F]
    per_layer: np.ndarray  # [L, K, K]
    threshold: float
    shared_removed: np.ndarray  # int [L]: neurons kept by every direction (removed)
    meta: dict = field(default_factory=dict)

    def mean_by_layer(self) -> np.ndarray:
        return np.array([_off_diagonal_mean(m) for m in self.per_layer])

    def pair_by_layer(self, a: str, b: str) -> np.ndarray:
        i, j = self.languages.index(a), self.languages.index(b)
        return self.per_layer[:, i, j]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "jlang.SpecializationResult/1",
            "languages": self.languages,
            "threshold": self.threshold,
            "neurons_per_layer": self.masks.sum(axis=2),
            "shared_removed_per_layer": self.shared_removed,
            "per_layer_iou": self.per_layer,
            "mean_iou_by_layer": self.mean_by_layer(),
            "meta": self.meta,
        }


def specialization(
    stats_or_counts,
    languages: Sequence[str] | None = None,
    *,
    threshold: float = 0.9,
    remove_shared: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> SpecializationResult:
    """Neuron specialisation of the directions of an `ActivationStats` (its `over_zero`) or of raw counts
    `[K, L, F]`."""
    if hasattr(stats_or_counts, "over_zero"):
        counts = stats_or_counts.over_zero
        languages = list(languages or stats_or_counts.languages)
        if list(stats_or_counts.languages) != languages:
            counts = stats_or_counts.select(languages).over_zero
        info = {
            "hook_point": stats_or_counts.meta.get("hook_point", "mlp.act"),
            "count": "a > 0",
            "tokens": dict(zip(stats_or_counts.languages, stats_or_counts.tokens.tolist())),
        }
    else:
        counts = np.asarray(stats_or_counts)
        if languages is None or len(languages) != counts.shape[0]:
            raise ValueError("give one language name per row of counts")
        languages, info = list(languages), {}
    kept = specialized_neurons(counts, threshold, remove_shared=False)
    shared = kept.all(axis=0).sum(axis=1) if len(languages) > 1 else np.zeros(kept.shape[1], np.int64)
    masks = specialized_neurons(counts, threshold, remove_shared=remove_shared)
    return SpecializationResult(
        languages=languages,
        masks=masks,
        per_layer=layer_iou(masks),
        threshold=threshold,
        shared_removed=np.asarray(shared if remove_shared else np.zeros_like(shared), np.int64),
        meta={
            **info,
            **dict(meta or {}),
            "reference": "Tan et al. 2024 get_specialized_neurons (threshold 0.9) + "
            "remove_shared_neurons + compute_iou, as in Trinley et al. 2025",
        },
    )


# ----------------------------------------------------------------------------- activation of neuron sets


def mask_activation(stats, masks, *, per_layer: bool = False) -> np.ndarray:
    """Mean activation probability `P(a > 0)` of each language's neurons on each text set.

    Args:
      stats: `ActivationStats` of S text sets (e.g. code-mixed sets), same model as `masks`.
      masks: `NeuronMasks` of K languages.
      per_layer: also split by layer.
    Returns:
      float64 `[S, K]` (or `[S, K, L]` with `per_layer`): mean over the neurons of mask k
      (in layer l) of `over_zero / tokens` on set s; NaN where the mask is empty.
    """
    if (stats.num_layers, stats.num_neurons) != (masks.num_layers, masks.num_neurons):
        raise ValueError(
            f"statistics are {stats.num_layers} x {stats.num_neurons} but masks {masks.num_layers} x "
            f"{masks.num_neurons}: they come from different models"
        )
    p = stats.probs  # [S, L, F]
    m = np.asarray(masks.masks, np.float64)  # [K, L, F]
    with np.errstate(invalid="ignore", divide="ignore"):
        if per_layer:
            return np.einsum("slf,klf->skl", p, m) / m.sum(axis=2)[None]
        return np.einsum("slf,klf->sk", p, m) / m.sum(axis=(1, 2))[None]
