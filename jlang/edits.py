"""Interventions on language neurons, as data: constructors of `jlang.models.decoder.Edits`.

Every intervention in the language-neuron literature rewrites the activated gate
`a = act(W_gate x)` (hook point `mlp.act`, before `* up`) of selected neurons
at every position, and every one is an affine map on those neurons:

    a' = where(mask, a * scale + shift, a)        mask, scale, shift: [L, F]

| constructor        | scale | shift      | paper / code                                                              |
|--------------------|-------|------------|---------------------------------------------------------------------------|
| `deactivate`       | 0     | δ          | LAPE (Tang et al. 2024, RUCAIBox/Language-Specific-Neurons `ppl.py`:      |
|                    |       |            | `index_fill_(2, mask, 0)`); language arithmetics (Gurgurov et al. 2025,   |
|                    |       |            | d-gurgurov/Language-Neurons-Manipulation: δ = −1, fallbacks −1.5)         |
| `amplify`          | α     | 0          | `a *= c` (tauimbz/lang-task-neuron `operation_target "*c"`)               |
| `set_to`           | 0     | c, c[l,j]  | `a = c` (`"=c"`, e.g. `=10`; SAE-LAPE neuron steering `a[idx] = value`)   |
| `set_to_statistic` | 0     | p_t[l,j]   | patched amplification (Rahmanisa et al. 2025, `set_activation_mlp_v2`    |
|                    |       |            | with `max.pt` / `median.pt`)                                              |
| `add`              | 1     | α·μ_t      | additive arithmetics (Gurgurov, `batch_generation.py`: `a[mask_t] += αμ_t`)|
| `replace`          | 0     | μ_t        | replacement (Gurgurov: `a[mask_t] = μ_t`)                                 |
| `diffmean`         | 1     | μ_t − μ̄_¬t | Gurgurov `diffmean`: `a[mask_t] += μ_t − mean_{k≠t} μ_k`                 |
| `combine`          |       |            | several at once (deactivate s and steer to t)                            |

`μ_t[l, j]` is the mean activation of language t over all its tokens
(`ActivationStats.mean` = Σa / n), Gurgurov's `average_activations`. Before their
commit 301e4be (2025-08-09), μ was the activation *probability* `over_zero / n`;
`add(..., definition="probability")` reproduces that earlier version.

`p_max` / `p_median` (Rahmanisa et al.) are the max / median over documents
(FLORES sentences) of each document's mean activation. Token-level statistics
cannot give them, so they live in `DocumentSummaries` (below), built from
per-document means (`document_means` computes them with a jlang model) or read
from the reference code's `max.pt` / `median.pt`.

Edits are data: `bool` mask and `float32` scale and shift, computed with NumPy
and handed over as JAX arrays (like `Edits.identity`). Building them runs no
compiled code, and passing edits with new values to a jitted forward reuses its
compilation. Test-time statistics of the current tensor
(tauimbz `replace_method` mean/std/percent/max of the live activations) depend
on the input and are not edits; SAE decoder steering acts on the residual.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jlang.io import torchfile
from jlang.masks import MaskShapeError, NeuronMasks, UnknownLanguageError
from jlang.models.decoder import Edits

__all__ = [
    "Edits",
    "EditError",
    "DocumentSummaries",
    "identity",
    "deactivate",
    "amplify",
    "set_to",
    "set_to_statistic",
    "add",
    "replace",
    "diffmean",
    "combine",
    "check_fits",
    "document_means",
]

STATISTICS = ("p_max", "p_median", "mean", "token_max")
DEFINITIONS = ("mean", "probability")


class EditError(ValueError):
    """An edit cannot be built from these inputs; the message says what and how to fix it."""


# ----------------------------------------------------------------------------- per-document summaries


@dataclass(eq=False)
class DocumentSummaries:
    """Per-language summaries over documents of the per-document mean activation `[K, L, F]`.

    Rahmanisa et al. 2025 (tauimbz/lang-task-neuron): `get_activations.py` stores,
    for the first 100 FLORES sentences of each language, the mean activation of
    every neuron over the sentence's tokens; `calculate_max_median.py` reduces them
    over sentences with `max(dim=1)` and `median(dim=1)` to `max.pt` and `median.pt`
    (`[langs, L, I]`), the "patched factors" p_max and p_median.
    `torch.median` returns the *lower* median for an even count, and so does
    `from_document_means`.
    """

    languages: list[str]
    max: np.ndarray  # float32 [K, L, F]: p_max
    median: np.ndarray  # float32 [K, L, F]: p_median
    documents: np.ndarray | None = None  # int64 [K]: documents summarised (None when read from files)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.languages = [str(x) for x in self.languages]
        if not self.languages or len(set(self.languages)) != len(self.languages):
            raise EditError(f"languages must be non-empty and distinct, got {self.languages}")
        for name in ("max", "median"):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 3 or arr.shape[0] != len(self.languages):
                raise EditError(f"{name} must be [K={len(self.languages)}, L, F], got shape {arr.shape}")
            if arr.dtype.kind != "f":
                raise EditError(f"{name} must be floating point, got {arr.dtype}")
            setattr(self, name, arr.astype(np.float32, copy=False))
        if self.max.shape != self.median.shape:
            raise EditError(f"max {self.max.shape} and median {self.median.shape} must have the same shape")
        if self.documents is not None:
            self.documents = np.asarray(self.documents, np.int64)
            if self.documents.shape != (len(self.languages),):
                raise EditError(f"documents must be [K={len(self.languages)}], got shape {self.documents.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.max.shape)  # type: ignore[return-value]

    def index(self, language: str) -> int:
        try:
            return self.languages.index(language)
        except ValueError:
            raise EditError(f"unknown language {language!r}; these document summaries hold {self.languages}") from None

    @classmethod
    def from_document_means(
        cls, means: Mapping[str, Any], *, meta: Mapping[str, Any] | None = None
    ) -> DocumentSummaries:
        """Summarise `{language: float [D_k, L, F]}` per-document mean activations (max, lower median)."""
        if not means:
            raise EditError("no languages given")
        maxes, medians, counts, shape = [], [], [], None
        for lang, m in means.items():
            m = np.asarray(m, np.float64)
            if m.ndim != 3 or m.shape[0] == 0:
                raise EditError(f"{lang}: per-document means must be [documents >= 1, L, F], got shape {m.shape}")
            if shape is not None and m.shape[1:] != shape:
                raise EditError(f"{lang}: per-document means are {m.shape[1:]} per document, others {shape}")
            shape = m.shape[1:]
            maxes.append(m.max(axis=0))
            medians.append(np.sort(m, axis=0)[(m.shape[0] - 1) // 2])  # torch.median: the lower median
            counts.append(m.shape[0])
        return cls(list(means), np.stack(maxes), np.stack(medians), np.asarray(counts), dict(meta or {}))

    @classmethod
    def from_reference_files(
        cls, max_path: str | Path, median_path: str | Path, languages: Sequence[str]
    ) -> DocumentSummaries:
        """Read tauimbz/lang-task-neuron's `max.pt` and `median.pt` (`[langs, L, I]`), without torch."""
        arrays = {}
        for name, path in (("max", max_path), ("median", median_path)):
            arr = torchfile.load(path)
            if not isinstance(arr, np.ndarray):
                raise EditError(f"{path}: expected one tensor [langs, L, I], found {type(arr).__name__}")
            arrays[name] = arr
        meta = {"source": {"max": str(max_path), "median": str(median_path)}, "format": "lang-task-neuron"}
        return cls(list(languages), arrays["max"], arrays["median"], None, meta)


