"""Neuron identification methods: activation statistics in, `NeuronMasks` out (pure NumPy).

* `lape`, `lape_fixed_count` -- LAPE (Tang et al. 2024; RUCAIBox identify.py) and its
  equal-size variant (Kargaran et al. 2025).
* `ternary` -- ternary neurons with AutoSweep (Zhang et al. 2025; NJUNLP identify.py).
"""

from jlang.methods.common import MethodError
from jlang.methods.lape import lape, lape_entropy, lape_fixed_count, lape_probs
from jlang.methods.ternary import autosweep, ternary, ternary_probs, ternary_scores, ternary_terms

__all__ = [
    "MethodError",
    "lape",
    "lape_entropy",
    "lape_fixed_count",
    "lape_probs",
    "ternary",
    "ternary_probs",
    "ternary_scores",
    "ternary_terms",
    "autosweep",
]
