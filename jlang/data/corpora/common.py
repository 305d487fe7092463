"""What every corpus builder shares: the hash split, the file formats, the manifest and the cache directory.

Each builder writes `{out}/train/…`, `{out}/heldout/…` and `{out}/manifest.json`. A cached corpus is
built into a temporary sibling directory renamed into place only when complete (`ensure_built`), so
that a killed build never leaves a half corpus that looks done.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from tqdm.auto import tqdm

from jlang import __version__
from jlang.io.atomic import atomic_directory

__all__ = [
    "corpora_cache_dir",
    "ensure_built",
    "heldout_fraction_of",
    "manifest_header",
    "read_manifest",
    "sha256_hex",
    "tally",
    "with_progress",
    "write_jsonl",
    "write_lines",
    "write_manifest",
]

MANIFEST = "manifest.json"

T = TypeVar("T")


def sha256_hex(text: str) -> str:
    """The sha256 of the UTF-8 text, as 64 hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def heldout_fraction_of(text: str) -> float:
    """Map a text to [0, 1) by sha256 (stable across runs, machines and versions); held out when below the
    held-out fraction."""
    return int(sha256_hex(text)[:16], 16) / 2.0**64


def tally(counts: dict[str, int], reason: str) -> None:
    """Count one more item under `reason` (the per-reason rejection counts of the manifests)."""
    counts[reason] = counts.get(reason, 0) + 1


def with_progress(items: Sequence[T], progress: bool, desc: str, unit: str) -> Iterable[T]:
    """`items`, behind a tqdm bar when `progress` is set."""
    return tqdm(items, desc=desc, unit=unit) if progress else items


def write_lines(path: Path, lines: Iterable[str]) -> None:
    """One line of text per item, `\\n`-terminated, UTF-8 (parent directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def write_jsonl(path: Path, rows: Iterable[Mapping]) -> None:
    """One JSON object per line, non-ASCII kept as it is (parent directories created)."""
    write_lines(path, (json.dumps(row, ensure_ascii=False) for row in rows))


def manifest_header(
    name: str,
    format_version: int,
    languages: Sequence[str],
    requested: Sequence[str],
    dropped: Mapping[str, Mapping],
    counts: Mapping[str, Mapping],
    unit: str,
) -> dict:
    """The fields a builder's manifest opens with: the corpus, the versions, the languages kept (in `languages`)
    and dropped, the counts per language (`train_{unit}`, `heldout_{unit}`, ...) and a one-line summary."""
    return {
        "name": f"jlang-{name}",
        "format_version": format_version,
        "jlang_version": __version__,
        "languages": languages,
        "requested_languages": requested,
        "dropped": dropped,
        "counts": counts,
        "summary": ", ".join(
            f"{lang}: {counts[lang][f'train_{unit}']} train / {counts[lang][f'heldout_{unit}']} held-out {unit}"
            for lang in languages
        ),
    }


def write_manifest(out: Path, manifest: Mapping) -> None:
    """`{out}/manifest.json`, indented for reading."""
    with open(out / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=2)
        f.write("\n")


def read_manifest(root: str | os.PathLike) -> dict:
    """The manifest of the corpus at `root`."""
    return json.loads((Path(root) / MANIFEST).read_text(encoding="utf-8"))


def corpora_cache_dir() -> Path:
    """Where built corpora are cached: `$JLANG_CACHE_DIR/corpora`, else `~/.cache/jlang/corpora`.

    `$XDG_CACHE_HOME/jlang` replaces `~/.cache/jlang` when set.
    """
    root = os.environ.get("JLANG_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "jlang"
    return base / "corpora"


def ensure_built(
    target: Path,
    build: Callable[[Path], object],
    is_current: Callable[[], bool] | None = None,
) -> Path:
    """`target`, built by `build(directory)` unless it holds a manifest (and `is_current()` says it still fits).

    The build goes to a temporary sibling directory that is renamed into place only when complete.
    """
    if (target / MANIFEST).exists() and (is_current is None or is_current()):
        return target
    with atomic_directory(target) as tmp:
        build(tmp)
    return target
