"""The neuron edits the evaluations apply, as `Edits` (`a' = where(mask, a * scale + shift, a)` at `mlp.act`).

These call the library's constructors in `jlang.edits` (which cite the papers'
code); only if that module is missing (an older checkout) do they build the
same `Edits` directly, so the evaluations depend on nothing but the `Edits`
contract of `jlang.models.decoder`:

* `deactivate`: `a[mask_k] = value` (LAPE `ppl.py`/`generation.py`: 0; Language Arithmetics: −1).
* `amplify`: `a[mask_k] *= factor` (tauimbz/lang-task-neuron `"*c"`).
* `add`: `a[mask_k] += alpha * mu_k`, `mu_k` the mean activation of language k (Language Arithmetics `additive`).
* `then(first, second)`: `second ∘ first` as one edit (affine maps compose where masks overlap).
* `no_edit`: the identity, with the same shapes as every other edit (no recompilation).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jlang.masks import NeuronMasks
from jlang.models.decoder import Edits

try:
    from jlang import edits as _lib
except ImportError:  # pragma: no cover - only on checkouts without jlang.edits
    _lib = None

__all__ = ["add", "amplify", "deactivate", "no_edit", "then"]


def _edits(mask: np.ndarray, scale, shift) -> Edits:
    mask = np.asarray(mask, bool)
    return Edits(
        mask=jnp.asarray(mask),
        scale=jnp.asarray(np.broadcast_to(np.asarray(scale, np.float32), mask.shape)),
        shift=jnp.asarray(np.broadcast_to(np.asarray(shift, np.float32), mask.shape)),
    )


def no_edit(num_layers: int, num_neurons: int) -> Edits:
    """The identity edit (mask all False): the "none" condition."""
    if _lib is not None:
        return _lib.identity((num_layers, num_neurons))
    return _edits(np.zeros((num_layers, num_neurons), bool), 1.0, 0.0)


def deactivate(masks: NeuronMasks, lang: str, value: float = 0.0) -> Edits:
    """`a = value` on language `lang`'s neurons in every layer."""
    if _lib is not None:
        return _lib.deactivate(masks, lang, value=value)
    return _edits(masks[lang], 0.0, value)


def amplify(masks: NeuronMasks, lang: str, factor: float) -> Edits:
    """`a *= factor` on language `lang`'s neurons."""
    if _lib is not None:
        return _lib.amplify(masks, lang, factor=factor)
    return _edits(masks[lang], factor, 0.0)


def add(masks: NeuronMasks, lang: str, stats, alpha: float = 1.0) -> Edits:
    """`a += alpha * mu_lang` on language `lang`'s neurons (`mu` = `stats.mean` of `lang`, `[L, F]`)."""
    if _lib is not None:
        return _lib.add(masks, lang, stats, alpha=alpha)
    return _edits(masks[lang], 1.0, alpha * np.asarray(stats.mean[stats.index(lang)]))


def then(first: Edits, second: Edits) -> Edits:
    """`second ∘ first`: on neurons in both masks `(a*s1 + b1)*s2 + b2`; elsewhere whichever edit applies."""
    if _lib is not None:
        return _lib.combine(first, second, overlap="compose")
    m1, m2 = np.asarray(first.mask), np.asarray(second.mask)
    s1, b1 = np.where(m1, np.asarray(first.scale), 1.0), np.where(m1, np.asarray(first.shift), 0.0)
    s2, b2 = np.where(m2, np.asarray(second.scale), 1.0), np.where(m2, np.asarray(second.shift), 0.0)
    return _edits(m1 | m2, s1 * s2, b1 * s2 + b2)
