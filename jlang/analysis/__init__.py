"""Analyses over neuron masks and statistics (pure NumPy; no model needed).

* `jlang.analysis.overlap` -- IoU of language neuron sets per layer and overall,
  average-linkage clustering, relation to script and family, and the neuron
  specialisation counting of Tan et al. 2024 as used in the Aya-23 study.
* `jlang.analysis.culture` -- culture neurons (Namazifard & Galke): compound,
  pure culture and generic masks from language and culture LAPE masks.
* `jlang.analysis.langinfo` -- a built-in table of script and family per language code.
"""

from jlang.analysis.culture import (
    CultureError,
    CultureMasks,
    culture_masks,
    identify_culture_neurons,
)
from jlang.analysis.langinfo import LANGUAGES, LangInfo, family_of, script_of
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
