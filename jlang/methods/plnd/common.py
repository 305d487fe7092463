"""What every part of PLND shares: its error, the scoring modes and the scored parts."""

from __future__ import annotations

from collections.abc import Sequence

from jlang.methods.common import MethodError

MODES = ("code", "paper")
PARTS = ("ffn", "qk", "vo")  # FFN neurons [F]; Q/K and V/O dimensions [H*D]


class PLNDError(MethodError):
    """PLND cannot run on these inputs; the message says what and how to fix it."""


def check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    """The scored parts in canonical order; unknown or no part is an error."""
    bad = [p for p in parts if p not in PARTS] if not isinstance(parts, str) else [parts]
    if bad or not parts:
        raise PLNDError(f"unknown parts {bad or list(parts)}; score some of {PARTS}")
    return tuple(p for p in PARTS if p in parts)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise PLNDError(
            f"unknown PLND mode {mode!r}; use one of {MODES} ('code': as released, 'paper': FFN output norm)"
        )
    return mode
