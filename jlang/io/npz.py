"""`.npz` files that NumPy alone opens (`np.load(path)`, no pickle) with a JSON metadata record.

Layout used by jlang's containers (`ActivationStats`, `NeuronMasks`)::

    format     0-d unicode array, e.g. "jlang.NeuronMasks/1"
    meta       0-d unicode array holding a JSON object
    languages  1-D unicode array
    <arrays>   plain numeric / bool arrays

Writes are atomic (temporary file + `os.replace`), so a killed run never leaves
a truncated file behind that would load. On several JAX processes only process 0
writes (`jlang.io.atomic.writes_results`).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jlang.io.atomic import atomic_file, writes_results


def jsonable(obj: Any) -> Any:
    """A JSON-serialisable copy of `obj`: NumPy scalars/arrays -> Python, tuples/sets -> lists, paths -> str.

    Non-finite floats become the strings "nan", "inf", "-inf" so the file is strict JSON.
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj) if isinstance(obj, (set, frozenset)) else obj
        return [jsonable(v) for v in items]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON-serialisable: {obj!r}")


def write_npz(
    path: str | os.PathLike,
    *,
    format: str,
    languages: list[str],
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    compressed: bool = False,
) -> None:
    """Write the jlang `.npz` layout atomically (see module docstring); on process 0 only of a multi-process run."""
    payload = {
        "format": np.array(format),
        "meta": np.array(json.dumps(jsonable(dict(meta)), sort_keys=True)),
        "languages": np.array([str(x) for x in languages], dtype=str),
        **{k: np.asarray(v) for k, v in arrays.items()},
    }
    if not writes_results():  # bad metadata still fails on every process, above
        return
    writer = np.savez_compressed if compressed else np.savez
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: NumPy does not append ".npz" to the name
            writer(f, **payload)


def read_npz(path: str | os.PathLike, *, format_prefix: str) -> tuple[dict[str, np.ndarray], list[str], dict]:
    """Read a jlang `.npz` written by `write_npz`; returns (arrays, languages, meta).

    Raises ValueError naming the file when it is not a jlang file of the expected kind.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{p}: not a readable .npz file ({e})") from None
    fmt = str(data.pop("format", ""))
    if not fmt.startswith(format_prefix):
        raise ValueError(f"{p}: expected a '{format_prefix}' file, found format {fmt!r}")
    if "languages" not in data or "meta" not in data:
        raise ValueError(f"{p}: missing 'languages' or 'meta' record")
    languages = [str(x) for x in data.pop("languages").tolist()]
    meta = json.loads(str(data.pop("meta")))
    return data, languages, meta
