"""The `jlang` command: one module per command group, registered in `jlang.cli.app`."""

from jlang.lazy import lazy_exports

__all__ = ["build_parser", "main"]

__getattr__, __dir__ = lazy_exports("jlang.cli", {"build_parser": "jlang.cli.app", "main": "jlang.cli.app"})
