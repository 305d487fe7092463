"""Analyses over neuron masks and statistics.

* `jlang.analysis.overlap` -- IoU of language neuron sets per layer and overall,
  average-linkage clustering, relation to script and family, and the neuron
  specialisation counting of Tan et al. 2024 as used in the Aya-23 study.
* `jlang.analysis.culture` -- culture neurons (Namazifard & Galke): compound,
  pure culture and generic masks from language and culture LAPE masks.
* `jlang.data.langinfo` -- a built-in table of script and family per language code.
* `jlang.analysis.compare` -- base vs aligned checkpoint on the same tokens.
* `jlang.analysis.code_neurons`, `jlang.analysis.code_lens` -- programming-language neurons and the code logit lens.

Imported lazily: `import jlang.analysis` loads none of them.
"""

from __future__ import annotations

from jlang.lazy import lazy_exports

_EXPORTS = {
    "LANGUAGES": "jlang.data.langinfo",
    "LangInfo": "jlang.data.langinfo",
    "family_of": "jlang.data.langinfo",
    "script_of": "jlang.data.langinfo",
    "CultureError": "jlang.analysis.culture",
    "CultureMasks": "jlang.analysis.culture",
    "culture_masks": "jlang.analysis.culture",
    "identify_culture_neurons": "jlang.analysis.culture",
    "OverlapResult": "jlang.analysis.overlap",
    "SpecializationResult": "jlang.analysis.overlap",
    "cluster_order": "jlang.analysis.overlap",
    "group_relation": "jlang.analysis.overlap",
    "layer_iou": "jlang.analysis.overlap",
    "overall_iou": "jlang.analysis.overlap",
    "overlap": "jlang.analysis.overlap",  # the submodule: `overlap.overlap` is the function
    "pairwise_iou": "jlang.analysis.overlap",
    "specialization": "jlang.analysis.overlap",
    "specialized_neurons": "jlang.analysis.overlap",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("jlang.analysis", _EXPORTS)
