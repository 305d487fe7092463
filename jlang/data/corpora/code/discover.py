"""Where source files come from on this machine: `discover_sources`.

Sources are installed distributions (`*.dist-info` in site-packages: their RECORD lists their files, their
METADATA their licence), the Python standard library (PSF-2.0; `test/`, `tests/` and `site-packages/`
skipped), Python's include dir (PSF-2.0), each crate in a Cargo registry directory (licence from its
`Cargo.toml`), and directories you name with a licence. Sources whose licence is not recognised as open
are kept, marked unusable, so that the manifest can list them with the reason.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import os
import platform
import re
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from jlang.data.corpora.code.languages import CodeCorpusError, has_code_extension
from jlang.data.corpora.code.licences import licence_verdict

__all__ = [
    "DEFAULT_CARGO_REGISTRY",
    "CodeSource",
    "DirectorySpec",
    "default_site_dirs",
    "discover_sources",
]

DEFAULT_CARGO_REGISTRY = "/usr/share/cargo/registry"  # Debian's librust-*-dev packages


@dataclass(frozen=True)
class DirectorySpec:
    """A directory of source files to include, with the provenance the manifest needs."""

    path: str
    name: str
    licence: str
    version: str | None = None


@dataclass
class CodeSource:
    """One place source files come from.

    Attributes:
      name: distribution / crate name, `python-stdlib`, `python-include`, or the directory's name.
      kind: "distribution" | "stdlib" | "python-include" | "cargo" | "directory".
      root: files are `root / path`.
      files: candidate paths (POSIX, relative to `root`) with an extension of `EXTENSIONS`.
    """

    name: str
    kind: str
    version: str | None
    licence: str | None
    usable: bool
    reason: str
    root: Path
    files: list[str] = field(default_factory=list)


def _normalise_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _walk(root: Path, skip_dirs: frozenset[str] = frozenset()) -> list[str]:
    """Sorted POSIX paths under `root` of files with a wanted extension, skipping directories named in `skip_dirs`."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs and not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        out += [(rel / f).as_posix() for f in filenames if has_code_extension(f)]
    return sorted(out)


def default_site_dirs() -> list[Path]:
    """This interpreter's site-packages directories (purelib, platlib), deduplicated."""
    dirs: list[Path] = []
    for key in ("purelib", "platlib"):
        p = Path(sysconfig.get_paths()[key])
        if p.is_dir() and p.resolve() not in [d.resolve() for d in dirs]:
            dirs.append(p)
    return dirs


def discover_sources(
    *,
    site_dirs: Sequence[str | os.PathLike] | None = None,
    packages: Sequence[str] | None = None,
    exclude: Sequence[str] = ("jlang",),
    stdlib: bool = True,
    python_include: bool = True,
    cargo_registry: str | os.PathLike | None = DEFAULT_CARGO_REGISTRY,
    directories: Sequence[DirectorySpec | Mapping] = (),
) -> list[CodeSource]:
    """Every place source files can come from on this machine, in a stable order (see the module doc).

    Args:
      site_dirs: site-packages directories to scan for `*.dist-info` (default: this interpreter's).
      packages: only these distributions (names compared case- and `-_.`-insensitively); None: all.
      exclude: distributions never used (jlang itself by default).
      stdlib, python_include: include the standard library's `.py` files / Python's C headers.
      cargo_registry: a directory of unpacked crates (each with a Cargo.toml); None or missing: none.
      directories: extra directories, each with a name and a licence (`DirectorySpec` or a dict).
    """
    sources = installed_sources(site_dirs, packages, exclude)
    if stdlib:
        sources.append(stdlib_source())
    if python_include:
        sources.append(python_include_source())
    if cargo_registry is not None and Path(cargo_registry).is_dir():
        sources += cargo_sources(Path(cargo_registry))
    sources += [directory_source(spec) for spec in directories]
    return sources


