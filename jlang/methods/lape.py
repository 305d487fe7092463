"""LAPE: language activation probability entropy (Tang et al., ACL 2024).

Faithful to RUCAIBox/Language-Specific-Neurons `identify.py` (methods.md §1.1), in NumPy:

1. `p[k, l, j] = over_zero / n`, float32 as torch computes `int_tensor / int_tensor`.
2. `p̃ = p / Σ_k p` (NaN -> 0 for never-active neurons); entropy `-Σ p̃ ln p̃` (natural
   log, not normalised; terms with p̃ = 0 contribute 0), in float32 like the original.
3. `τ = kthvalue(all L·I·K probs, round(N · filter_rate))` -- 1-indexed, so
   `τ = sorted(p)[round(0.95 N) - 1]`.
4. Neurons with no `p > τ` (strict) get entropy `+inf`.
5. The `round(L·I·top_rate)` lowest entropies are selected (`topk(largest=False)`); ties
   are broken by flat index `l·I + j` so the result is deterministic.
6. Each selected neuron is assigned to every language with `p > activation_bar`
   (strict), `activation_bar = kthvalue(p, round(N · activation_bar_ratio))` -- the same
   value as τ by default, so every selected neuron with finite entropy gets >= 1 language.

Precision: p and τ are bit-identical to torch's. The float32 entropies agree with
torch's to about 1 ulp (NumPy and torch use different float32 `log` and reduction
kernels, as do torch's own CPU/GPU builds), so the selection can differ only if two
entropies within 1 ulp straddle the cut-off; on the Mistral MGSM counts it is
identical (tests/test_lape.py).

Unlike identify.py, the output always has K languages (identify.py's
`split(bincount(lang))` drops trailing languages with no neuron).

`lape_fixed_count` is the equal-size variant of cisnlp/code-specific-neurons
`identify.ipynb: custom_activation` (methods.md §9.3).
"""

from __future__ import annotations

import numpy as np

from jlang.masks import NeuronMasks
from jlang.methods.common import (
    MethodError,
    activation_probs_f32,
    check_rate,
    lowest_k,
    mask_meta,
    quantile_kthvalue,
    torch_round,
)
from jlang.stats import ActivationStats

__all__ = ["lape", "lape_fixed_count", "lape_entropy", "lape_probs"]


def lape_probs(stats: ActivationStats) -> np.ndarray:
    """float32 [K, L, F] activation probabilities `over_zero / n` (identify.py's `activation_probs`)."""
    empty = [lang for lang, n in zip(stats.languages, stats.tokens) if n <= 0]
    if empty:
        raise MethodError(f"languages {empty} have 0 tokens: LAPE needs activation counts over a non-empty corpus")
    return activation_probs_f32(stats.over_zero, stats.tokens)


