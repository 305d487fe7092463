"""jlang: find, compare and edit the language-specific neurons of large language models.

Public API: `load_model`, `Model`, `Edits` (and, as they land, statistics,
identification methods and masks).
"""

__version__ = "0.1.0"

from jlang.models import CheckpointError, Edits, Model, UnsupportedModelError, load_model

__all__ = ["CheckpointError", "Edits", "Model", "UnsupportedModelError", "__version__", "load_model"]
