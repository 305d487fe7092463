"""The languages of the code corpus: their names, file extensions, what to install for them, and which
language a file is.

A file's language is given by its extension (`EXTENSIONS`); a `.h` header is C++ when its text has
C++-only syntax (`namespace`, `template <`, `std::`, a class with access specifiers), otherwise C.
"""

from __future__ import annotations

import os
import re

__all__ = [
    "DEFAULT_CODE_LANGUAGES",
    "ENGLISH",
    "EXTENSIONS",
    "INSTALL_HINTS",
    "CodeCorpusError",
    "has_code_extension",
    "language_of",
    "looks_cpp",
    "suffix",
]

ENGLISH = "english"
DEFAULT_CODE_LANGUAGES: tuple[str, ...] = (
    "python",
    "c",
    "cpp",
    "javascript",
    "html",
    "css",
    "rust",
    ENGLISH,
)


# Programming language -> file extensions (lowercase). `.h` is in both C and C++: `language_of` decides.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "python": (".py",),
    "c": (".c", ".h"),
    "cpp": (".cpp", ".cc", ".cxx", ".hpp", ".hh", ".hxx", ".h"),
    "javascript": (".js", ".mjs", ".cjs"),
    "typescript": (".ts", ".tsx"),
    "html": (".html", ".htm"),
    "css": (".css",),
    "rust": (".rs",),
    "go": (".go",),
    "java": (".java",),
}

# What to install when a language has no files (for the error and the manifest).
INSTALL_HINTS: dict[str, str] = {
    "rust": "install crates' sources, e.g. `apt-get install librust-regex-dev librust-serde-dev` (Debian)",
    "cpp": "install a package that ships C++ headers, e.g. `pip install torch` (jlang[torch])",
    "javascript": "install packages with static files, e.g. `pip install 'jlang[corpus]'` (Django, Sphinx, wagtail)",
    "html": "install packages with templates, e.g. `pip install 'jlang[corpus]'` (Django, wagtail, django-oscar)",
    "css": "install packages with static files, e.g. `pip install 'jlang[corpus]'`",
    "go": "install Go sources, e.g. Debian's golang-*-dev packages (under /usr/share/gocode)",
}


class CodeCorpusError(RuntimeError):
    """The code corpus cannot be built as asked (unknown language, no files, bad source)."""


_ALL_EXTENSIONS = frozenset(e for exts in EXTENSIONS.values() for e in exts)


def suffix(path: str) -> str:
    """The file's extension, lowercase (`.py`)."""
    return os.path.splitext(path)[1].lower()


def has_code_extension(path: str) -> bool:
    """Whether the file's extension is one of a language of `EXTENSIONS`."""
    return suffix(path) in _ALL_EXTENSIONS


# C++-only syntax that a C header never has (C++ keywords inside C comments are rare enough).
_CPP_MARKERS = re.compile(
    r"^\s*namespace\s+\w+|^\s*template\s*<|\bstd::|^\s*(?:class|struct)\s+\w+[^;]*\{[^}]*\b(?:public|private|protected)\s*:"
    r"|^\s*using\s+namespace\b|\bconstexpr\b|\bnullptr\b|^\s*#include\s*<(?:vector|string|memory|iostream|map|"
    r"utility|type_traits|functional|cstdint|cstddef|array|tuple|optional)>",
    re.MULTILINE | re.DOTALL,
)


def looks_cpp(text: str) -> bool:
    """True when a header's text uses C++-only syntax."""
    return bool(_CPP_MARKERS.search(text))


def language_of(path: str, text: str | None = None) -> str | None:
    """The programming language of a file by extension (a `.h` header by content: C++ or C)."""
    ext = suffix(path)
    if ext == ".h":
        if text is None:
            return None
        return "cpp" if looks_cpp(text) else "c"
    for lang, exts in EXTENSIONS.items():
        if ext in exts:
            return lang
    return None
