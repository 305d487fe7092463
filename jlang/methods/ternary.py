"""Ternary neurons: language-specific / -related / -agnostic (Zhang et al. 2025, AAAI-26).

Faithful to NJUNLP/Language-Neurons-Alignment `analysis.py`, `identify.py` and
`autosweep.py` (methods.md §3.3), vectorised in NumPy:

1. Response-only probabilities (float32, as `Neuron_Prob._load_and_build`)::

       p_k = clamp(over_zero_full - over_zero_prompt, 0) / max(tokens_full - tokens_prompt, 1)

2. Per neuron (float32, as `wrap_neuron("normed")` + `calc_entropy`): p̃ = p / Σp, or the
   uniform 1/K when Σp <= 0; clamp at 1e-12; renormalise; `H = -Σ p̃ ln(p̃ + 1e-30)`.
3. Score (float64 arithmetic, stored in a float32 tensor like the original)::

       s = H / ln K - max_k p_k · λ / norm_max,   norm_max = (Σ_{k=1..K} 1/k) / K

4. The `round(L·F·top_rate)` lowest scores are selected (ties by flat index).
5. Each selected neuron goes to every language with `p_k > τ` (strict), τ =
   `kthvalue(all p, round(0.95·N))`.
6. `appear[c]` = selected neurons assigned to exactly c languages (appear[0] is 0, as
   in `appear_distribution`, which only sees neurons present in some mask).
7. AutoSweep (`autosweep_lambda`): binary search on λ in [0, 0.2] (eps 1e-3, at most 64
   steps) for the largest λ with `appear[K] == 0`, i.e. no neuron assigned to all K
   languages. The original hard-codes index 10 (K = 10); here it is K.

On the NJUNLP Mistral MGSM fixture this reproduces `mask.pth` bit for bit, and AutoSweep
returns the published λ = 0.109375 (tests/test_ternary.py).

The per-language assignment of a neuron (step 5) does not depend on λ, so the sweep
only re-ranks scores: each step is one O(L·F) partition.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jlang.masks import NeuronMasks
from jlang.methods.common import MethodError, check_rate, lowest_k, mask_meta, quantile_kthvalue, torch_round
from jlang.stats import ActivationStats

__all__ = ["ternary", "ternary_probs", "ternary_terms", "ternary_scores", "autosweep", "norm_max"]

LAMBDA_RANGE = (0.0, 0.2)


def norm_max(num_languages: int) -> float:
    """`sum(1/k for k in 1..K) / K` computed exactly as identify.py does (H_K / K)."""
    return sum(1 / k for k in range(1, num_languages + 1)) / num_languages


def ternary_probs(stats: ActivationStats, prompt_stats: ActivationStats | None = None) -> np.ndarray:
    """float32 [K, L, F] response-only activation probabilities (step 1 of the module docstring).

    Without `prompt_stats`, `stats` are used as they are (e.g. already subtracted), still
    with the original's `max(tokens, 1)` denominator.
    """
    if prompt_stats is not None:
        stats = stats.subtract(prompt_stats)
    counts = stats.over_zero.astype(np.float32)
    denominators = np.maximum(stats.tokens, 1).astype(np.float32)  # float(max(d_tok, 1)) -> float32 operand
    return counts / denominators[:, None, None]


def ternary_terms(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H_norm, max_p), both float64 [L·F]: the λ-independent parts of the score.

    H_norm is the float32 entropy of `calc_entropy(wrap_neuron(..., "normed"))` converted
    to a Python float and divided by `np.log(K)`; max_p is `max_k p_k` as a float.
    """
    p = np.asarray(probs, dtype=np.float32)
    k = p.shape[0]
    flat = p.reshape(k, -1)  # [K, N]
    total = flat.sum(axis=0, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        normed = np.where(total > 0, flat / total, np.float32(1.0 / k)).astype(np.float32)
    q = np.maximum(normed, np.float32(1e-12))
    q = q / q.sum(axis=0, dtype=np.float32)
    entropy = -(q * np.log(q + np.float32(1e-30))).sum(axis=0, dtype=np.float32)
    h_norm = entropy.astype(np.float64) / np.log(k)
    return h_norm, flat.max(axis=0).astype(np.float64)


def ternary_scores(h_norm: np.ndarray, max_p: np.ndarray, lam: float, num_languages: int) -> np.ndarray:
    """float32 [N] scores `H_norm - max_p · λ / norm_max` (float64 arithmetic, float32 storage)."""
    return (h_norm - max_p * float(lam) / norm_max(num_languages)).astype(np.float32)


def _appear(assign_count: np.ndarray, k: int) -> list[int]:
    """appear[c], c = 0..K, over the selected neurons' language counts (appear[0] forced to 0 as in the original)."""
    hist = np.bincount(assign_count, minlength=k + 1)
    hist[0] = 0
    return hist.tolist()


def autosweep(
    h_norm: np.ndarray,
    max_p: np.ndarray,
    assign_count: np.ndarray,
    num_selected: int,
    num_languages: int,
    *,
    lo: float = LAMBDA_RANGE[0],
    hi: float = LAMBDA_RANGE[1],
    eps: float = 1e-3,
    max_iters: int = 64,
) -> tuple[float | None, list[dict[str, Any]]]:
    """NJUNLP `autosweep_lambda`, step for step; returns (best λ or None, trace).

    `assign_count[n]` is the number of languages neuron n would be assigned to (p > τ);
    λ is acceptable when no selected neuron has `assign_count == K`. As in the
    original, both ends are evaluated first, then bisection keeps the last acceptable
    midpoint (so a passing `hi` is replaced by the largest passing midpoint below it).
    """
    k = num_languages

    def general_at(lam: float) -> int:
        chosen = lowest_k(ternary_scores(h_norm, max_p, lam, k), num_selected)
        return int((assign_count[chosen] == k).sum())

    trace: list[dict[str, Any]] = []
    best: float | None = None
    for lam in (lo, hi):
        g = general_at(lam)
        trace.append({"lambda": lam, "general": g})
        if g == 0:
            best = lam
    it = 0
    while (hi - lo) > eps and it < max_iters:
        it += 1
        mid = (lo + hi) / 2.0
        g = general_at(mid)
        trace.append({"lambda": mid, "general": g})
        if g == 0:
            best, lo = mid, mid
        else:
            hi = mid
    return best, trace


def ternary(
    stats: ActivationStats,
    *,
    prompt_stats: ActivationStats | None = None,
    top_rate: float = 0.01,
    lam: float | str = "auto",
    activation_bar_ratio: float = 0.95,
    lam_range: tuple[float, float] = LAMBDA_RANGE,
    eps: float = 1e-3,
    max_iters: int = 64,
) -> NeuronMasks:
    """Ternary-neuron masks (module docstring), with λ fixed or found by AutoSweep.

    Args:
        stats: full-text statistics (instruction + answer), or response-only ones.
        prompt_stats: prompt-only statistics to subtract (NJUNLP `prefix.activation.*`).
        top_rate: share of the L·F neurons selected (README: 0.01; the original CLI default is 0.10).
        lam: λ >= 0, or "auto" for AutoSweep over `lam_range` with `eps` / `max_iters`.
        activation_bar_ratio: quantile of all p a language must exceed for assignment.

    Returns:
        NeuronMasks [K, L, F]. `meta["lambda"]`, `meta["appear"]` (list, index c = number of
        languages), `meta["num_general"]` (neurons assigned to all K languages; see
        `NeuronMasks.general()`), `meta["num_specific"]`, `meta["num_related"]`,
        `meta["selected_unassigned"]`, `meta["tau"]`, and `meta["autosweep"]` (the trace).

    Raises:
        MethodError: bad parameters, or AutoSweep finds no λ without general neurons.
    """
    top_rate = check_rate("top_rate", top_rate)
    activation_bar_ratio = check_rate("activation_bar_ratio", activation_bar_ratio)
    response = stats if prompt_stats is None else stats.subtract(prompt_stats)
    p = ternary_probs(response)  # [K, L, F]
    k, n_layers, n_neurons = p.shape
    flat = p.reshape(k, -1)
    h_norm, max_p = ternary_terms(p)
    num_selected = torch_round(n_layers * n_neurons * top_rate)
    tau = quantile_kthvalue(p, activation_bar_ratio)
    above = flat > tau  # [K, N]
    assign_count = above.sum(axis=0)

    trace: list[dict[str, Any]] | None = None
    if isinstance(lam, str):
        if lam != "auto":
            raise MethodError(f"lam must be a number or 'auto', got {lam!r}")
        lo, hi = (float(x) for x in lam_range)
        chosen_lam, trace = autosweep(
            h_norm, max_p, assign_count, num_selected, k, lo=lo, hi=hi, eps=eps, max_iters=max_iters
        )
        if chosen_lam is None:
            raise MethodError(
                f"AutoSweep found no λ in [{lo}, {hi}] for which no selected neuron is assigned to all {k} languages "
                f"(trace: {trace}); pass a fixed lam= or widen lam_range"
            )
        lam_value = chosen_lam
    else:
        lam_value = float(lam)
        if not np.isfinite(lam_value) or lam_value < 0:
            raise MethodError(f"lam must be a finite number >= 0, got {lam}")

    selected = lowest_k(ternary_scores(h_norm, max_p, lam_value, k), num_selected)
    masks = np.zeros_like(above)
    masks[:, selected] = above[:, selected]
    count = assign_count[selected]
    appear = _appear(count, k)
    params = {
        "top_rate": top_rate,
        "lambda": "auto" if trace is not None else lam_value,
        "activation_bar_ratio": activation_bar_ratio,
    }
    if trace is not None:
        params.update(lam_range=list(lam_range), eps=eps, max_iters=max_iters)
    meta = mask_meta(
        response,
        "ternary",
        params,
        reference="NJUNLP/Language-Neurons-Alignment identify.py + autosweep.py (Zhang et al. 2025)",
        response_only="derived" in response.meta,
        norm_max=norm_max(k),
        tau=float(tau),
        num_selected=int(selected.size),
        appear=appear,
        num_specific=int((count == 1).sum()),
        num_related=int(((count > 1) & (count < k)).sum()),
        num_general=int((count == k).sum()),
        selected_unassigned=int((count == 0).sum()),
        max_selected_score=float(ternary_scores(h_norm, max_p, lam_value, k)[selected[-1]]) if selected.size else None,
        autosweep=trace,
    )
    meta["lambda"] = lam_value
    return NeuronMasks(list(stats.languages), masks.reshape(k, n_layers, n_neurons), meta)
