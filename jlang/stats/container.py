"""Per-language activation statistics of MLP neurons: the input of every identification method.

`ActivationStats` holds, for K languages, L layers and F neurons per layer (the
`mlp.act` hook point: `a = act(W_gate x)` for gated MLPs, see DESIGN.md):

    tokens     int64   [K]        tokens counted per language (LAPE's `n`)
    over_zero  int64   [K, L, F]  tokens with a > 0 (exact integer counts)
    sum        float64 [K, L, F]  Σ a        (optional)
    sum_sq     float64 [K, L, F]  Σ a²       (optional)
    max        float   [K, L, F]  max a      (optional)

It also imports the activation files the reference code writes:

* RUCAIBox/Language-Specific-Neurons `activation.py` (LAPE, Tang et al. 2024):
  `torch.save(dict(n=int, over_zero=int32[L, I]), ...)`;
* NJUNLP/Language-Neurons-Alignment `activation.py` (ternary neurons, Zhang et al. 2025):
  `{"total_tokens": int, "over_zero": int64[L, I]}` for full texts and, separately,
  for prompts only (`prefix.activation.*`);
* d-gurgurov/Language-Neurons-Manipulation adds `average_activations` (mean a over
  all tokens, [L, I]), imported as `sum = average · n`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jlang.io import torchfile
from jlang.io.atomic import atomic_directory, output_path
from jlang.io.npz import jsonable, read_npz, write_npz

__all__ = ["ActivationStats", "StatsError"]

_FORMAT = "jlang.ActivationStats/1"
_DIR_RECORD = "stats.json"
_OPTIONAL = ("sum", "sum_sq", "max")


class StatsError(ValueError):
    """Activation statistics are malformed or inconsistent; the message says what and how to fix it."""


def _as_languages(languages: Sequence[str]) -> list[str]:
    langs = [str(x) for x in languages]
    if not langs:
        raise StatsError("languages is empty: statistics need at least one language")
    dupes = sorted({x for x in langs if langs.count(x) > 1})
    if dupes:
        raise StatsError(f"duplicate languages {dupes}; each language code must appear once")
    return langs


def _as_counts(name: str, x: Any, ndim: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            pass  # whole-valued floats (e.g. a count saved as float) are accepted
        elif arr.size:
            raise StatsError(f"{name} must hold integer counts, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise StatsError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise StatsError(f"{name} has negative counts (min {arr.min()}); counts must be >= 0")
    return arr


@dataclass(eq=False)
class ActivationStats:
    """Per-language activation statistics `[K languages, L layers, F neurons]` (see module docstring).

    Construct directly from arrays, with `from_lape_files`, or with `load`.
    Shapes and dtypes are validated and normalised on construction.
    """

    languages: list[str]
    tokens: np.ndarray  # int64 [K]
    over_zero: np.ndarray  # int64 [K, L, F]
    sum: np.ndarray | None = None  # float64 [K, L, F]
    sum_sq: np.ndarray | None = None  # float64 [K, L, F]
    max: np.ndarray | None = None  # float32/float64 [K, L, F]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.languages = _as_languages(self.languages)
        k = len(self.languages)
        self.tokens = _as_counts("tokens", self.tokens, 1)
        self.over_zero = _as_counts("over_zero", self.over_zero, 3)
        if self.tokens.shape != (k,):
            raise StatsError(f"tokens has shape {self.tokens.shape}, expected ({k},) for languages {self.languages}")
        if self.over_zero.shape[0] != k:
            raise StatsError(
                f"over_zero has {self.over_zero.shape[0]} languages on axis 0 but {k} language codes were given "
                f"({self.languages}); over_zero must be [K, L, F]"
            )
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is None:
                continue
            arr = np.asarray(value)
            if arr.dtype.kind != "f":
                raise StatsError(f"{name} must be floating point, got dtype {arr.dtype}")
            if arr.shape != self.over_zero.shape:
                raise StatsError(f"{name} has shape {arr.shape}, expected {self.over_zero.shape} like over_zero")
            if name != "max":
                arr = arr.astype(np.float64, copy=False)
            elif arr.dtype not in (np.float32, np.float64):
                arr = arr.astype(np.float32, copy=False)
            setattr(self, name, arr)
        if not isinstance(self.meta, dict):
            raise StatsError(f"meta must be a dict, got {type(self.meta).__name__}")

    # -- shape ---------------------------------------------------------------------------------

    @property
    def num_languages(self) -> int:
        """K."""
        return len(self.languages)

    @property
    def num_layers(self) -> int:
        """L."""
        return int(self.over_zero.shape[1])

    @property
    def num_neurons(self) -> int:
        """F, neurons per layer (the MLP intermediate size for `mlp.act`)."""
        return int(self.over_zero.shape[2])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(K, L, F)."""
        return tuple(int(n) for n in self.over_zero.shape)  # type: ignore[return-value]

    def __repr__(self) -> str:
        k, l, f = self.shape
        extra = [n for n in _OPTIONAL if getattr(self, n) is not None]
        return (
            f"ActivationStats(languages={self.languages}, K={k}, L={l}, F={f}, "
            f"tokens={self.tokens.tolist()}, optional={extra}, meta_keys={sorted(self.meta)})"
        )

    # -- derived quantities ----------------------------------------------------------------------

    def _check_tokens(self) -> None:
        empty = [lang for lang, n in zip(self.languages, self.tokens) if n == 0]
        if empty:
            raise StatsError(f"languages {empty} have 0 tokens; collect statistics on a non-empty corpus for them")

    @property
    def probs(self) -> np.ndarray:
        """Activation probability `over_zero / tokens`, float64 [K, L, F] (LAPE's p)."""
        self._check_tokens()
        return self.over_zero / self.tokens[:, None, None].astype(np.float64)

    @property
    def mean(self) -> np.ndarray:
        """Mean activation `sum / tokens`, float64 [K, L, F]."""
        if self.sum is None:
            raise StatsError("these statistics have no `sum`; re-collect them with sums to get means")
        self._check_tokens()
        return self.sum / self.tokens[:, None, None]

    # -- transformations ---------------------------------------------------------------------------

    def index(self, language: str) -> int:
        """Position of `language` on axis 0."""
        try:
            return self.languages.index(language)
        except ValueError:
            raise StatsError(f"unknown language {language!r}; these statistics hold {self.languages}") from None

    def select(self, languages: Sequence[str]) -> ActivationStats:
        """Statistics restricted to (and reordered as) `languages`."""
        idx = [self.index(x) for x in _as_languages(languages)]
        pick = lambda a: None if a is None else a[idx]
        return ActivationStats(
            languages=[self.languages[i] for i in idx],
            tokens=self.tokens[idx],
            over_zero=self.over_zero[idx],
            sum=pick(self.sum),
            sum_sq=pick(self.sum_sq),
            max=pick(self.max),
            meta=dict(self.meta),
        )

    def subtract(self, prompt_stats: ActivationStats) -> ActivationStats:
        """Response-only statistics: full-text minus prompt-only counts, clamped at 0.

        This is how NJUNLP `analysis.py` (`Neuron_Prob._load_and_build`) isolates answer
        tokens: `over_zero = clamp(full - prefix, 0)`, `tokens = full - prefix`. The
        clamp matters: the two passes are separate forward runs, and on the MGSM
        fixture a few hundred neurons count more prompt activations than full ones.
        Note the clamped counts can then exceed the response token count (p > 1).
        `sum`/`sum_sq` are subtracted when both sides have them; `max` cannot be and is dropped.
        """
        if prompt_stats.languages != self.languages:
            raise StatsError(
                f"prompt statistics have languages {prompt_stats.languages}, full ones {self.languages}; "
                "use .select() to align them"
            )
        if prompt_stats.over_zero.shape != self.over_zero.shape:
            raise StatsError(f"prompt over_zero shape {prompt_stats.over_zero.shape} != full {self.over_zero.shape}")
        tokens = self.tokens - prompt_stats.tokens
        bad = [lang for lang, n in zip(self.languages, tokens) if n < 0]
        if bad:
            raise StatsError(
                f"prompt statistics count more tokens than full ones for {bad}; were the arguments swapped?"
            )
        diff = lambda a, b: None if a is None or b is None else a - b
        meta = dict(self.meta)
        meta["derived"] = "response = full - prompt (over_zero clamped at 0)"
        meta["full_tokens"] = self.tokens.tolist()
        meta["prompt_tokens"] = prompt_stats.tokens.tolist()
        return ActivationStats(
            languages=list(self.languages),
            tokens=tokens,
            over_zero=np.clip(self.over_zero - prompt_stats.over_zero, 0, None),
            sum=diff(self.sum, prompt_stats.sum),
            sum_sq=diff(self.sum_sq, prompt_stats.sum_sq),
            max=None,
            meta=meta,
        )

    # -- persistence -------------------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"tokens": self.tokens, "over_zero": self.over_zero}
        arrays.update({n: getattr(self, n) for n in _OPTIONAL if getattr(self, n) is not None})
        return arrays

    def save(self, path: str | os.PathLike) -> Path:
        """Save atomically: a `.npz` file if `path` ends in `.npz`, else a directory of `.npy` files.

        The directory form (`stats.json` + one `.npy` per array) can be memory-mapped
        by `load(path, mmap=True)`. Either way a crash mid-write leaves the previous
        version (or nothing), never a partial file that loads.
        """
        p = output_path(path)
        json.dumps(jsonable(self.meta))  # fail before writing anything
        if p.suffix == ".npz":
            write_npz(p, format=_FORMAT, languages=self.languages, arrays=self._arrays(), meta=self.meta)
            return p
        with atomic_directory(p) as tmp:
            for name, arr in self._arrays().items():
                np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
            record = {
                "format": _FORMAT,
                "languages": self.languages,
                "arrays": sorted(self._arrays()),
                "meta": jsonable(self.meta),
            }
            (tmp / _DIR_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = False) -> ActivationStats:
        """Load statistics written by `save` (a `.npz` file or a directory)."""
        p = Path(path)
        if p.is_dir():
            rec_path = p / _DIR_RECORD
            if not rec_path.is_file():
                raise StatsError(f"{p} is not a saved ActivationStats directory (no {_DIR_RECORD})")
            record = json.loads(rec_path.read_text())
            if not str(record.get("format", "")).startswith("jlang.ActivationStats/"):
                raise StatsError(f"{rec_path}: unexpected format {record.get('format')!r}")
            arrays = {
                name: np.load(p / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
                for name in record["arrays"]
            }
            return cls(languages=record["languages"], meta=record.get("meta", {}), **arrays)
        try:
            arrays, languages, meta = read_npz(p, format_prefix="jlang.ActivationStats/")
        except ValueError as e:
            raise StatsError(str(e)) from None
        return cls(languages=languages, meta=meta, **arrays)

    # -- reference-code activation files -------------------------------------------------------------

    @classmethod
    def from_lape_files(
        cls, paths: Mapping[str, str | os.PathLike], *, meta: Mapping[str, Any] | None = None
    ) -> ActivationStats:
        """Import per-language activation files written by the reference code (`torch.save` dicts).

        Args:
            paths: `{language: file}`, in the language order wanted on axis 0 (LAPE:
                en zh fr es vi id ja; NJUNLP: en ru es fr de zh ja bn th sw).
            meta: extra metadata (model, corpus, ...) merged into `.meta`.

        Accepted keys per file: `over_zero` [L, I] and the token count as `n` (LAPE)
        or `total_tokens` (NJUNLP); optional `average_activations` [L, I] (mean a over
        the same tokens) becomes `sum = average · n`. Other keys are listed in
        `meta["ignored_keys"]`. Files are read with jlang's restricted reader: no
        torch needed, no pickle code executed.
        """
        if not paths:
            raise StatsError("no activation files given")
        languages = _as_languages(list(paths))
        tokens, over_zero, sums = [], [], []
        ignored: dict[str, list[str]] = {}
        styles = set()
        shape = None
        for lang in languages:
            path = Path(paths[lang])
            obj = torchfile.load(path)
            if not isinstance(obj, Mapping):
                raise StatsError(
                    f"{path}: expected a dict with 'over_zero' and 'n'/'total_tokens', got {type(obj).__name__}"
                )
            if "over_zero" not in obj:
                raise StatsError(f"{path}: no 'over_zero' entry (keys: {sorted(map(str, obj))})")
            if "n" in obj:
                n, styles = obj["n"], styles | {"lape"}
            elif "total_tokens" in obj:
                n, styles = obj["total_tokens"], styles | {"njunlp"}
            else:
                raise StatsError(
                    f"{path}: no token count: expected key 'n' (LAPE) or 'total_tokens' (NJUNLP); "
                    f"keys: {sorted(map(str, obj))}"
                )
            n = int(np.asarray(n).reshape(()))
            oz = _as_counts(f"{path}: over_zero", obj["over_zero"], 2)
            if shape is None:
                shape = oz.shape
            elif oz.shape != shape:
                raise StatsError(
                    f"{path}: over_zero has shape {oz.shape} but {languages[0]}'s has {shape}; all languages must come "
                    "from the same model (same layers x neurons)"
                )
            if oz.size and oz.max() > n:
                raise StatsError(f"{path}: a neuron fires on {oz.max()} tokens but the file counts only n={n} tokens")
            avg = obj.get("average_activations")
            if avg is not None:
                avg = np.asarray(avg, dtype=np.float64)
                if avg.shape != shape:
                    raise StatsError(f"{path}: average_activations has shape {avg.shape}, expected {shape}")
                sums.append(avg * n)
            ignored_here = sorted(
                str(k) for k in obj if k not in ("n", "total_tokens", "over_zero", "average_activations")
            )
            if ignored_here:
                ignored[lang] = ignored_here
            tokens.append(n)
            over_zero.append(oz)
        if sums and len(sums) != len(languages):
            raise StatsError("only some files have 'average_activations'; provide it for all languages or none")
        info: dict[str, Any] = {
            "hook_point": "mlp.act",
            "source": "lape-files",
            "file_format": sorted(styles),
            "files": {lang: str(paths[lang]) for lang in languages},
        }
        if ignored:
            info["ignored_keys"] = ignored
        info.update(dict(meta or {}))
        return cls(
            languages=languages,
            tokens=np.array(tokens, dtype=np.int64),
            over_zero=np.stack(over_zero),
            sum=np.stack(sums) if sums else None,
            meta=info,
        )

    def to_lape_files(
        self, directory: str | os.PathLike, *, style: str = "lape", pattern: str = "activation.{lang}.pt"
    ) -> list[Path]:
        """Write one `torch.save` dict per language, as the reference code does, for PyTorch users.

        style "lape" writes `{"n", "over_zero" int32}` (RUCAIBox; int32 like the
        original, refused if a count exceeds 2^31-1); "njunlp" writes
        `{"total_tokens", "over_zero" int64}`. If `sum` is present,
        `average_activations = sum / tokens` (float32) is added.
        """
        if style not in ("lape", "njunlp"):
            raise StatsError(f"unknown style {style!r}; use 'lape' or 'njunlp'")
        out = []
        for k, lang in enumerate(self.languages):
            oz = self.over_zero[k]
            if style == "lape":
                if oz.size and oz.max() > np.iinfo(np.int32).max:
                    raise StatsError(f"{lang}: counts exceed int32; use style='njunlp' (int64)")
                obj: dict[str, Any] = {"n": int(self.tokens[k]), "over_zero": oz.astype(np.int32)}
            else:
                obj = {"total_tokens": int(self.tokens[k]), "over_zero": oz.astype(np.int64)}
            if self.sum is not None and self.tokens[k] > 0:
                obj["average_activations"] = (self.sum[k] / self.tokens[k]).astype(np.float32)
            path = Path(directory) / pattern.format(lang=lang)
            torchfile.save(path, obj)
            out.append(path)
        return out


def check_stats_fit_model(stats: ActivationStats, model) -> None:
    """Statistics must come from this model: same layers x neurons (and the same name when recorded)."""
    if (stats.num_layers, stats.num_neurons) != (model.num_layers, model.num_neurons):
        raise ValueError(
            f"statistics have {stats.num_layers} layers x {stats.num_neurons} neurons, but model {model.name} has "
            f"{model.num_layers} x {model.num_neurons}: they come from another model"
        )
    recorded = stats.meta.get("model")
    if recorded and recorded != model.name:
        raise ValueError(f"statistics were collected on model {recorded!r}, not {model.name!r}")
