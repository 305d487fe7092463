"""Programming-language neurons (Kargaran et al. 2025, cisnlp/code-specific-neurons): masks and their summaries.

Kargaran et al. run LAPE over programming languages plus English (methods.md
§9.3) in two ways, both in `jlang.methods`:

* `lape` -- RUCAIBox's `identify.py` defaults (the lowest-entropy 1% of all
  neurons, each given to every language above the 95th-percentile probability);
* `lape_fixed_count` -- `custom_activation(num_neurons_per_lang=400)`: each
  language's N lowest-entropy candidates, so every language gets the same
  count (a neuron may be in several).

`identify_code_neurons` runs both on one `ActivationStats`; the functions below
summarise masks for the report: neurons per layer band, how specific a
language's neurons are (activation probability on their language vs the
others), and the most specific neurons with their probabilities.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jlang.masks import NeuronMasks
from jlang.methods import lape, lape_entropy, lape_fixed_count, lape_probs
from jlang.stats import ActivationStats

__all__ = [
    "CodeNeurons",
    "identify_code_neurons",
    "layer_bands",
    "shared_counts",
    "specificity",
    "top_neurons",
]


@dataclass
class CodeNeurons:
    """Both selections of one statistics pass."""

    lape: NeuronMasks
    fixed_count: NeuronMasks


def identify_code_neurons(
    stats: ActivationStats,
    *,
    top_rate: float = 0.01,
    filter_rate: float = 0.95,
    activation_bar_ratio: float = 0.95,
    num_per_language: int = 400,
) -> CodeNeurons:
    """LAPE (identify.py defaults) and the fixed-count variant (N per language) on the same statistics."""
    return CodeNeurons(
        lape=lape(stats, top_rate=top_rate, filter_rate=filter_rate, activation_bar_ratio=activation_bar_ratio),
        fixed_count=lape_fixed_count(
            stats, num_per_language=num_per_language, filter_rate=filter_rate, activation_bar_ratio=activation_bar_ratio
        ),
    )


def layer_bands(masks: NeuronMasks, bands: int = 3) -> tuple[list[str], np.ndarray]:
    """(band names, float64 `[K, bands]`): share of each language's neurons in the bottom/middle/top layers.

    Layers are split into `bands` contiguous groups of (nearly) equal size; NaN for a language without neurons.
    """
    L = masks.num_layers
    edges = np.linspace(0, L, bands + 1).round().astype(int)
    names = [f"L{a}-{b - 1}" for a, b in itertools.pairwise(edges)]
    counts = masks.counts()  # [K, L]
    per_band = np.stack([counts[:, a:b].sum(axis=1) for a, b in itertools.pairwise(edges)], axis=1).astype(float)
    total = per_band.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return names, np.where(total > 0, per_band / np.where(total > 0, total, 1), np.nan)


def specificity(stats: ActivationStats, masks: NeuronMasks) -> dict[str, dict[str, float]]:
    """Per language k of `masks`: how much more often its neurons fire on k than on the other languages.

    `p_own` = mean over k's neurons of p_k (activation probability `a > 0` on k's tokens); `p_other_mean`
    and `p_other_max` = the mean over k's neurons of the mean / max of p_j over j != k; `ratio` = p_own /
    p_other_mean. Languages are matched by name, so the masks may hold a subset of the statistics' languages.
    """
    p = lape_probs(stats)  # [K, L, F]
    out = {}
    for lang in masks.languages:
        m = masks[lang]
        k = stats.index(lang)
        if not m.any():
            out[lang] = {
                "neurons": 0,
                "p_own": float("nan"),
                "p_other_mean": float("nan"),
                "p_other_max": float("nan"),
                "ratio": float("nan"),
            }
            continue
        sel = p[:, m]  # [K, n]
        others = np.delete(sel, k, axis=0)
        own = float(sel[k].mean())
        other_mean = float(others.mean(axis=0).mean()) if others.size else float("nan")
        out[lang] = {
            "neurons": int(m.sum()),
            "p_own": own,
            "p_other_mean": other_mean,
            "p_other_max": float(others.max(axis=0).mean()) if others.size else float("nan"),
            "ratio": own / other_mean if other_mean > 0 else float("inf"),
        }
    return out


def top_neurons(stats: ActivationStats, masks: NeuronMasks, language: str, n: int = 5) -> list[dict]:
    """The `n` lowest-entropy neurons of `language`'s mask: layer, index, LAPE entropy, p on every language."""
    p = lape_probs(stats)
    entropy = lape_entropy(p)
    layers, neurons = np.nonzero(masks[language])
    order = np.lexsort((layers * masks.num_neurons + neurons, entropy[layers, neurons]))[:n]
    return [
        {
            "layer": int(layers[i]),
            "neuron": int(neurons[i]),
            "entropy": float(entropy[layers[i], neurons[i]]),
            "p": {lang: float(p[j, layers[i], neurons[i]]) for j, lang in enumerate(stats.languages)},
        }
        for i in order
    ]


def shared_counts(masks: NeuronMasks, languages: Sequence[str] | None = None) -> np.ndarray:
    """int64 `[K, K]`: neurons in both languages' masks (the diagonal: each mask's size)."""
    languages = list(languages or masks.languages)
    flat = np.stack([masks[l].ravel() for l in languages]).astype(np.int64)
    return flat @ flat.T
