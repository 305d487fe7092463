"""A small *demonstration* culture corpus: culture-specific text from Faker's locale providers.

The culture-neuron study (Namazifard & Galke; methods.md §6) uses MUREL, 85M tokens
of proverbs, idioms, survey items and literature, each culture's text written in
its own language. That corpus is not packaged anywhere jlang can install it from,
so users bring their own (`Corpus.from_dir`: one `{culture}.txt` per culture).

To run the study end to end without it, jlang builds a demonstration set from the
locale data that ships inside the PyPI package **Faker** (MIT; installed with
jlang's `corpus` extra, through django-oscar -> factory-boy). For each culture, named
by its Faker locale (`de_DE`, `zh_CN`, `en_GB`, ...), a line is one made-up record
in that locale's language and conventions:

    {person name}, {job title}, {company}, {postal address}

e.g. `Nurten Linke-Benthin, Fleischer, Neureuther, Klemtstr. 3824, 94892 Burg`.
The names, companies, street, city and region names and address formats come from
Faker's per-locale word lists (name frequency lists, real town and region names),
so the text is about that culture and written in its language; several cultures
can share a language (en_US, en_GB). Fields whose letters are mostly outside the
language's script are dropped (some locales fall back to English job titles).

This is **not** the paper's data, nor real-world culture text: it is structured,
synthetic text with culture-specific entities, enough to run and check the method
(a culture's LAPE neurons, compound/pure/generic masks, ΔPPL matrices), not to
reproduce the paper's findings. Faker's lists change between versions: the version
used is recorded in `manifest.json`.

Layout (as the default corpus): `{dir}/train/{culture}.txt`, `{dir}/heldout/{culture}.txt`,
`{dir}/manifest.json`; cached under `$JLANG_CACHE_DIR/corpora/` (or
`~/.cache/jlang/corpora/`), built once, atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jlang.data.corpora.common import (
    corpora_cache_dir,
    ensure_built,
    read_manifest,
    sha256_hex,
    write_lines,
    write_manifest,
)
from jlang.data.langinfo import script_of, text_script_share
from jlang.data.sources import Corpus

__all__ = [
    "DEFAULT_CULTURES",
    "FIELDS",
    "CultureCorpusError",
    "CultureSettings",
    "build_culture_corpus",
    "culture_corpus",
    "culture_corpus_dir",
    "culture_languages",
    "ensure_culture_corpus",
]

NAME = "culture-faker-v1"
# culture (Faker locale) -> language code. en_US/en_GB: two cultures written in one language.
DEFAULT_CULTURES: dict[str, str] = {
    "en_US": "en",
    "en_GB": "en",
    "de_DE": "de",
    "ru_RU": "ru",
    "zh_CN": "zh",
    "ja_JP": "ja",
}
FIELDS: tuple[str, ...] = ("name", "job", "company", "address")
DEFAULT_TRAIN_LINES = 400
DEFAULT_HELDOUT_LINES = 60


class CultureCorpusError(RuntimeError):
    """The demonstration corpus cannot be built as asked (Faker missing, unknown locale, ...)."""


@dataclass(frozen=True)
class CultureSettings:
    """How many lines each culture gets, and the seed of Faker's draws (`build_culture_corpus`)."""

    train_lines: int = DEFAULT_TRAIN_LINES
    heldout_lines: int = DEFAULT_HELDOUT_LINES
    seed: int = 0


def culture_languages(
    cultures: Mapping[str, str] | Sequence[str] | None = None,
) -> dict[str, str]:
    """culture -> language code: the given mapping, or locales mapped to their language part (`de_DE` -> `de`)."""
    if cultures is None:
        return dict(DEFAULT_CULTURES)
    if isinstance(cultures, Mapping):
        return {str(c): str(l) for c, l in cultures.items()}
    return {str(c): str(c).replace("-", "_").split("_")[0].lower() for c in cultures}


def _separator(language: str) -> str:
    return "，" if language in ("zh", "ja") else ", "


def _faker(locale: str, seed: int):
    try:
        import faker  # optional (the `corpus` extra): only the demonstration corpus needs it
    except ImportError:
        raise CultureCorpusError(
            "the demonstration culture corpus needs the Faker package (installed with `pip install -e .[corpus]`, "
            "or `pip install Faker`); or bring your own culture corpus: a directory of {culture}.txt files"
        ) from None
    if locale not in faker.config.AVAILABLE_LOCALES:
        raise CultureCorpusError(f"Faker has no locale {locale!r}; available: {sorted(faker.config.AVAILABLE_LOCALES)}")
    fake = faker.Faker(locale)
    fake.seed_instance(seed)
    return fake, faker.VERSION


