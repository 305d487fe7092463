"""Where the read-only reference data lives: `../shared/fixtures` beside the checkout, or `$JLANG_SHARED`."""

import os
from pathlib import Path

import pytest


def shared_fixtures(*parts: str) -> Path:
    """The path of a fixture under `shared/fixtures`; the calling test skips, saying why, when it is absent."""
    candidates = [Path(__file__).resolve().parents[2] / "shared"]
    if os.environ.get("JLANG_SHARED"):
        candidates.append(Path(os.environ["JLANG_SHARED"]))
    for base in candidates:
        path = base.joinpath("fixtures", *parts)
        if path.exists():
            return path
    pytest.skip(f"../shared fixtures absent: {'/'.join(parts)} (set JLANG_SHARED to the shared folder)")
