"""Selection primitives shared by the LAPE-family methods, written to match the torch originals bit for bit.

* `torch_round(x)`: Python's `round` (half to even), as the originals call it on `len * rate`.
* `kthvalue(values, k)`: `torch.kthvalue` (1-indexed k-th smallest).
* `lowest_k(values, k)`: `topk(k, largest=False)` with ties broken by flat index, so the
  result is deterministic (torch's tie order is implementation-defined; methods.md §10.3).
* `quantile_kthvalue(values, rate)`: `kthvalue(values, round(N * rate))`, the originals' thresholds
  (LAPE's τ and activation bar, the ternary τ).
* `activation_probs_f32(over_zero, tokens)`: `over_zero / n` the way torch computes it for
  integer tensors -- both operands cast to float32, then divided in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jlang import __version__

__all__ = [
    "MethodError",
    "torch_round",
    "check_rate",
    "kthvalue",
    "quantile_kthvalue",
    "lowest_k",
    "activation_probs_f32",
    "mask_meta",
]


class MethodError(ValueError):
    """A method's inputs or parameters cannot produce a mask; the message says why."""


def torch_round(x: float) -> int:
    """`round(x)` of the reference code (banker's rounding of a float product such as `N * 0.95`)."""
    return int(round(x))


def check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise MethodError(f"{name} must be in (0, 1], got {value}")
    return value


def kthvalue(values: np.ndarray, k: int) -> float:
    """k-th smallest element of `values.ravel()` (1-indexed, like `torch.kthvalue`), in its own dtype."""
    flat = np.asarray(values).ravel()
    if not 1 <= k <= flat.size:
        raise MethodError(f"kthvalue: k={k} out of range for {flat.size} values")
    return flat.dtype.type(np.partition(flat, k - 1)[k - 1])


def quantile_kthvalue(values: np.ndarray, rate: float) -> float:
    """`kthvalue(values, round(N * rate))`, N = `values.size`: the originals' `kthvalue(p, round(len * rate))`."""
    values = np.asarray(values)
    return kthvalue(values, torch_round(values.size * rate))


def lowest_k(values: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the k smallest values, ordered by (value, index): a stable `topk(largest=False)`.

    O(N) with `np.partition`; ties at the boundary keep the lowest flat indices.
    NaNs are not allowed (callers reject them first).
    """
    flat = np.asarray(values).ravel()
    n = flat.size
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k >= n:
        return np.lexsort((np.arange(n), flat)).astype(np.int64)
    boundary = np.partition(flat, k - 1)[k - 1]
    below = np.flatnonzero(flat < boundary)
    at = np.flatnonzero(flat == boundary)[: k - below.size]
    chosen = np.concatenate([below, at])
    order = np.lexsort((chosen, flat[chosen]))
    return chosen[order].astype(np.int64)


def activation_probs_f32(over_zero: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """float32 [K, L, F] `over_zero / tokens` computed as torch does for `int_tensor / int_tensor`.

    torch promotes integer true division to the default float dtype (float32) and
    casts both operands to it before dividing, so counts above 2^24 are rounded
    first, exactly like here. IEEE division is correctly rounded in both libraries.
    """
    num = np.asarray(over_zero).astype(np.float32)
    den = np.asarray(tokens).astype(np.float32)[:, None, None]
    return num / den


def mask_meta(stats: Any, method: str, params: Mapping[str, Any], **extra: Any) -> dict:
    """Metadata every mask carries: model/family/hook point/corpus from the statistics, method, parameters,
    token counts and the jlang version."""
    smeta = dict(getattr(stats, "meta", {}) or {})
    meta: dict[str, Any] = {k: smeta[k] for k in ("model", "family", "hook_point", "corpus", "dataset") if k in smeta}
    meta.setdefault("hook_point", "mlp.act")
    meta.update(
        method=method,
        params=dict(params),
        languages=list(stats.languages),
        tokens={lang: int(n) for lang, n in zip(stats.languages, stats.tokens)},
        num_layers=int(stats.num_layers),
        num_neurons=int(stats.num_neurons),
        jlang_version=__version__,
        stats_meta=smeta,
    )
    meta.update(extra)
    return meta
