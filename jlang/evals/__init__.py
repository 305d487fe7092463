"""Evaluations of language neurons: what deactivating or amplifying them does to a model.

    ppl_matrix, PPLResult          deactivation perplexity matrix (LAPE, NJUNLP conventions)
    lss, cloze_items, LSSResult    Language Steering Score, difference of differences (Rahmanisa et al.)
    logit_lens, LensResult         per-layer top-k token languages (Aya-23, code-logitlens)
    TokenTagger                    a language label per vocabulary token (Unicode script, corpus frequency)
    run_steering, SteeringResult   steer generations to a target language (LAPE, Language Arithmetics)
    Py3LangID, identifier_accuracy language identification of generations
    Scorer                         next-token log-probs in vocabulary chunks under any `Edits`

Imported lazily (the submodules pull in JAX).
"""

from __future__ import annotations

from jlang.lazy import lazy_exports

_EXPORTS = {
    "ppl_matrix": "jlang.evals.perplexity",
    "PPLResult": "jlang.evals.perplexity",
    "aggregate_nll": "jlang.evals.perplexity",
    "lss": "jlang.evals.lss",
    "cloze_items": "jlang.evals.lss",
    "read_parallel": "jlang.evals.lss",
    "LSSResult": "jlang.evals.lss",
    "logit_lens": "jlang.evals.logit_lens",
    "LensResult": "jlang.evals.logit_lens",
    "TokenTagger": "jlang.evals.token_lang",
    "run_steering": "jlang.evals.steering",
    "steering_prompts": "jlang.evals.steering",
    "default_generator": "jlang.evals.steering",
    "Activation": "jlang.evals.steering",
    "SteeringResult": "jlang.evals.steering",
    "Py3LangID": "jlang.evals.langid",
    "identifier_accuracy": "jlang.evals.langid",
    "Scorer": "jlang.models.scoring",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports("jlang.evals", _EXPORTS)