def culture_lines(locale: str, language: str, n: int, *, seed: int = 0, min_script_share: float = 0.5) -> list[str]:
    """`n` distinct record lines of culture `locale` in `language` (see the module doc)."""
    fake, _ = _faker(locale, seed)
    script = script_of(language)
    sep = _separator(language)
    lines: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(lines) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise CultureCorpusError(f"{locale}: could only make {len(lines)} distinct lines of {n}")
        parts = []
        for f in FIELDS:
            raw = str(getattr(fake, f)())
            value = sep.join(x.strip() for x in raw.split("\n") if x.strip())  # multi-line addresses -> one line
            if script is None or text_script_share(value, script) >= min_script_share:
                parts.append(" ".join(value.split()))
        line = sep.join(parts)
        if len(parts) >= 2 and line not in seen:
            seen.add(line)
            lines.append(line)
    return lines


def build_culture_corpus(
    out_dir: str | os.PathLike,
    cultures: Mapping[str, str] | Sequence[str] | None = None,
    *,
    train_lines: int = DEFAULT_TRAIN_LINES,
    heldout_lines: int = DEFAULT_HELDOUT_LINES,
    seed: int = 0,
) -> dict:
    """Write the demonstration culture corpus to `out_dir` (train/, heldout/, manifest.json); returns the manifest."""
    mapping = culture_languages(cultures)
    if train_lines < 1 or heldout_lines < 1:
        raise CultureCorpusError("train_lines and heldout_lines must be positive")
    out = Path(out_dir)
    counts, version = {}, None
    for culture, lang in mapping.items():
        _, version = _faker(culture, seed)
        lines = culture_lines(culture, lang, train_lines + heldout_lines, seed=seed)
        train, held = lines[:train_lines], lines[train_lines:]
        write_lines(out / "train" / f"{culture}.txt", train)
        write_lines(out / "heldout" / f"{culture}.txt", held)
        counts[culture] = {
            "language": lang,
            "train_lines": len(train),
            "heldout_lines": len(held),
            "train_chars": sum(map(len, train)),
            "example": held[0],
        }
    manifest = {
        "name": f"jlang-{NAME}",
        "what": "DEMONSTRATION culture corpus: synthetic records (person name, job, company, postal address) from "
        "Faker's locale providers, each in its culture's language. Not the culture-neuron paper's MUREL data "
        "and not real-world culture text.",
        "cultures": mapping,
        "fields": list(FIELDS),
        "seed": seed,
        "faker_version": version,
        "licence": "Faker is MIT-licensed; its locale data ships inside the package",
        "counts": counts,
        "layout": {"train": "train/{culture}.txt", "heldout": "heldout/{culture}.txt"},
    }
    write_manifest(out, manifest)
    return manifest


def culture_corpus_dir(cultures: Mapping[str, str] | Sequence[str] | None = None, **settings) -> Path:
    """The cache directory of a demonstration corpus: `{cache}/corpora/culture-faker-v1[-<hash of the settings>]`.

    Args:
      cultures: as for `build_culture_corpus`.
      settings: `train_lines`, `heldout_lines`, `seed` (`CultureSettings`; defaults: the default corpus's).
    """
    mapping = culture_languages(cultures)
    chosen = CultureSettings(**settings)
    if mapping == DEFAULT_CULTURES and chosen == CultureSettings():
        return corpora_cache_dir() / NAME
    key = json.dumps([sorted(mapping.items()), chosen.train_lines, chosen.heldout_lines, chosen.seed])
    return corpora_cache_dir() / f"{NAME}-{sha256_hex(key)[:10]}"


def ensure_culture_corpus(
    cultures: Mapping[str, str] | Sequence[str] | None = None,
    *,
    path: str | os.PathLike | None = None,
    **settings,
) -> Path:
    """The demonstration corpus directory, built once (into a temporary sibling renamed into place when complete).

    Args:
      cultures: as for `build_culture_corpus`.
      path: where (default: `culture_corpus_dir(cultures, **settings)`).
      settings: `train_lines`, `heldout_lines`, `seed` (`CultureSettings`).
    """
    chosen = dataclasses.asdict(CultureSettings(**settings))
    target = Path(path) if path is not None else culture_corpus_dir(cultures, **chosen)
    return ensure_built(target, lambda tmp: build_culture_corpus(tmp, cultures, **chosen))


def culture_corpus(
    split: str = "train",
    cultures: Mapping[str, str] | Sequence[str] | None = None,
    **options,
) -> Corpus:
    """The demonstration culture corpus as a `jlang.data.Corpus` keyed by culture (built and cached on first use).

    `options`: `path` and the settings of `ensure_culture_corpus`.
    """
    root = ensure_culture_corpus(cultures, **options)
    mapping = read_manifest(root)["cultures"]
    return Corpus.from_dir(root, split=split, languages=list(mapping))
