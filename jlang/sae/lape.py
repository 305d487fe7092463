"""SAE-LAPE (Andrylie et al. 2025, LyzanderAndrylie/language-specific-features): language-specific SAE features.

Statistics (`sae_features_count.py`; methods.md §7.2). For every language k,
every SAE (one per layer) and every feature f, over the language's examples
(one sentence per example, BOS left out when `skip_bos`):

    over_zero_token[k, l, f]    tokens where a_f > 0 (for TopK: f is among the k kept)
    over_zero_example[k, l, f]  examples where a_f > 0 at some token
    sum[k, l, f]                sum of a_f over those tokens (the original `over_zero_total`)
    max[k, l, f], min[k, l, f]  max / min of the positive a_f (0 / +inf where f never fired)
    num_tokens[k], num_examples[k]

Identification (`scripts/identify.py: sae_lape`; methods.md §7.3):

    p[k, l, f]   = over_zero_token / num_tokens[k]
    p~           = p / sum_k p (0 where the sum is 0);  H[l, f] = -sum_k p~ ln p~
    candidate    = any_k over_zero_example >= int(example_rate * num_examples[k])   (0.98)
                   and any_k over_zero_token > int(token_rate * num_tokens[k])        (0.10)
    candidates sorted by entropy (ties by flat index, so the order is stable);
    f belongs to every language with p[k] >= threshold_ratio * max_k p          (0.5 in the shell scripts)

`lang_specific` drops features that belong to more than one language; `top` keeps
the first N per language in entropy order (`top_by_frequency`: by p, highest
first; `top_per_layer`: N per layer); `entropy_threshold` keeps features with
H <= threshold. Per language the features come out sorted by (layer, index),
with each feature's global max / min / mean positive activation (over all
languages), which steering (`maxact`) and the min-max classifier use.

Differences from the original code, on purpose: thresholds are truncated from
float32 products as torch does (`(n * 0.98).type(torch.int)`), but p and the
entropy are float64 (torch: float32), and max/min are not rounded to 3
decimals. A language with no feature keeps its (empty) slot; the original
drops it from `final_indice`, which misaligns every later language with
`sorted_lang` (the `torch.bincount` gotcha of LAPE, methods.md §1.1).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlang import parallel
from jlang.io.npz import write_npz
from jlang.models.scoring import TokenRows
from jlang.parallel.batch_loop import Throughput, pipelined, place_rows
from jlang.sae.model import SAE, SAEError, encode, read_sae_file
from jlang.sae.stream import check_hook, iterate_rows, layer_activations, token_weight

_STATS_FORMAT = "jlang.SAEFeatureStats/1"
_FEATURES_FORMAT = "jlang.SAELapeFeatures/1"

# The shell scripts' value; identify.py's argparse default is 0.8.
DEFAULT_THRESHOLD_RATIO = 0.5
DEFAULT_EXAMPLE_RATE = 0.98
DEFAULT_TOKEN_RATE = 0.1


# ----------------------------------------------------------------------------- statistics


@dataclasses.dataclass
class FeatureStats:
    """Per-language SAE feature statistics `[K languages, L SAEs (layers), F features]`."""

    languages: list[str]
    layers: list[int]
    num_tokens: np.ndarray  # int64 [K]
    num_examples: np.ndarray  # int64 [K]
    over_zero_token: np.ndarray  # int64 [K, L, F]
    over_zero_example: np.ndarray  # int64 [K, L, F]
    sum: np.ndarray  # float64 [K, L, F]
    max: np.ndarray  # float32 [K, L, F], 0 where never positive
    min: np.ndarray  # float32 [K, L, F], +inf where never positive
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.languages = [str(x) for x in self.languages]
        self.layers = [int(x) for x in self.layers]
        K, L = len(self.languages), len(self.layers)
        if K == 0 or L == 0:
            raise SAEError("FeatureStats needs at least one language and one layer")
        if len(set(self.languages)) != K:
            raise SAEError(f"duplicate languages in {self.languages}")
        self.num_tokens = np.asarray(self.num_tokens, np.int64)
        self.num_examples = np.asarray(self.num_examples, np.int64)
        self.over_zero_token = np.asarray(self.over_zero_token, np.int64)
        self.over_zero_example = np.asarray(self.over_zero_example, np.int64)
        self.sum = np.asarray(self.sum, np.float64)
        self.max = np.asarray(self.max, np.float32)
        self.min = np.asarray(self.min, np.float32)
        if self.num_tokens.shape != (K,) or self.num_examples.shape != (K,):
            raise SAEError(f"num_tokens {self.num_tokens.shape} / num_examples {self.num_examples.shape} must be [{K}]")
        shape = self.over_zero_token.shape
        if len(shape) != 3 or shape[:2] != (K, L):
            raise SAEError(f"over_zero_token must be [K={K}, L={L}, F], got {shape}")
        for name in ("over_zero_example", "sum", "max", "min"):
            if getattr(self, name).shape != shape:
                raise SAEError(f"{name} is {getattr(self, name).shape}, over_zero_token is {shape}")
        if (self.over_zero_token < 0).any() or (self.over_zero_example < 0).any():
            raise SAEError("counts must be >= 0")
        if (self.over_zero_token > self.num_tokens[:, None, None]).any():
            raise SAEError("over_zero_token exceeds num_tokens for some language: counts and totals do not match")
        if (self.over_zero_example > self.num_examples[:, None, None]).any():
            raise SAEError("over_zero_example exceeds num_examples for some language: counts and totals do not match")

    @property
    def num_features(self) -> int:
        return int(self.over_zero_token.shape[2])

    def save(self, path: str | os.PathLike) -> Path:
        arrays = {
            n: getattr(self, n)
            for n in ("num_tokens", "num_examples", "over_zero_token", "over_zero_example", "sum", "max", "min")
        }
        arrays["layers"] = np.asarray(self.layers, np.int64)
        write_npz(path, format=_STATS_FORMAT, languages=self.languages, arrays=arrays, meta=self.meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        arrays, languages, meta = read_sae_file(path, "jlang.SAEFeatureStats/")
        layers = arrays.pop("layers").tolist()
        return cls(languages, layers, meta=meta, **arrays)


def _row_reductions(params_list, acts_by_layer: jax.Array, weight: jax.Array, *, saes: tuple) -> dict[str, jax.Array]:
    """Per-row feature reductions `[b, L, F]` of one batch, for each SAE on its layer's activations."""
    out: dict[str, list] = {"count": [], "sum": [], "max": [], "min": []}
    w = weight > 0
    for params, (cfg, pos) in zip(params_list, saes):
        a = encode(params, acts_by_layer[pos], cfg)  # [b, t, F]
        on = (a > 0) & w[..., None]
        out["count"].append(jnp.sum(on, axis=1, dtype=jnp.int32))
        out["sum"].append(jnp.sum(jnp.where(on, a, 0.0), axis=1))
        out["max"].append(jnp.max(jnp.where(on, a, 0.0), axis=1))
        out["min"].append(jnp.min(jnp.where(on, a, jnp.inf), axis=1))
    return {k: jnp.stack(v, axis=1) for k, v in out.items()}


