"""jlang: find, compare and edit the language-specific neurons of large language models.

Public API (imported lazily, so NumPy-only users of masks and statistics do not
pay for JAX):

    load_model, Model, Edits               models (jlang.models)
    jlang.generate.generate                KV-cache generation with edits (jlang.models.generate)
    collect_stats, ActivationStats         statistics (jlang.stats)
    lape, ternary, plnd, NeuronMasks       identification (jlang.methods) and masks (jlang.masks)
    Comparison, run_compare                base vs aligned checkpoints (jlang.analysis.compare)
    SAE, train_sae, finetune               sparse autoencoders (jlang.sae), fine-tuning (jlang.train)
    CheckpointError, UnsupportedModelError errors

The package is one folder per stage of the flow (README, "Layout"). Modules that
moved there keep their old import paths (`MOVED_MODULES`).
"""

from __future__ import annotations

from jlang.lazy import alias_moved_modules, lazy_exports

__version__ = "0.1.0"

# Old import path -> where the module lives now (the layout of issue 14).
MOVED_MODULES = {
    "jlang.collect": "jlang.stats.collect",
    "jlang.resumable": "jlang.stats.checkpoint",
    "jlang.distributed": "jlang.parallel.distributed",
    "jlang.runs": "jlang.methods.chain",
    "jlang.generate": "jlang.models.generate",
    "jlang.compare": "jlang.analysis.compare",
    "jlang.compare_runner": "jlang.analysis.compare.run",
    "jlang.compare_report": "jlang.analysis.compare.report",
    "jlang.evals.vocab": "jlang.models.vocab",
    "jlang.evals.scoring": "jlang.models.scoring",
    "jlang.evals.report": "jlang.io.report",
    "jlang.train.export_hf": "jlang.models.export",
    "jlang.data.gettext_corpus": "jlang.data.corpora.gettext",
    "jlang.data.code_corpus": "jlang.data.corpora.code",
    "jlang.data.culture_corpus": "jlang.data.corpora.culture",
    "jlang.data.codemix": "jlang.data.corpora.codemix",
    "jlang.analysis.langinfo": "jlang.data.langinfo",
    "jlang.stats_cli": "jlang.cli.__main__",
    "jlang.finetune_cli": "jlang.cli.__main__",
}
alias_moved_modules(MOVED_MODULES)

_EXPORTS = {
    "load_model": "jlang.models.model",
    "Model": "jlang.models.model",
    "Edits": "jlang.models.decoder",
    "CheckpointError": "jlang.models.sources",
    "UnsupportedModelError": "jlang.models.families",
    "collect_stats": "jlang.stats.collect",
    "ActivationStats": "jlang.stats.container",
    "NeuronMasks": "jlang.masks",
    "lape": "jlang.methods.lape",
    "ternary": "jlang.methods.ternary",
    "plnd": "jlang.methods.plnd",
    "PLNDResult": "jlang.methods.plnd",
    "Comparison": "jlang.analysis.compare.core",
    "run_compare": "jlang.analysis.compare.run",
    "SAE": "jlang.sae.model",
    "train_sae": "jlang.sae.train",
    "finetune": "jlang.train.sft",
}
# Stage packages and shared modules, importable as attributes (`jlang.edits`, `jlang.torch`, ...).
_SUBMODULES = (
    "analysis",
    "cli",
    "config",
    "data",
    "edits",
    "evals",
    "io",
    "masks",
    "methods",
    "models",
    "parallel",
    "sae",
    "stats",
    "torch",
    "train",
)
__all__ = ["__version__", *_EXPORTS]

_MODULE_ATTRS = {m: f"jlang.{m}" for m in _SUBMODULES} | {
    old.removeprefix("jlang."): old for old in MOVED_MODULES if old.count(".") == 1
}
__getattr__, __dir__ = lazy_exports("jlang", {**_EXPORTS, **_MODULE_ATTRS})
