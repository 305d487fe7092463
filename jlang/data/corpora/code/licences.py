"""Which sources' licences allow using their text: `licence_verdict`.

A source is used only when its licence is a recognised open licence (MIT, BSD, Apache, PSF, ISC, Zlib,
CC0, MPL, (L)GPL, ...; for an SPDX expression every term must be recognised, one branch of an `OR`
sufficing). All of these allow computing and publishing statistics of the text (activation counts,
masks); jlang never redistributes the text: the corpus lives in the local cache and is read at run time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["licence_verdict"]

# Recognised open licences: an SPDX id or a classifier/free-text name matching one of these.
_OPEN_LICENCE = re.compile(
    r"\b(MIT|MIT-0|X11|BSD|0BSD|Apache|PSF|Python[- ]Software[- ]Foundation|Python-2\.0|CNRI-Python|ISC|Zlib|"
    r"CC0|CC-BY|Unlicense|Public[- ]Domain|BSL-1\.0|Boost|MPL|Mozilla|LGPL|GPL|AGPL|EPL|Eclipse|Artistic|HPND|"
    r"Unicode|Historical Permission|OFL|W3C|PostgreSQL|NCSA|UPL|Apple MIT)\b",
    re.IGNORECASE,
)
_NOT_OPEN = re.compile(
    r"proprietary|commercial|non-commercial|noncommercial|all rights reserved\s*$",
    re.IGNORECASE,
)
_SPDX_OPERATORS = {"AND", "OR", "WITH"}


def _spdx_ok(expression: str) -> bool:
    """Every licence id of an SPDX expression is open (one branch of an OR sufficing; WITH exceptions ignored)."""
    expr = expression.replace("(", " ").replace(")", " ")
    for branch in re.split(r"\s+OR\s+", expr):
        words = branch.split()
        ids = [w for i, w in enumerate(words) if w not in _SPDX_OPERATORS and (i == 0 or words[i - 1] != "WITH")]
        if ids and all(_OPEN_LICENCE.search(w) and not _NOT_OPEN.search(w) for w in ids):
            return True
    return False


def licence_verdict(
    expression: str | None,
    licence: str | None,
    classifiers: Sequence[str] = (),
    licence_text: str | None = None,
) -> tuple[bool, str | None, str]:
    """(usable, licence as recorded, reason) for a source's licence metadata.

    Args:
      expression: `License-Expression` (SPDX) or a Cargo `license`, authoritative when present.
      licence: the free-text `License` field (first line is used).
      classifiers: `License :: ...` trove classifiers.
      licence_text: the start of a bundled licence file, used when nothing else says anything.
    """
    if expression and expression.strip():
        expression = expression.strip()
        ok = _spdx_ok(expression)
        return (
            ok,
            expression,
            "SPDX expression of open licences" if ok else f"licence {expression!r} not recognised as open",
        )
    first = (licence or "").strip().splitlines()[0][:200] if (licence or "").strip() else ""
    texts = [t for t in [first, *classifiers] if t]
    recorded = "; ".join(texts) or None
    if any(_NOT_OPEN.search(t) for t in texts):
        return False, recorded, "licence metadata says proprietary/commercial"
    if any(_OPEN_LICENCE.search(t) for t in texts):
        return True, recorded, "open licence in metadata"
    if licence_text:
        head = " ".join(licence_text.split())[:400]
        m = _OPEN_LICENCE.search(head)
        if m and not _NOT_OPEN.search(head):
            return (
                True,
                recorded or f"licence file: {m.group(0)}",
                "open licence named in the bundled licence file",
            )
    if recorded:
        return False, recorded, f"licence {recorded!r} not recognised as open"
    return False, None, "no licence in the metadata"