@functools.lru_cache(maxsize=8)
def _reduction_fns(cfg, layers: tuple[int, ...], point: str, sae_cfgs: tuple) -> tuple:
    """(jitted `layer_activations`, jitted `_row_reductions`) for one model config and set of SAEs (cached)."""
    hook = jax.jit(functools.partial(layer_activations, cfg=cfg, layers=layers, point=point))
    reduce = jax.jit(functools.partial(_row_reductions, saes=tuple((c, i) for i, c in enumerate(sae_cfgs))))
    return hook, reduce


def _check_saes(model, saes: list[SAE]) -> None:
    """One SAE per layer, all on one hook point, all of one width, all fitting `model`."""
    if not saes:
        raise SAEError("no SAE given")
    points = {s.config.hook_point for s in saes}
    if len(points) != 1:
        raise SAEError(f"all SAEs must read the same hook point, got {sorted(points)}")
    layers = [s.config.layer for s in saes]
    if len(set(layers)) != len(layers):
        raise SAEError(f"one SAE per layer, got layers {layers}")
    for s in saes:
        check_hook(model, s.config.layer, s.config.hook_point)
        if s.config.d_in != model.config.d_model:
            raise SAEError(f"{s} does not fit {model.name} (d_model {model.config.d_model})")
    widths = {s.config.num_features for s in saes}
    if len(widths) != 1:
        raise SAEError(
            f"all SAEs must have the same number of features to stack their statistics, got {sorted(widths)}"
        )


