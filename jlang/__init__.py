"""jlang: find, compare and edit the language-specific neurons of large language models.

Public API (imported lazily, so NumPy-only users of masks and statistics do not
pay for JAX):

    load_model, Model, Edits               models (jlang.models)
    jlang.generate.generate                KV-cache generation with edits
    collect_stats, ActivationStats         statistics (jlang.collect, jlang.stats)
    lape, ternary, NeuronMasks             identification and masks (jlang.methods, jlang.masks)
    CheckpointError, UnsupportedModelError errors
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "jlang.models.model",
    "Model": "jlang.models.model",
    "Edits": "jlang.models.decoder",
    "CheckpointError": "jlang.models.sources",
    "UnsupportedModelError": "jlang.models.families",
    "collect_stats": "jlang.collect",
    "ActivationStats": "jlang.stats",
    "NeuronMasks": "jlang.masks",
    "lape": "jlang.methods",
    "ternary": "jlang.methods",
    "Comparison": "jlang.compare",
    "run_compare": "jlang.compare_runner",
    "plnd": "jlang.methods.plnd",
    "PLNDResult": "jlang.methods.plnd",
    "SAE": "jlang.sae.model",
    "train_sae": "jlang.sae.train",
    "finetune": "jlang.train.sft",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in ("parallel", "models", "data", "methods", "masks", "stats", "collect", "config", "io", "cli", "edits", "generate", "evals", "runs", "torch"):
        return importlib.import_module(f"jlang.{name}")
    raise AttributeError(f"module 'jlang' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