def installed_sources(
    site_dirs: Sequence[str | os.PathLike] | None,
    packages: Sequence[str] | None = None,
    exclude: Sequence[str] = ("jlang",),
) -> list[CodeSource]:
    """The distributions installed in `site_dirs` (default: this interpreter's), each once, in name order
    per directory; only `packages` when given (all of them must be there), never those in `exclude`."""
    sources: list[CodeSource] = []
    wanted = {_normalise_name(p) for p in packages} if packages is not None else None
    excluded = {_normalise_name(p) for p in exclude}
    seen: set[str] = set()
    for site in [Path(d) for d in site_dirs] if site_dirs is not None else default_site_dirs():
        if not site.is_dir():
            raise CodeCorpusError(f"site directory {site} does not exist")
        for dist_info in sorted(site.glob("*.dist-info")):
            src = _distribution_source(dist_info)
            if src is None:
                continue
            key = _normalise_name(src.name)
            if key in seen or key in excluded or (wanted is not None and key not in wanted):
                continue
            seen.add(key)
            sources.append(src)
    if wanted is not None:
        missing = sorted(wanted - seen)
        if missing:
            raise CodeCorpusError(
                f"packages {missing} are not installed in {site_dirs or default_site_dirs()}; "
                "install them or leave them out of packages=..."
            )
    return sources


def _distribution_source(dist_info: Path) -> CodeSource | None:
    """An installed distribution with its files and licence verdict; None without a name in its METADATA."""
    dist = importlib_metadata.PathDistribution(dist_info)
    meta = dist.metadata
    name = meta.get("Name") if meta is not None else None
    if not name:
        return None
    classifiers = [c for c in (meta.get_all("Classifier") or []) if c.startswith("License")]
    usable, licence, reason = licence_verdict(
        meta.get("License-Expression"), meta.get("License"), classifiers, _bundled_licence_text(dist_info, meta)
    )
    root = dist_info.parent
    files = sorted(
        p
        for p in (str(f).replace("\\", "/") for f in (dist.files or []))
        if has_code_extension(p) and not p.startswith("../") and not p.startswith("/") and (root / p).is_file()
    )
    return CodeSource(name, "distribution", meta.get("Version"), licence, usable, reason, root, files)


def _bundled_licence_text(dist_info: Path, meta) -> str | None:
    """The start of the first licence file named by `License-File` that the distribution ships."""
    for lf in meta.get_all("License-File") or []:
        found = next((c for c in (dist_info / "licenses" / lf, dist_info / lf) if c.is_file()), None)
        text = found.read_text(encoding="utf-8", errors="replace")[:2000] if found else ""
        if text:  # an empty file says nothing: try the next one
            return text
    return None


def stdlib_source() -> CodeSource:
    """The `.py` files of the Python standard library (its tests and site-packages left out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = frozenset({"site-packages", "dist-packages", "test", "tests", "__pycache__"})
    files = [f for f in _walk(root, skip) if f.endswith(".py")]
    python = platform.python_version()
    return CodeSource(
        "python-stdlib", "stdlib", python, "PSF-2.0", True, "the Python standard library (PSF licence)", root, files
    )


def python_include_source() -> CodeSource:
    """CPython's C headers."""
    root = Path(sysconfig.get_paths()["include"])
    files = [f for f in _walk(root) if f.endswith(".h")] if root.is_dir() else []
    python = platform.python_version()
    return CodeSource(
        "python-include", "python-include", python, "PSF-2.0", True, "CPython's C headers (PSF licence)", root, files
    )


def cargo_sources(registry: Path) -> list[CodeSource]:
    """Every crate (a directory with a readable Cargo.toml) of a Cargo registry directory, in name order."""
    crates = (_cargo_source(crate_dir) for crate_dir in sorted(p for p in registry.iterdir() if p.is_dir()))
    return [src for src in crates if src is not None]


def _cargo_source(crate_dir: Path) -> CodeSource | None:
    """A crate's sources with the licence of its Cargo.toml; None without a readable Cargo.toml."""
    manifest = crate_dir / "Cargo.toml"
    if not manifest.is_file():
        return None
    try:
        package = tomllib.loads(manifest.read_text(encoding="utf-8")).get("package", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    licence = package.get("license") if isinstance(package.get("license"), str) else None
    usable, licence, reason = licence_verdict(licence, None)
    name = str(package.get("name") or crate_dir.name)
    version = package.get("version") if isinstance(package.get("version"), str) else None
    files = _walk(crate_dir, frozenset({"target", "debian"}))
    return CodeSource(name, "cargo", version, licence, usable, reason, crate_dir, files)


def directory_source(spec: DirectorySpec | Mapping) -> CodeSource:
    """A directory named by the user, with the licence they give."""
    spec = spec if isinstance(spec, DirectorySpec) else DirectorySpec(**dict(spec))
    root = Path(spec.path)
    if not root.is_dir():
        raise CodeCorpusError(f"directory source {root} does not exist")
    usable, licence, reason = licence_verdict(spec.licence, None)
    return CodeSource(spec.name, "directory", spec.version, licence, usable, reason, root, _walk(root))