def row_feature_reductions(
    model,
    saes: SAE | Sequence[SAE],
    rows: TokenRows,
    fold: Callable[[np.ndarray, dict[str, np.ndarray]], None],
    *,
    batch_size: int = 16,
    skip_bos: bool = True,
    progress: bool = True,
    desc: str = "SAE features",
) -> None:
    """`fold(row indices, per-row reductions)` for every batch of `rows` (`TokenRows`, one example per row).

    Reductions (host arrays): `count` int32 `[b, L, F]` (tokens with a_f > 0), `sum`, `max` (0 where none),
    `min` (+inf where none) of the positive activations, and `tokens` int `[b]` (tokens counted). Padding
    rows have index -1. BOS tokens are left out when `skip_bos`. The model runs one batch ahead of `fold`.
    """
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    _check_saes(model, saes)
    layers = tuple(s.config.layer for s in saes)
    hook, reduce = _reduction_fns(model.config, layers, saes[0].config.hook_point, tuple(s.config for s in saes))
    params_list = [s.jax_params for s in saes]
    bos = getattr(model.tokenizer, "bos_token_id", None)
    plan = list(iterate_rows(model, rows, batch_size))
    rate = Throughput(len(plan), desc, "tokens", enabled=progress)

    def dispatch(batch):
        _, host = batch
        placed = place_rows(model, host)
        weight = token_weight(host["ids"], host["valid"], bos, skip_bos)
        acts = hook(model.params, placed["ids"], placed["positions"], placed["valid"])
        return weight, reduce(params_list, acts, model.place_batch(weight))

    def fold_batch(i, batch, result):
        weight, reductions = result
        out = {k: parallel.to_host(v) for k, v in reductions.items()}
        out["tokens"] = weight.sum(axis=1).astype(np.int64)
        fold(batch[0], out)
        rate.update(int(out["tokens"].sum()))

    pipelined(plan, dispatch, fold_batch)
    rate.close()


def feature_stats(
    model,
    saes: SAE | Sequence[SAE],
    rows,
    languages: Sequence[str],
    *,
    batch_size: int = 16,
    skip_bos: bool = True,
    progress: bool = True,
    meta: dict | None = None,
) -> FeatureStats:
    """SAE-LAPE statistics of `rows` (`TokenRows`, `group` = index into `languages`), folded exactly on the host."""
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    K, L, F = len(languages), len(saes), saes[0].config.num_features
    tokens, examples = np.zeros(K, np.int64), np.zeros(K, np.int64)
    over_tok, over_ex = np.zeros((K, L, F), np.int64), np.zeros((K, L, F), np.int64)
    total = np.zeros((K, L, F), np.float64)
    high, low = np.zeros((K, L, F), np.float32), np.full((K, L, F), np.inf, np.float32)

    def fold(idx: np.ndarray, r: dict[str, np.ndarray]) -> None:
        for j in np.flatnonzero((idx >= 0) & (r["tokens"] > 0)):
            k = int(rows.group[idx[j]])
            tokens[k] += r["tokens"][j]
            examples[k] += 1
            over_tok[k] += r["count"][j]
            over_ex[k] += r["count"][j] > 0
            total[k] += r["sum"][j]
            np.maximum(high[k], r["max"][j], out=high[k])
            np.minimum(low[k], r["min"][j], out=low[k])

    row_feature_reductions(
        model, saes, rows, fold, batch_size=batch_size, skip_bos=skip_bos, progress=progress, desc="SAE-LAPE statistics"
    )
    empty = [languages[k] for k in range(K) if examples[k] == 0]
    if empty:
        raise SAEError(f"languages {empty} have no example with a counted token")
    info = {
        "model": model.name,
        "source": model.source,
        "saes": [s.config.to_dict() for s in saes],
        "skip_bos": skip_bos,
        **(meta or {}),
    }
    return FeatureStats(
        list(languages), [s.config.layer for s in saes], tokens, examples, over_tok, over_ex, total, high, low, info
    )


