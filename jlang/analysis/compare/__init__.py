"""Base vs aligned checkpoint on the same tokens: the comparison (`core`), the run (`run`), the report (`report`)."""

from jlang.lazy import lazy_exports

__all__ = ["CompareConfig", "CompareError", "Comparison", "compare", "run_compare"]

__getattr__, __dir__ = lazy_exports(
    "jlang.analysis.compare",
    {
        "Comparison": "jlang.analysis.compare.core",
        "CompareError": "jlang.analysis.compare.core",
        "compare": "jlang.analysis.compare.core",
        "CompareConfig": "jlang.analysis.compare.run",
        "run_compare": "jlang.analysis.compare.run",
    },
)
