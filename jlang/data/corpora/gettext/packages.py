"""Where catalogs come from: installed distributions, directories and wheels, with their provenance.

Well-known Python projects (Django, Wagtail, Sphinx, django-oscar, django CMS, django-allauth, Trac) ship
the translations of their user-facing English messages as gettext catalogs inside their wheels; installing
them gives real, human-written, parallel multilingual text with no download beyond PyPI.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import os
import re
import zipfile
from dataclasses import dataclass, field
from email.parser import BytesParser
from pathlib import Path

__all__ = [
    "DEFAULT_PACKAGES",
    "PIP_REQUIREMENTS",
    "CatalogFile",
    "CorpusBuildError",
    "SourceInfo",
    "SourceReader",
    "open_source",
]

# Distribution names, in priority order (the first package's translation of a
# held-out English message is the one in parallel/heldout.jsonl).
DEFAULT_PACKAGES: tuple[str, ...] = (
    "Django",
    "wagtail",
    "Sphinx",
    "django-oscar",
    "django-cms",
    "django-allauth",
    "Trac",
)

# What pyproject.toml needs for the default corpus (v1 was built from Django 5.2.19, wagtail 8.0.1,
# Sphinx 9.0.4, django-oscar 4.2.1, django-cms 5.1.3, django-allauth 65.21.1, Trac 1.6).
PIP_REQUIREMENTS: tuple[str, ...] = (
    "polib>=1.2",
    "Django>=5.2,<6.2",
    "wagtail>=7.0",
    "Sphinx>=8.0",
    "django-oscar>=4.0",
    "django-cms>=5.0",
    "django-allauth>=65.0",
    "Trac>=1.6",
)


class CorpusBuildError(RuntimeError):
    """The corpus cannot be built as asked (missing package, no text for a language, ...)."""


@dataclass(frozen=True)
class CatalogFile:
    """One catalog inside a source: where it is, which locale, and which catalog it translates."""

    source: str  # distribution name or path given by the user
    path: str  # path inside the source (for reading and for provenance)
    locale: str  # the locale directory name as found
    catalog: str  # path with the locale replaced by `{}` and no extension: same key across locales
    kind: str  # "po" or "mo"


@dataclass
class SourceInfo:
    """Provenance of one package or path that catalogs were read from."""

    name: str
    version: str | None
    license: str | None
    license_classifiers: list[str]
    url: str | None
    reader: SourceReader = field(repr=False)
    files: list[CatalogFile] = field(default_factory=list)


class SourceReader:
    """Read bytes of a file inside an installed distribution, a directory or a wheel/zip."""

    def __init__(self, root: Path | None = None, archive: Path | None = None, dist=None):
        self.root, self.archive, self.dist = root, archive, dist
        self._zip: zipfile.ZipFile | None = None

    def names(self) -> list[str]:
        if self.dist is not None:
            return sorted(str(f) for f in (self.dist.files or []))
        if self.archive is not None:
            return sorted(self._zipfile().namelist())
        assert self.root is not None
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def read(self, name: str) -> bytes:
        if self.dist is not None:
            return Path(self.dist.locate_file(name)).read_bytes()
        if self.archive is not None:
            return self._zipfile().read(name)
        assert self.root is not None
        return (self.root / name).read_bytes()

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.archive)
        return self._zip


def _license_of(meta) -> tuple[str | None, list[str]]:
    classifiers = [c for c in (meta.get_all("Classifier") or []) if c.startswith("License")]
    lic = meta.get("License-Expression") or meta.get("License")
    if lic:
        lic = lic.strip().splitlines()[0][:200]
    return lic or None, classifiers


def _url_of(meta) -> str | None:
    if meta.get("Home-page"):
        return meta.get("Home-page")
    for entry in meta.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("homepage", "home", "source", "code", "repository"):
            return url.strip()
    return None


def open_source(spec: str | os.PathLike) -> SourceInfo:
    """Resolve a package name (installed distribution), a directory, or a wheel/zip path into a source.

    Raises CorpusBuildError naming the pip requirement when a distribution is not installed.
    """
    path = Path(spec)
    if isinstance(spec, os.PathLike) or path.exists() or os.sep in str(spec):
        if path.is_dir():
            return SourceInfo(str(spec), None, None, [], None, SourceReader(root=path))
        if path.is_file() and zipfile.is_zipfile(path):
            return _open_archive(str(spec), path)
        raise CorpusBuildError(f"catalog source {spec!r} is neither a directory nor a wheel/zip file")
    return _open_distribution(str(spec))


def _open_archive(name: str, path: Path) -> SourceInfo:
    """A wheel or zip file; its provenance from the METADATA of its `.dist-info` when it has one."""
    reader = SourceReader(archive=path)
    version = lic = url = None
    classifiers: list[str] = []
    meta_names = [n for n in reader.names() if n.endswith(".dist-info/METADATA")]
    if meta_names:
        meta = BytesParser().parsebytes(reader.read(meta_names[0]))
        version = meta.get("Version")
        lic, classifiers = _license_of(meta)
        url = _url_of(meta)
    return SourceInfo(name, version, lic, classifiers, url, reader)


def _open_distribution(name: str) -> SourceInfo:
    """An installed distribution, or an error naming the pip requirement to install."""
    try:
        dist = importlib_metadata.distribution(name)
    except importlib_metadata.PackageNotFoundError:
        wanted = [r for r in PIP_REQUIREMENTS if re.split(r"[<>=!~;\s\[]", r)[0].lower() == name.lower()]
        hint = wanted[0] if wanted else name
        raise CorpusBuildError(
            f"package {name!r} is not installed, so its translation catalogs cannot be read; "
            f"install it with `pip install '{hint}'` (or `pip install 'jlang[corpus]'`), or pass packages=... "
            f"without it"
        ) from None
    meta = dist.metadata
    lic, classifiers = _license_of(meta)
    return SourceInfo(meta["Name"], dist.version, lic, classifiers, _url_of(meta), SourceReader(dist=dist))