# ----------------------------------------------------------------------------- identification


@dataclasses.dataclass
class SAELapeFeatures:
    """Language-specific SAE features: `features[k][i]` = sorted feature ids of language k in the SAE of `layers[i]`.

    `max_active` / `min_active` / `avg_active` hold, in the same nesting, each selected feature's global
    max / min / mean positive activation (`final_indice_global_{max,min,avg}_active`). `entropy [L, F]` is
    +inf for features that failed the candidate filter; `probs [K, L, F]` is p.
    """

    languages: list[str]
    layers: list[int]
    features: list[list[np.ndarray]]
    max_active: list[list[np.ndarray]]
    min_active: list[list[np.ndarray]]
    avg_active: list[list[np.ndarray]]
    entropy: np.ndarray
    probs: np.ndarray
    params: dict
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return int(self.entropy.shape[1])

    @property
    def candidates(self) -> np.ndarray:
        """bool `[L, F]`: features that passed the candidate filter."""
        return np.isfinite(self.entropy)

    def mask(self) -> np.ndarray:
        """bool `[K, L, F]`."""
        out = np.zeros((len(self.languages), len(self.layers), self.num_features), bool)
        for k, per_layer in enumerate(self.features):
            for i, ids in enumerate(per_layer):
                out[k, i, ids] = True
        return out

    def counts(self) -> dict[str, int]:
        return {lang: int(sum(len(ids) for ids in self.features[k])) for k, lang in enumerate(self.languages)}

    def index(self, language: str) -> int:
        if language not in self.languages:
            raise SAEError(f"language {language!r} is not one of {self.languages}")
        return self.languages.index(language)

    def save(self, path: str | os.PathLike) -> Path:
        m = self.mask()
        arrays = {"mask": m, "layers": np.asarray(self.layers, np.int64), "entropy": self.entropy, "probs": self.probs}
        for name in ("max_active", "min_active", "avg_active"):  # [K, L, F], 0 off the mask
            dense = np.zeros(m.shape, np.float32)
            for k in range(m.shape[0]):
                for i in range(m.shape[1]):
                    dense[k, i, self.features[k][i]] = getattr(self, name)[k][i]
            arrays[name] = dense
        write_npz(
            path,
            format=_FEATURES_FORMAT,
            languages=self.languages,
            arrays=arrays,
            meta={"params": self.params, **self.meta},
        )
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SAELapeFeatures:
        arrays, languages, meta = read_sae_file(path, "jlang.SAELapeFeatures/")
        m = arrays["mask"]
        nest = lambda a: [[a[k, i][m[k, i]] for i in range(m.shape[1])] for k in range(m.shape[0])]
        feats = [[np.flatnonzero(m[k, i]) for i in range(m.shape[1])] for k in range(m.shape[0])]
        params = meta.pop("params", {})
        return cls(
            languages,
            arrays["layers"].tolist(),
            feats,
            nest(arrays["max_active"]),
            nest(arrays["min_active"]),
            nest(arrays["avg_active"]),
            arrays["entropy"],
            arrays["probs"],
            params,
            meta,
        )


