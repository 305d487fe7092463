"""One checkpoint's neurons on the comparison tokens: ternary masks, the threshold τ and a type per neuron.

Neuron types (per neuron, per checkpoint), from the ternary masks (`jlang.ternary`; the
ternary-neuron paper, Zhang et al. 2025, methods.md §3.5): *specific* = assigned to exactly
one language, *related* = to 2..K-1 languages, *general* (language-agnostic) = `p_k > τ`
for **every** language k, with τ the ternary assignment threshold (95th percentile of all
p). AutoSweep chooses λ so that no *selected* neuron is general, which is why the paper
studies general neurons separately: here they are all neurons that would be assigned to
every language, selected or not. Everything else is *none*.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jlang.masks import NeuronMasks
from jlang.methods.common import quantile_kthvalue
from jlang.methods.ternary import ternary, ternary_probs
from jlang.stats import ActivationStats

__all__ = [
    "TYPE_NAMES",
    "CompareError",
    "ModelNeurons",
    "jaccard",
    "model_neurons",
    "neuron_types",
    "type_counts",
]

TYPE_NAMES = ("none", "specific", "related", "general")
NONE, SPECIFIC, RELATED, GENERAL = range(4)


class CompareError(ValueError):
    """Two checkpoints' statistics cannot be compared; the message says why and how to fix it."""


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
        tau = float(quantile_kthvalue(p32, activation_bar_ratio))
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
