"""Base vs aligned checkpoint on the same tokens, in the order of the flow:

    neurons.py   one checkpoint: ternary masks, τ, a type per neuron (specific / related / general / none)
    profile.py   per-layer curves of one checkpoint and their cut into stages
    shifts.py    what moved between the two: Δp summaries, spontaneous alignment
    core.py      `compare`: both checkpoints into one `Comparison`
    report.py    its markdown report, JSON and figures
    run.py       `jlang compare`: the statistics of both checkpoints on the same tokens, then all of the above

Every public name of these modules is importable from here (lazily).
"""

from jlang.lazy import lazy_exports

_MODULES = {
    "jlang.analysis.compare.neurons": (
        "GENERAL",
        "NONE",
        "RELATED",
        "SPECIFIC",
        "TYPE_NAMES",
        "CompareError",
        "ModelNeurons",
        "jaccard",
        "model_neurons",
        "neuron_types",
        "type_counts",
    ),
    "jlang.analysis.compare.profile": (
        "CURVES",
        "STAGE_NAMES",
        "LayerProfile",
        "divergence_curve",
        "layer_profile",
        "segment",
    ),
    "jlang.analysis.compare.shifts": ("QUANTILES", "delta_summary", "spontaneous_alignment"),
    "jlang.analysis.compare.core": ("Comparison", "check_same_tokens", "compare"),
    "jlang.analysis.compare.run": ("CompareConfig", "PPLOptions", "run_compare"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("jlang.analysis.compare", _EXPORTS)