def probabilities_and_entropy(over_zero_token: np.ndarray, num_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p `[K, ...]`, LAPE entropy `[...]`) as in LAPE: natural log, 0·log 0 = 0, all-zero features get 0."""
    p = over_zero_token.astype(np.float64) / np.asarray(num_tokens, np.float64).reshape(
        (-1,) + (1,) * (over_zero_token.ndim - 1)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        normed = p / p.sum(axis=0, keepdims=True)
        normed[np.isnan(normed)] = 0.0
        logs = np.where(normed > 0, np.log(np.where(normed > 0, normed, 1.0)), 0.0)
    return p, -(normed * logs).sum(axis=0)


def _torch_int_threshold(counts: np.ndarray, rate: float) -> np.ndarray:
    """`(counts * rate).type(torch.int)`: the product in float32 (torch's default dtype), truncated."""
    return np.trunc(np.asarray(counts).astype(np.float32) * np.float32(rate)).astype(np.int64)


def candidate_filter(
    stats: FeatureStats, *, example_rate: float = DEFAULT_EXAMPLE_RATE, token_rate: float = DEFAULT_TOKEN_RATE
) -> np.ndarray:
    """bool `[L, F]`: some language fires in >= int(example_rate x its examples), and some language (maybe
    another) fires on > int(token_rate x its tokens) (methods.md §7.3)."""
    ex = _torch_int_threshold(stats.num_examples, example_rate)[:, None, None]
    tok = _torch_int_threshold(stats.num_tokens, token_rate)[:, None, None]
    return (stats.over_zero_example >= ex).any(axis=0) & (stats.over_zero_token > tok).any(axis=0)


def identify(
    stats: FeatureStats,
    *,
    threshold_ratio: float = DEFAULT_THRESHOLD_RATIO,
    example_rate: float = DEFAULT_EXAMPLE_RATE,
    token_rate: float = DEFAULT_TOKEN_RATE,
    lang_specific: bool = False,
    top: int | None = None,
    top_by_frequency: bool = False,
    top_per_layer: bool = False,
    entropy_threshold: float | None = None,
) -> SAELapeFeatures:
    """SAE-LAPE identification (module doc): candidate filter, entropy order, `p >= ratio x max p` assignment.

    Args:
      threshold_ratio: a candidate belongs to every language with `p_k >= threshold_ratio * max_k p_k`.
      example_rate, token_rate: the candidate filter's rates (0.98 of examples, 0.10 of tokens).
      lang_specific: drop features assigned to more than one language.
      top: keep at most this many per language (per layer with `top_per_layer`), in entropy order,
        or by p (highest first) with `top_by_frequency`. None or 0: all.
      entropy_threshold: keep only features with entropy <= this.
    """
    if not 0 < threshold_ratio <= 1:
        raise SAEError(f"threshold_ratio must be in (0, 1], got {threshold_ratio}")
    if not 0 <= example_rate <= 1 or not 0 <= token_rate <= 1:
        raise SAEError(f"example_rate and token_rate must be in [0, 1], got {example_rate}, {token_rate}")
    if top is not None and top < 0:
        raise SAEError(f"top must be >= 0, got {top}")
    if (stats.num_tokens <= 0).any():
        raise SAEError(f"languages {[l for l, n in zip(stats.languages, stats.num_tokens) if n <= 0]} have no tokens")
    K, L, F = stats.over_zero_token.shape
    p, entropy = probabilities_and_entropy(stats.over_zero_token, stats.num_tokens)
    keep = candidate_filter(stats, example_rate=example_rate, token_rate=token_rate)
    entropy = np.where(keep, entropy, np.inf)
    flat = np.flatnonzero(keep.reshape(-1))
    order = flat[np.lexsort((flat, entropy.reshape(-1)[flat]))]  # by entropy, ties by flat index (stable)
    selected = p.reshape(K, -1)[:, order]  # [K, n]
    assign = selected >= threshold_ratio * selected.max(axis=0, keepdims=True)
    if lang_specific:
        assign[:, assign.sum(axis=0) > 1] = False
    g_max = stats.max.max(axis=0)
    g_min = stats.min.min(axis=0)
    g_min = np.where(np.isfinite(g_min), g_min, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        g_avg = stats.sum.sum(axis=0) / stats.over_zero_token.sum(axis=0)
    features, maxes, mins, avgs = [], [], [], []
    for k in range(K):
        pos = np.flatnonzero(assign[k])  # positions in entropy order
        if top_by_frequency:
            pos = pos[np.argsort(-selected[k, pos], kind="stable")]
        chosen = order[pos]
        if top:
            if top_per_layer:
                seen: dict[int, int] = {}
                kept = []
                for c in chosen:  # the first `top` of each layer, in the order above
                    seen[c // F] = seen.get(c // F, 0) + 1
                    kept.append(seen[c // F] <= top)
                chosen = chosen[np.asarray(kept, bool)]
            else:
                chosen = chosen[:top]
        if entropy_threshold is not None:
            chosen = chosen[entropy.reshape(-1)[chosen] <= entropy_threshold]
        chosen = np.sort(chosen)
        per_layer = [chosen[chosen // F == i] % F for i in range(L)]
        features.append(per_layer)
        maxes.append([g_max[i, ids].astype(np.float32) for i, ids in enumerate(per_layer)])
        mins.append([g_min[i, ids].astype(np.float32) for i, ids in enumerate(per_layer)])
        avgs.append([g_avg[i, ids].astype(np.float32) for i, ids in enumerate(per_layer)])
    params = {
        "method": "sae_lape",
        "threshold_ratio": threshold_ratio,
        "example_rate": example_rate,
        "token_rate": token_rate,
        "lang_specific": lang_specific,
        "top": top,
        "top_by_frequency": top_by_frequency,
        "top_per_layer": top_per_layer,
        "entropy_threshold": entropy_threshold,
    }
    meta = {
        "candidates": int(keep.sum()),
        "num_tokens": stats.num_tokens.tolist(),
        "num_examples": stats.num_examples.tolist(),
        **{k: v for k, v in stats.meta.items() if k in ("model", "saes")},
    }
    return SAELapeFeatures(
        list(stats.languages), list(stats.layers), features, maxes, mins, avgs, entropy, p, params, meta
    )


def summary_table(result: SAELapeFeatures) -> str:
    """A markdown table: features per language, with their mean entropy and mean p of the own language."""
    lines = ["| language | features | mean entropy | mean p (own) | mean max act |", "|---|---:|---:|---:|---:|"]
    for k, lang in enumerate(result.languages):
        ids = [(i, f) for i, fs in enumerate(result.features[k]) for f in fs]
        if not ids:
            lines.append(f"| {lang} | 0 | – | – | – |")
            continue
        ent = np.mean([result.entropy[i, f] for i, f in ids])
        own = np.mean([result.probs[k, i, f] for i, f in ids])
        mx = np.mean(np.concatenate(result.max_active[k]))
        lines.append(f"| {lang} | {len(ids)} | {ent:.3f} | {own:.3f} | {mx:.2f} |")
    return "\n".join(lines)


def to_jsonable(result: SAELapeFeatures) -> dict[str, Any]:
    """Features per language and layer as plain lists (for reports and other tools)."""
    return {
        "languages": result.languages,
        "layers": result.layers,
        "params": result.params,
        "candidates": int(result.candidates.sum()),
        "features": {
            lang: {str(layer): result.features[k][i].tolist() for i, layer in enumerate(result.layers)}
            for k, lang in enumerate(result.languages)
        },
    }