def _document_mean_probe(hooks, valid):
    """Per-row mean of `mlp.act` over valid tokens: float32 [batch, F] (a `Probe`)."""
    act = hooks["mlp.act"].astype(jnp.float32)
    v = valid[:, :, None]
    return jnp.where(v, act, 0.0).sum(axis=1) / jnp.maximum(v.sum(axis=1), 1).astype(jnp.float32)


def document_means(model: Any, documents: Sequence[Sequence[int]], *, batch_size: int = 8) -> np.ndarray:
    """float32 `[D, L, F]`: each document's mean activation at `mlp.act` over its tokens.

    The input of `DocumentSummaries.from_document_means` (tauimbz/lang-task-neuron
    `get_activations.py` averages over the sentence's tokens, one sentence per row).
    Documents are token-id lists, taken as given (include BOS or not, as the study
    wants); rows are right-padded to one fixed shape, so the forward compiles once.
    """
    if not documents or any(len(d) == 0 for d in documents):
        raise EditError("documents must be a non-empty list of non-empty token-id lists")
    seq = -(-max(len(d) for d in documents) // 16) * 16
    out = []
    for start in range(0, len(documents), batch_size):
        chunk = documents[start : start + batch_size]
        ids = np.zeros((batch_size, seq), np.int32)
        valid = np.zeros((batch_size, seq), bool)
        for i, d in enumerate(chunk):
            ids[i, : len(d)] = d
            valid[i, : len(d)] = True
        ids = model.check_ids(ids)
        _, means = model.forward(
            model.place_batch(ids), valid=model.place_batch(valid), probe=_document_mean_probe, output="none"
        )
        out.append(np.asarray(means).transpose(1, 0, 2)[: len(chunk)])  # [L, b, F] -> [b, L, F]
    return np.concatenate(out)


# ----------------------------------------------------------------------------- validation helpers


def _shape_of(model_or_shape: Any) -> tuple[int, int]:
    if isinstance(model_or_shape, Edits):
        return tuple(np.shape(model_or_shape.mask))  # type: ignore[return-value]
    if hasattr(model_or_shape, "num_layers") and hasattr(model_or_shape, "num_neurons"):
        return int(model_or_shape.num_layers), int(model_or_shape.num_neurons)
    if isinstance(model_or_shape, (tuple, list)) and len(model_or_shape) == 2:
        return int(model_or_shape[0]), int(model_or_shape[1])
    raise EditError(f"expected a model, NeuronMasks, Edits or an (L, F) shape, got {type(model_or_shape).__name__}")


def _finite(name: str, x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise EditError(f"{name} must be a real number, got {x!r}") from None
    if not math.isfinite(v):
        raise EditError(f"{name} must be finite, got {v}")
    return v


def _select(masks: NeuronMasks | np.ndarray, lang: str | Sequence[str] | None) -> np.ndarray:
    """bool [L, F]: the neurons of `lang` (the union for several languages), or a bare [L, F] mask."""
    if isinstance(masks, NeuronMasks):
        if lang is None:
            raise UnknownLanguageError(f"name the language whose neurons to edit; this mask holds {masks.languages}")
        langs = [lang] if isinstance(lang, str) else list(lang)
        if not langs:
            raise EditError(f"no language given; this mask holds {masks.languages}")
        return np.logical_or.reduce([masks[x] for x in langs])
    m = np.asarray(masks)
    if m.ndim != 2 or (m.dtype != np.bool_ and m.dtype.kind not in "iu"):
        raise EditError(f"expected NeuronMasks or a bool [L, F] mask, got {type(masks).__name__} {m.dtype} {m.shape}")
    if lang is not None:
        raise EditError(f"a bare [L, F] mask has no languages; drop lang={lang!r} or pass NeuronMasks")
    if m.dtype != np.bool_:
        if m.size and not np.isin(m, (0, 1)).all():
            raise EditError("an integer mask must hold only 0 and 1")
        m = m.astype(bool)
    return m


def _fit(mask: np.ndarray, model: Any, what: str = "mask") -> None:
    if model is None:
        return
    L, F = _shape_of(model)
    if mask.shape != (L, F):
        name = getattr(model, "name", None)
        raise MaskShapeError(
            f"{what} of {mask.shape[0]} layers x {mask.shape[1]} neurons does not fit "
            f"{name or 'the model'} with {L} layers x {F} MLP neurons; "
            "identify neurons on this model's statistics, or load the mask made for it"
        )


def _masked(mask: np.ndarray, masks: Any, model: Any) -> np.ndarray:
    if isinstance(masks, NeuronMasks) and model is not None:
        masks.check_fits(*_shape_of(model), model=getattr(model, "name", None))
    _fit(mask, model)
    return mask


def _as_edits(mask: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> Edits:
    """Host arrays -> `Edits` of JAX arrays (bool, float32, float32), like `Edits.identity`.

    A plain transfer, no compiled code. JAX arrays rather than NumPy ones because
    jit caches a NumPy argument and a JAX one separately: mixing the two kinds
    would compile the forward twice.
    """
    return Edits(
        mask=jnp.asarray(np.asarray(mask, bool)),
        scale=jnp.asarray(np.asarray(scale, np.float32)),
        shift=jnp.asarray(np.asarray(shift, np.float32)),
    )


def _edits(mask: np.ndarray, scale: Any, shift: Any) -> Edits:
    """`Edits` with float32 `scale`/`shift` broadcast to the mask; outside it they are 1 and 0."""
    scale = np.where(mask, np.broadcast_to(np.asarray(scale, np.float64), mask.shape), 1.0).astype(np.float32)
    shift = np.where(mask, np.broadcast_to(np.asarray(shift, np.float64), mask.shape), 0.0).astype(np.float32)
    if not (np.isfinite(scale).all() and np.isfinite(shift).all()):
        raise EditError("the edit's values are not finite in float32 on some neurons (overflow or NaN statistics)")
    return _as_edits(mask, scale, shift)


def _per_neuron(name: str, values: Any, mask: np.ndarray) -> np.ndarray:
    """A constant or a float [L, F] array of values, finite on the mask."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        return np.asarray(_finite(name, arr), np.float64)
    if arr.dtype.kind not in "fiu":
        raise EditError(f"{name} must be numeric, got {arr.dtype}")
    if arr.shape != mask.shape:
        raise EditError(f"{name} must be a constant or [L, F] = {mask.shape}, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr[mask]).all():
        raise EditError(f"{name} has non-finite values on {int((~np.isfinite(arr[mask])).sum())} edited neurons")
    return arr


def _stat_rows(stats: Any, mask: np.ndarray, language: str) -> int:
    """Check `stats` ([K, L, F], languages) against the mask; the row of `language`."""
    if not hasattr(stats, "languages") or not hasattr(stats, "shape"):
        raise EditError(f"expected ActivationStats or DocumentSummaries, got {type(stats).__name__}")
    if tuple(stats.shape[1:]) != mask.shape:
        raise EditError(
            f"statistics are {stats.shape[1]} layers x {stats.shape[2]} neurons but the mask is "
            f"{mask.shape[0]} x {mask.shape[1]}; use statistics collected on the mask's model"
        )
    if language not in stats.languages:
        raise EditError(f"language {language!r} is not in the statistics, which hold {list(stats.languages)}")
    return list(stats.languages).index(language)


def _target(masks: Any, lang: Any) -> str:
    if not isinstance(lang, str):
        raise EditError(f"the target must be one language code, got {lang!r}")
    if isinstance(masks, NeuronMasks):
        masks.index(lang)  # UnknownLanguageError listing the mask's languages
    return lang


def _mean_activation(stats: Any, language: str, mask: np.ndarray, definition: str = "mean") -> np.ndarray:
    """float64 [L, F]: μ_t as the mean activation (Σa / n) or the activation probability (over_zero / n)."""
    if definition not in DEFINITIONS:
        raise EditError(f"unknown definition {definition!r}; use one of {DEFINITIONS}")
    k = _stat_rows(stats, mask, language)
    if not hasattr(stats, "tokens") or not hasattr(stats, "over_zero"):
        raise EditError(f"μ_t needs ActivationStats (tokens, over_zero, sum), got {type(stats).__name__}")
    n = int(stats.tokens[k])
    if n <= 0:
        raise EditError(
            f"language {language!r} has 0 tokens in the statistics, so no mean; collect it on a non-empty corpus"
        )
    if definition == "probability":
        return np.asarray(stats.over_zero[k], np.float64) / n
    if getattr(stats, "sum", None) is None:
        raise EditError(
            "these statistics have no activation sums, so no mean activation μ_t; re-collect them with sums "
            "(or import Gurgurov's files with average_activations), or use definition='probability'"
        )
    return np.asarray(stats.sum[k], np.float64) / n


# ----------------------------------------------------------------------------- constructors


def identity(model_or_shape: Any) -> Edits:
    """Edits that change nothing: the forward with them equals the forward without them."""
    L, F = _shape_of(model_or_shape)
    return _as_edits(np.zeros((L, F), bool), np.ones((L, F), np.float32), np.zeros((L, F), np.float32))


def check_fits(edits: Edits, model: Any) -> Edits:
    """Raise `MaskShapeError` unless `edits` are `[model.num_layers, model.num_neurons]`; return them."""
    shapes = {name: np.shape(getattr(edits, name)) for name in ("mask", "scale", "shift")}
    if len(set(shapes.values())) != 1:
        raise EditError(f"edit arrays disagree in shape: {shapes}")
    _fit(np.empty(shapes["mask"], bool), model, what="edits")
    return edits


def deactivate(
    masks: NeuronMasks | np.ndarray, lang: str | Sequence[str] | None = None, *, value: float = 0.0, model: Any = None
) -> Edits:
    """Set the neurons of `lang` to `value`: `a = δ`.

    LAPE (Tang et al. 2024, RUCAIBox/Language-Specific-Neurons `ppl.py`,
    `generation.py`): `activation.index_fill_(2, mask, 0)` after SiLU, before `* up`,
    in every layer. Language arithmetics (Gurgurov et al. 2025,
    d-gurgurov/Language-Neurons-Manipulation): `--deactivation_strength` δ, default
    −1 in `batch_generation.py` (0 in the shipped scripts), −1.5 for `fallbacks.py`
    (below SiLU's minimum ≈ −0.28). Several languages: their union (the fallbacks).

    Args:
      masks: `NeuronMasks` (with `lang`), or a bool `[L, F]` mask (without).
      lang: language code, or several (their masks' union).
      value: δ.
      model: if given, the mask must fit it (`[model.num_layers, model.num_neurons]`).
    """
    mask = _masked(_select(masks, lang), masks, model)
    return _edits(mask, 0.0, _finite("value", value))


def amplify(
    masks: NeuronMasks | np.ndarray,
    lang: str | Sequence[str] | None = None,
    factor: float | None = None,
    *,
    model: Any = None,
) -> Edits:
    """Multiply the neurons of `lang` by `factor`: `a *= α`.

    tauimbz/lang-task-neuron `set_activation_mlp_v2` with `operation_target "*c"`
    (Rahmanisa et al. 2025), and the `mask` deactivation of Gurgurov's
    `fallbacks.py` (`a *= −0.1`).
    """
    if factor is None:
        raise EditError("amplify needs factor= (the multiplier α)")
    mask = _masked(_select(masks, lang), masks, model)
    return _edits(mask, _finite("factor", factor), 0.0)


def set_to(
    masks: NeuronMasks | np.ndarray, lang: str | Sequence[str] | None = None, values: Any = None, *, model: Any = None
) -> Edits:
    """Set the neurons of `lang` to `values`: a constant (`a = c`) or a per-neuron float `[L, F]` array.

    tauimbz/lang-task-neuron `operation_target "=c"` (e.g. `=10`, `=22`); SAE-LAPE's
    neuron steering `a[idx] = value`; with an array, any precomputed statistic.
    """
    if values is None:
        raise EditError("set_to needs values= (a constant or a float [L, F] array)")
    mask = _masked(_select(masks, lang), masks, model)
    return _edits(mask, 0.0, _per_neuron("values", values, mask))


def set_to_statistic(
    masks: NeuronMasks | np.ndarray,
    lang: str | None,
    stats: Any,
    statistic: str = "p_max",
    target: str | None = None,
    *,
    model: Any = None,
) -> Edits:
    """Patched amplification (Rahmanisa et al. 2025): `a[mask_lang] = p_target[l, j]`.

    tauimbz/lang-task-neuron `set_activation_mlp_v2` with a replacer tensor: the
    target language's neurons are replaced by `replacer[target][l][j]` (`max.pt`
    or `median.pt`) on every non-padding position. (jlang edits every position;
    padding never influences real tokens under the causal, padding-masked attention.)

    Args:
      masks, lang: the neurons to patch (a bare `[L, F]` mask with `lang=None` needs `target`).
      stats: `DocumentSummaries` for "p_max" / "p_median"; `ActivationStats` for
        "mean" (Σa / n over all tokens) and "token_max" (max over tokens: *not* the
        paper's p_max, which is the max over documents of per-document means).
      statistic: "p_max" | "p_median" | "mean" | "token_max".
      target: the language whose statistic is written (default: `lang`).
    """
    if statistic not in STATISTICS:
        raise EditError(f"unknown statistic {statistic!r}; use one of {STATISTICS}")
    mask = _masked(_select(masks, lang), masks, model)
    target = target if target is not None else lang
    if not isinstance(target, str):
        raise EditError(f"name one target language whose statistic to use, got {target!r}")
    if statistic in ("p_max", "p_median"):
        if not isinstance(stats, DocumentSummaries):
            raise EditError(
                f"{statistic} is a max/median over documents of per-document mean activations; ActivationStats "
                "only has token-level sums and maxima. Build DocumentSummaries.from_document_means(...) (with "
                "jlang.edits.document_means) or DocumentSummaries.from_reference_files('max.pt', 'median.pt', langs)"
            )
        k = _stat_rows(stats, mask, target)
        values = (stats.max if statistic == "p_max" else stats.median)[k]
    elif statistic == "mean":
        values = _mean_activation(stats, target, mask)
    else:
        k = _stat_rows(stats, mask, target)
        if getattr(stats, "max", None) is None or isinstance(stats, DocumentSummaries):
            raise EditError("statistic='token_max' needs ActivationStats collected with `max`")
        values = stats.max[k]
    return _edits(mask, 0.0, _per_neuron(statistic, values, mask))


def add(
    masks: NeuronMasks, target: str, stats: Any, alpha: float = 1.0, definition: str = "mean", *, model: Any = None
) -> Edits:
    """Additive language arithmetics (Gurgurov et al. 2025): `a[mask_t] += α · μ_t`.

    d-gurgurov/Language-Neurons-Manipulation `batch_generation.py` (the paper's main
    method), α = `--activation_strength` (default 1). `definition="mean"`: μ_t is the
    mean activation over language t's tokens (`average_activations`, since commit
    301e4be, 2025-08-09); `"probability"`: the activation probability
    `over_zero / n`, as in the code before that commit (the paper's v1).
    """
    target = _target(masks, target)
    mask = _masked(_select(masks, target if isinstance(masks, NeuronMasks) else None), masks, model)
    mu = _mean_activation(stats, target, mask, definition)
    return _edits(mask, 1.0, _finite("alpha", alpha) * mu)


def replace(masks: NeuronMasks, target: str, stats: Any, definition: str = "mean", *, model: Any = None) -> Edits:
    """Replacement (Gurgurov et al. 2025, "the established replacement approach"): `a[mask_t] = μ_t`."""
    target = _target(masks, target)
    mask = _masked(_select(masks, target if isinstance(masks, NeuronMasks) else None), masks, model)
    return _edits(mask, 0.0, _mean_activation(stats, target, mask, definition))


def diffmean(
    masks: NeuronMasks,
    target: str,
    stats: Any,
    definition: str = "mean",
    *,
    others: Sequence[str] | None = None,
    model: Any = None,
) -> Edits:
    """Gurgurov et al. 2025 `diffmean`: `a[mask_t] += μ_t − mean_{k≠t} μ_k`.

    The mean is over every other language of `stats` (or over `others`).
    """
    target = _target(masks, target)
    mask = _masked(_select(masks, target if isinstance(masks, NeuronMasks) else None), masks, model)
    rest = [x for x in (others if others is not None else stats.languages) if x != target]
    if not rest:
        raise EditError(
            f"diffmean needs at least one language besides {target!r}; the statistics hold {list(stats.languages)}"
        )
    mu_t = _mean_activation(stats, target, mask, definition)
    mu_rest = np.mean([_mean_activation(stats, x, mask, definition) for x in rest], axis=0)
    return _edits(mask, 1.0, mu_t - mu_rest)


def combine(*edits: Edits, overlap: str = "compose") -> Edits:
    """Several edits as one, applied left to right (e.g. deactivate s, then steer towards t).

    Neurons edited by one edit only get exactly that edit's scale and shift.
    Where masks overlap:

    * `overlap="compose"` (default): the maps compose, `a' = (a·s1 + b1)·s2 + b2`,
      stored as scale `s1·s2`, shift `b1·s2 + b2`. This is Gurgurov's
      `batch_generation.py`, which zeroes language s's neurons and then adds
      `α μ_t` to t's: a neuron in both ends at `0 + α μ_t`. When the later edit
      sets a value (deactivate, set_to, replace: scale 0) the later edit wins.
    * `overlap="last"`: the later edit wins outright (its scale and shift replace).
    """
    if not edits:
        raise EditError("combine needs at least one edit")
    if overlap not in ("compose", "last"):
        raise EditError(f"unknown overlap {overlap!r}; use 'compose' or 'last'")
    shapes = [tuple(np.shape(e.mask)) for e in edits]
    if len(set(shapes)) != 1:
        raise EditError(f"edits of different shapes cannot be combined: {shapes} (edits of different models?)")
    mask = np.array(edits[0].mask, bool)
    scale = np.where(mask, np.asarray(edits[0].scale, np.float32), np.float32(1))
    shift = np.where(mask, np.asarray(edits[0].shift, np.float32), np.float32(0))
    for e in edits[1:]:
        m = np.asarray(e.mask, bool)
        s = np.where(m, np.asarray(e.scale, np.float32), np.float32(1))
        b = np.where(m, np.asarray(e.shift, np.float32), np.float32(0))
        if overlap == "compose":
            scale, shift = scale * s, shift * s + b
        else:
            scale, shift = np.where(m, s, scale), np.where(m, b, shift)
        mask = mask | m
    return _as_edits(mask, scale, shift)
