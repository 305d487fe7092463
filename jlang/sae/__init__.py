"""Sparse autoencoders on a model's activations, and SAE-LAPE (Andrylie et al. 2025): language-specific SAE features.

    jlang.sae.model       SAEConfig, SAE, TopK / ReLU+L1 as pure functions over a params pytree
    jlang.sae.stream      ActivationStream (activations streamed from the model), ArrayStream, sentence rows
    jlang.sae.train       TrainConfig, train_sae (optax, orbax checkpoints, exact resume)
    jlang.sae.evaluation  evaluate (MSE, explained variance, L0, ΔNLL with the SAE spliced in)
    jlang.sae.lape        FeatureStats, feature_stats, identify (SAE-LAPE), SAELapeFeatures
    jlang.sae.steer       steering_vector, generate_steered, steering_success (h += m·maxact·W_dec[f])
    jlang.sae.classify    classify: language ID from feature counts (sae-count, sae-min-max) vs py3langid

Names are imported lazily (the submodules import JAX).
"""

from __future__ import annotations

from jlang.lazy import lazy_exports

_EXPORTS = {
    "SAE": "jlang.sae.model",
    "SAEConfig": "jlang.sae.model",
    "SAEError": "jlang.sae.model",
    "ActivationStream": "jlang.sae.stream",
    "ArrayStream": "jlang.sae.stream",
    "TrainConfig": "jlang.sae.train",
    "train_sae": "jlang.sae.train",
    "evaluate": "jlang.sae.evaluation",
    "FeatureStats": "jlang.sae.lape",
    "SAELapeFeatures": "jlang.sae.lape",
    "feature_stats": "jlang.sae.lape",
    "identify": "jlang.sae.lape",
    "steering_vector": "jlang.sae.steer",
    "generate_steered": "jlang.sae.steer",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports("jlang.sae", _EXPORTS)
