"""Statistics: per-language activation statistics of MLP neurons, the input of every identification method.

ActivationStats, StatsError     the container (`jlang.stats.container`; NumPy only)
collect_stats, run_stats        the statistics pass (`jlang.stats.collect`; imported lazily, it needs JAX)
"""

from jlang.lazy import lazy_exports
from jlang.stats.container import ActivationStats, StatsError

__all__ = ["ActivationStats", "StatsError", "collect_stats", "run_stats"]

__getattr__, __dir__ = lazy_exports(
    "jlang.stats",
    {
        "ActivationStats": "jlang.stats.container",
        "StatsError": "jlang.stats.container",
        "collect_stats": "jlang.stats.collect",
        "run_stats": "jlang.stats.collect",
    },
)
