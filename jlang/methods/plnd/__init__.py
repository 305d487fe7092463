"""PLND: parallel language-specific neuron detection (Zhao et al., NeurIPS 2024).

"How do Large Language Models Handle Multilingualism?", code in
DAMO-NLP-SG/multilingual_analysis (methods.md §2): the scores are computed in
patched copies of transformers' `modeling_llama.py` (`neuron_detection/`), the
language-specific sets and the deactivation in `neuron_deactivate/test_mistral_gsm.py`.

Read in the order of the method:

* `scores`: what one document does with each FFN neuron, Q/K and V/O dimension of a layer
  (the released `code` scores and the `paper` FFN score), computed as a decoder probe;
* `run`: the pass (`plnd`, `run_plnd`, `sample_documents`): documents sampled as released,
  per-document top-k counted per language in one jitted forward per batch;
* `result`: `PLNDResult`, the counts and the activated / shared / language-specific sets
  they give, saved as `.npz` and in the released 5-line text format;
* `edits`: `plnd_edits`, the deactivation as `Edits` (with the released GQA row bug as an option).
"""

from jlang.methods.plnd.common import MODES, PARTS, PLNDError
from jlang.methods.plnd.edits import EDIT_PARTS, gqa_kv_index, plnd_edits
from jlang.methods.plnd.result import PLNDResult, read_original_text
from jlang.methods.plnd.run import (
    RELEASED_SEED,
    language_counts,
    plnd,
    plnd_step,
    run_plnd,
    sample_documents,
    topk_membership,
)
from jlang.methods.plnd.scores import (
    QK_BLOCK_ELEMENTS,
    abs_sum,
    dim_chunk,
    document_scores,
    document_scores_fn,
    ffn_code_score,
    ffn_paper_score,
    layer_scores,
    qk_score,
    vo_score,
)

__all__ = [
    "EDIT_PARTS",
    "MODES",
    "PARTS",
    "PLNDError",
    "PLNDResult",
    "QK_BLOCK_ELEMENTS",
    "RELEASED_SEED",
    "abs_sum",
    "dim_chunk",
    "document_scores",
    "document_scores_fn",
    "ffn_code_score",
    "ffn_paper_score",
    "gqa_kv_index",
    "language_counts",
    "layer_scores",
    "plnd",
    "plnd_edits",
    "plnd_step",
    "qk_score",
    "read_original_text",
    "run_plnd",
    "sample_documents",
    "topk_membership",
    "vo_score",
]
