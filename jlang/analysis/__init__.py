"""Analyses over neuron masks and statistics.

* `jlang.analysis.overlap` -- IoU of language neuron sets per layer and overall,
  average-linkage clustering, relation to script and family, and the neuron
  specialisation counting of Tan et al. 2024 as used in the Aya-23 study.
* `jlang.analysis.culture` -- culture neurons (Namazifard & Galke): compound,
  pure culture and generic masks from language and culture LAPE masks.
* `jlang.data.langinfo` -- a built-in table of script and family per language code.
* `jlang.analysis.compare` -- base vs aligned checkpoint on the same tokens.
* `jlang.analysis.code_neurons`, `jlang.analysis.code_lens` -- programming-language neurons and the code logit lens.

The overlap analyses and the language table are NumPy only and imported here
(`jlang.analysis.overlap` is the function, as it always was); the rest is
imported lazily, on first use.
"""

from __future__ import annotations

from jlang.analysis.overlap import (
    OverlapResult,
    SpecializationResult,
    cluster_order,
    group_relation,
    layer_iou,
    overall_iou,
    overlap,
    pairwise_iou,
    specialization,
    specialized_neurons,
)
from jlang.data.langinfo import LANGUAGES, LangInfo, family_of, script_of
from jlang.lazy import lazy_exports

_CULTURE = ("CultureError", "CultureMasks", "culture_masks", "identify_culture_neurons")
__all__ = [
    "LANGUAGES",
    "CultureError",
    "CultureMasks",
    "LangInfo",
    "OverlapResult",
    "SpecializationResult",
    "cluster_order",
    "culture_masks",
    "family_of",
    "group_relation",
    "identify_culture_neurons",
    "layer_iou",
    "overall_iou",
    "overlap",
    "pairwise_iou",
    "script_of",
    "specialization",
    "specialized_neurons",
]

__getattr__, __dir__ = lazy_exports("jlang.analysis", dict.fromkeys(_CULTURE, "jlang.analysis.culture"))