def lape_entropy(probs: np.ndarray) -> np.ndarray:
    """float32 [L, F] LAPE entropy of `probs` float32 [K, L, F] (unfiltered; natural log).

    Mirrors::

        normed = p / p.sum(-1, keepdim=True); normed[isnan(normed)] = 0
        entropy = -sum(normed * where(normed > 0, log(normed), 0), -1)
    """
    p = np.asarray(probs, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        normed = p / p.sum(axis=0, dtype=np.float32)
    normed[np.isnan(normed)] = 0
    positive = normed > 0
    log_p = np.zeros_like(normed)
    np.log(normed, out=log_p, where=positive)
    entropy = -(normed * log_p).sum(axis=0, dtype=np.float32)
    if np.isnan(entropy).any():
        raise MethodError("LAPE entropy has NaNs: the activation probabilities contain NaN or inf")
    return entropy


def _selection_inputs(
    stats: ActivationStats, filter_rate: float, activation_bar_ratio: float
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """What both LAPE selections rank and assign by (steps 1-4 and 6's bar; rates already checked).

    Returns (p float32 [K, L, F], entropy [L, F] with +inf for neurons that no language
    activates above τ, τ, activation bar).
    """
    p = lape_probs(stats)
    entropy = lape_entropy(p)
    tau = quantile_kthvalue(p, filter_rate)
    entropy[~(p > tau).any(axis=0)] = np.inf
    return p, entropy, float(tau), float(quantile_kthvalue(p, activation_bar_ratio))


def lape(
    stats: ActivationStats,
    *,
    top_rate: float = 0.01,
    filter_rate: float = 0.95,
    activation_bar_ratio: float = 0.95,
) -> NeuronMasks:
    """Language-specific neurons by LAPE, exactly as RUCAIBox identify.py (module docstring).

    Args:
        stats: activation statistics; `over_zero` and `tokens` are used.
        top_rate: share of all L·F neurons to select (paper: 0.01).
        filter_rate: quantile of all probabilities a neuron must exceed in some language.
        activation_bar_ratio: quantile a language's probability must exceed for assignment.

    Returns:
        NeuronMasks [K, L, F]; `meta` holds the parameters, `tau`, `activation_bar`,
        `num_selected` (= round(L·F·top_rate)), `num_candidates` (neurons above τ),
        `num_unassigned` and `num_multi_language`.
    """
    top_rate = check_rate("top_rate", top_rate)
    filter_rate = check_rate("filter_rate", filter_rate)
    activation_bar_ratio = check_rate("activation_bar_ratio", activation_bar_ratio)
    p, entropy, tau, bar = _selection_inputs(stats, filter_rate, activation_bar_ratio)  # [K, L, F], [L, F]
    k_langs, n_layers, n_neurons = p.shape
    num_selected = torch_round(n_layers * n_neurons * top_rate)
    selected = lowest_k(entropy, num_selected)  # flat l*F + j, by (entropy, index)
    assigned = p.reshape(k_langs, -1)[:, selected] > np.float32(bar)  # [K, n_selected]
    masks = np.zeros((k_langs, n_layers * n_neurons), dtype=bool)
    masks[:, selected] = assigned
    per_neuron = assigned.sum(axis=0)
    meta = mask_meta(
        stats,
        "lape",
        {"top_rate": top_rate, "filter_rate": filter_rate, "activation_bar_ratio": activation_bar_ratio},
        reference="RUCAIBox/Language-Specific-Neurons identify.py (Tang et al. 2024)",
        tau=tau,
        activation_bar=bar,
        num_selected=int(selected.size),
        num_candidates=int(np.isfinite(entropy).sum()),
        num_unassigned=int((per_neuron == 0).sum()),
        num_multi_language=int((per_neuron > 1).sum()),
        max_selected_entropy=float(entropy.ravel()[selected[-1]]) if selected.size else None,
    )
    return NeuronMasks(list(stats.languages), masks.reshape(k_langs, n_layers, n_neurons), meta)


def lape_fixed_count(
    stats: ActivationStats,
    *,
    num_per_language: int = 400,
    filter_rate: float = 0.95,
    activation_bar_ratio: float = 0.95,
) -> NeuronMasks:
    """Equal-size LAPE masks: each language's `num_per_language` lowest-entropy neurons among its candidates.

    cisnlp/code-specific-neurons `custom_activation` (methods.md §9.3): candidates of
    language k are the neurons with `p_k > activation_bar`; they are ranked by the
    filtered LAPE entropy (ascending; ties by flat index here, `torch.argsort` is
    unstable) and the first `num_per_language` kept. A neuron may belong to several
    languages. The original's `torch.unique(lang_idx)` loop silently drops languages
    without candidates, shifting later ones; here every language keeps its slot
    (empty mask) and `meta["short_languages"]` lists languages with fewer candidates
    than requested.
    """
    if int(num_per_language) <= 0:
        raise MethodError(f"num_per_language must be positive, got {num_per_language}")
    filter_rate = check_rate("filter_rate", filter_rate)
    activation_bar_ratio = check_rate("activation_bar_ratio", activation_bar_ratio)
    p, entropy, tau, bar = _selection_inputs(stats, filter_rate, activation_bar_ratio)
    k_langs, n_layers, n_neurons = p.shape
    flat_entropy = entropy.ravel()
    masks = np.zeros((k_langs, n_layers * n_neurons), dtype=bool)
    short = {}
    for k in range(k_langs):
        cand = np.flatnonzero(p[k].ravel() > np.float32(bar))
        order = np.lexsort((cand, flat_entropy[cand]))[: int(num_per_language)]
        masks[k, cand[order]] = True
        if cand.size < num_per_language:
            short[stats.languages[k]] = int(cand.size)
    meta = mask_meta(
        stats,
        "lape_fixed_count",
        {
            "num_per_language": int(num_per_language),
            "filter_rate": filter_rate,
            "activation_bar_ratio": activation_bar_ratio,
        },
        reference="cisnlp/code-specific-neurons identify.ipynb custom_activation (Kargaran et al. 2025)",
        tau=tau,
        activation_bar=bar,
        short_languages=short,
    )
    return NeuronMasks(list(stats.languages), masks.reshape(k_langs, n_layers, n_neurons), meta)
