"""Language-specific neuron masks: boolean `[K languages, L layers, F neurons]` plus metadata.

Formats:

* `.npz` (NumPy only): `masks` bool [K, L, F], `languages` unicode [K], `meta` JSON string
  (model, family, hook point, method and its parameters, corpus and token counts, jlang version).
  `np.load(path)` opens it without pickle.
* The original LAPE format (RUCAIBox/Language-Specific-Neurons `identify.py`):
  `torch.save` of `List[List[LongTensor]]`, `mask[k][l]` = sorted ascending neuron
  indices of language k in layer l. Read and written without torch
  (`jlang.io.torchfile`). The published `*.neuron.pth` files sometimes hold fewer
  than K lists: identify.py splits by `torch.bincount(lang)`, which is shorter when
  the last language(s) got no neuron; `from_lape_pt` restores them as empty masks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jlang.io import torchfile
from jlang.io.atomic import output_path
from jlang.io.npz import read_npz, write_npz
from jlang.io.report import new_figure, save_figure

__all__ = ["NeuronMasks", "MaskError", "MaskShapeError", "UnknownLanguageError"]

_FORMAT = "jlang.NeuronMasks/1"


class MaskError(ValueError):
    """A mask file or mask object is malformed; the message says what and how to fix it."""


class MaskShapeError(MaskError):
    """A mask's layers x neurons do not fit the model it is applied to."""


class UnknownLanguageError(MaskError, KeyError):
    """A language code is not among the mask's languages."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _languages(languages: Sequence[str]) -> list[str]:
    langs = [str(x) for x in languages]
    if not langs:
        raise MaskError("languages is empty")
    dupes = sorted({x for x in langs if langs.count(x) > 1})
    if dupes:
        raise MaskError(f"duplicate languages {dupes}")
    return langs


@dataclass
class NeuronMasks:
    """Boolean neuron masks per language: `masks[k, l, j]` is True if neuron j of layer l belongs to language k."""

    languages: list[str]
    masks: np.ndarray  # bool [K, L, F]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.languages = _languages(self.languages)
        m = np.asarray(self.masks)
        if m.ndim != 3:
            raise MaskError(f"masks must be [K, L, F], got shape {m.shape}")
        if m.dtype != np.bool_:
            if m.dtype.kind not in "iub" or (m.size and not np.isin(m, (0, 1)).all()):
                raise MaskError(f"masks must be boolean (or 0/1), got dtype {m.dtype}")
            m = m.astype(bool)
        if m.shape[0] != len(self.languages):
            raise MaskError(
                f"masks has {m.shape[0]} languages on axis 0 but {len(self.languages)} codes: {self.languages}"
            )
        self.masks = m
        if not isinstance(self.meta, dict):
            raise MaskError(f"meta must be a dict, got {type(self.meta).__name__}")

    # -- shape and access ----------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return int(self.masks.shape[1])

    @property
    def num_neurons(self) -> int:
        return int(self.masks.shape[2])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.masks.shape)  # type: ignore[return-value]

    def index(self, language: str) -> int:
        try:
            return self.languages.index(language)
        except ValueError:
            raise UnknownLanguageError(f"unknown language {language!r}; this mask holds {self.languages}") from None

    def __getitem__(self, language: str) -> np.ndarray:
        """bool [L, F] mask of one language."""
        return self.masks[self.index(language)]

    def __repr__(self) -> str:
        k, l, f = self.shape
        counts = self.counts().sum(1).tolist()
        method = self.meta.get("method")
        return f"NeuronMasks(languages={self.languages}, L={l}, F={f}, counts={counts}, method={method!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronMasks):
            return NotImplemented
        return (
            self.languages == other.languages
            and self.masks.shape == other.masks.shape
            and bool((self.masks == other.masks).all())
        )

    def select(self, languages: Sequence[str]) -> NeuronMasks:
        """Masks restricted to (and reordered as) `languages`."""
        idx = [self.index(x) for x in _languages(languages)]
        return NeuronMasks([self.languages[i] for i in idx], self.masks[idx], dict(self.meta))

    # -- summaries -------------------------------------------------------------------------------------

    def counts(self) -> np.ndarray:
        """int64 [K, L]: neurons per language per layer."""
        return self.masks.sum(axis=2, dtype=np.int64)

    def language_count(self) -> np.ndarray:
        """int64 [L, F]: number of languages each neuron belongs to."""
        return self.masks.sum(axis=0, dtype=np.int64)

    def union(self) -> np.ndarray:
        """bool [L, F]: neurons that belong to at least one language."""
        return self.masks.any(axis=0)

    def general(self) -> np.ndarray:
        """bool [L, F]: neurons assigned to every language ("language-agnostic" in the ternary paper)."""
        return self.masks.all(axis=0)

    def unique_count(self) -> int:
        """Number of distinct neurons in the union of all languages' masks."""
        return int(self.union().sum())

    def appear(self) -> list[int]:
        """`appear[c]` = neurons assigned to exactly c languages, c = 0..K (NJUNLP `appear_distribution`).

        As in the original, c = 0 is not counted (a neuron in no mask is not seen): appear[0] == 0.
        """
        hist = np.bincount(self.language_count().ravel(), minlength=len(self.languages) + 1)
        hist[0] = 0
        return hist.tolist()

    def jaccard(self) -> np.ndarray:
        """float64 [K, K]: |A ∩ B| / |A ∪ B| between languages' neuron sets; NaN where both are empty."""
        flat = self.masks.reshape(len(self.languages), -1).astype(np.float64)
        inter = flat @ flat.T
        size = flat.sum(axis=1)
        union = size[:, None] + size[None, :] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)

    def summary_table(self) -> str:
        """A plain-text table: per language, neurons, share of L·F, language-specific, shared, busiest layer."""
        counts = self.counts()
        lc = self.language_count()
        total = self.num_layers * self.num_neurons
        rows = [f"{'lang':<8}{'neurons':>9}{'% of L·F':>10}{'specific':>10}{'shared':>8}{'top layer':>11}"]
        for k, lang in enumerate(self.languages):
            m = self.masks[k]
            n = int(counts[k].sum())
            specific = int((m & (lc == 1)).sum())
            top = f"{int(counts[k].argmax())} ({int(counts[k].max())})" if n else "-"
            rows.append(f"{lang:<8}{n:>9}{100.0 * n / max(total, 1):>9.3f}%{specific:>10}{n - specific:>8}{top:>11}")
        unique = self.unique_count()
        multi = int((lc > 1).sum())
        rows.append(
            f"{len(self.languages)} languages, {self.num_layers} layers x {self.num_neurons} neurons: "
            f"{unique} unique neurons ({100.0 * unique / max(total, 1):.3f}% of L·F), "
            f"{multi} in more than one language, {int(self.general().sum())} in all"
        )
        if self.meta.get("method"):
            rows.append(f"method: {self.meta['method']} {self.meta.get('params', {})}")
        return "\n".join(rows)

    def plot_heatmap(self, path: str | os.PathLike, *, title: str | None = None) -> Path:
        """Save a PNG heat map of neurons per layer (rows) and language (columns). Uses Agg, no pyplot state."""
        counts = self.counts().T  # [L, K]
        fig = new_figure(1.0 + 0.6 * len(self.languages), 1.5 + 0.18 * self.num_layers)
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(counts, aspect="auto", cmap="viridis", origin="lower", interpolation="nearest")
        ax.set_xticks(range(len(self.languages)), labels=self.languages)
        ax.set_xlabel("language")
        ax.set_ylabel("layer")
        ax.set_title(title or f"{self.meta.get('method', 'mask')}: neurons per layer")
        fig.colorbar(im, ax=ax, label="neurons")
        return save_figure(fig, path)

    def check_fits(self, num_layers: int, num_neurons: int, *, model: str | None = None) -> None:
        """Raise `MaskShapeError` unless the mask is `[K, num_layers, num_neurons]`."""
        if (self.num_layers, self.num_neurons) != (num_layers, num_neurons):
            made_for = self.meta.get("model")
            raise MaskShapeError(
                f"mask of {self.num_layers} layers x {self.num_neurons} neurons ({self.languages}"
                f"{', made for ' + str(made_for) if made_for else ''}) does not fit "
                f"{model or 'the model'} with {num_layers} layers x {num_neurons} MLP neurons; "
                "identify neurons on this model's statistics, or load the mask made for it"
            )

    # -- index lists ------------------------------------------------------------------------------------

    def to_indices(self) -> list[list[np.ndarray]]:
        """`List[List[int64 array]]`: `out[k][l]` = sorted neuron indices of language k in layer l."""
        return [
            [np.flatnonzero(self.masks[k, l]).astype(np.int64) for l in range(self.num_layers)]
            for k in range(len(self.languages))
        ]

    @classmethod
    def from_indices(
        cls,
        indices: Sequence[Sequence[Any]],
        languages: Sequence[str],
        *,
        num_neurons: int | None = None,
        meta: dict | None = None,
    ) -> NeuronMasks:
        """Build masks from `indices[k][l]` = neuron indices (any order, duplicates allowed).

        Fewer lists than languages: the missing trailing languages get empty masks
        (LAPE's bincount quirk) and `meta["missing_languages"]` names them.
        F is `num_neurons`, or the largest index + 1 (`meta["num_neurons_inferred"]`).
        """
        langs = _languages(languages)
        meta = dict(meta or {})
        if not isinstance(indices, (list, tuple)) or not indices:
            raise MaskError(f"expected a non-empty list (one entry per language), got {type(indices).__name__}")
        if len(indices) > len(langs):
            raise MaskError(
                f"the mask holds {len(indices)} language lists but only {len(langs)} languages were named: {langs}"
            )
        rows: list[list[np.ndarray]] = []
        num_layers = None
        for k, per_layer in enumerate(indices):
            if not isinstance(per_layer, (list, tuple)):
                raise MaskError(
                    f"language {langs[k]!r}: expected a list of per-layer index tensors, got {type(per_layer).__name__}"
                )
            if num_layers is None:
                num_layers = len(per_layer)
            elif len(per_layer) != num_layers:
                raise MaskError(f"language {langs[k]!r} has {len(per_layer)} layers, {langs[0]!r} has {num_layers}")
            row = []
            for l, t in enumerate(per_layer):
                if not isinstance(t, np.ndarray):
                    raise MaskError(
                        f"[{k}][{l}] ({langs[k]}, layer {l}) is {type(t).__name__}, not a tensor of neuron indices"
                    )
                if t.ndim != 1 or (t.dtype.kind not in "iu" and t.size):
                    raise MaskError(
                        f"[{k}][{l}] ({langs[k]}, layer {l}) must be a 1-D integer tensor, got {t.dtype} {t.shape}"
                    )
                t = t.astype(np.int64)
                if t.size and t.min() < 0:
                    raise MaskError(f"[{k}][{l}] ({langs[k]}, layer {l}) has negative neuron indices")
                row.append(t)
            rows.append(row)
        assert num_layers is not None
        largest = max((int(t.max()) for row in rows for t in row if t.size), default=-1)
        if num_neurons is None:
            if largest < 0:
                raise MaskError("the mask is empty; pass num_neurons= to size it")
            num_neurons = largest + 1
            meta["num_neurons_inferred"] = True
            meta.setdefault("notes", []).append(
                f"F={num_neurons} inferred from the largest index; pass num_neurons= for the model's MLP size"
            )
        elif largest >= num_neurons:
            raise MaskShapeError(f"neuron index {largest} does not fit num_neurons={num_neurons}")
        masks = np.zeros((len(langs), num_layers, num_neurons), dtype=bool)
        for k, row in enumerate(rows):
            for l, t in enumerate(row):
                masks[k, l, t] = True
        if len(rows) < len(langs):
            missing = langs[len(rows) :]
            meta["missing_languages"] = missing
            meta.setdefault("notes", []).append(
                f"file held {len(rows)} of {len(langs)} language lists; {missing} given empty masks "
                "(LAPE identify.py drops trailing languages without neurons: torch.bincount quirk)"
            )
        return cls(langs, masks, meta)

    # -- files ------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write an `.npz` (compressed) openable by NumPy alone: `masks`, `languages`, `meta` (JSON). Atomic."""
        p = output_path(path)
        write_npz(
            p, format=_FORMAT, languages=self.languages, arrays={"masks": self.masks}, meta=self.meta, compressed=True
        )
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronMasks:
        """Read a mask written by `save`."""
        try:
            arrays, languages, meta = read_npz(path, format_prefix="jlang.NeuronMasks/")
        except ValueError as e:
            raise MaskError(str(e)) from None
        if "masks" not in arrays:
            raise MaskError(f"{path}: no 'masks' array")
        return cls(languages, arrays["masks"], meta)

    def to_lape_pt(self, path: str | os.PathLike) -> Path:
        """Write the original LAPE format, `torch.save(List[List[LongTensor]])`, without torch.

        All K languages are written (also those with no neuron, unlike identify.py's
        bincount split), so `torch.load(path)[k]` always lines up with `languages[k]`.
        """
        p = output_path(path)
        torchfile.save_tensor_lists(p, self.to_indices())
        return p

    @classmethod
    def from_lape_pt(
        cls, path: str | os.PathLike, languages: Sequence[str], *, num_neurons: int | None = None
    ) -> NeuronMasks:
        """Read a LAPE/NJUNLP mask file (`List[List[LongTensor]]`), e.g. the published `*.neuron.pth`.

        Args:
            path: the `torch.save` file (read without torch; no pickle code runs).
            languages: the language codes of the lists in order (LAPE: en zh fr es vi id ja;
                NJUNLP: en ru es fr de zh ja bn th sw).
            num_neurons: the model's MLP intermediate size; default: largest index + 1.
        """
        try:
            obj = torchfile.load(path)
        except torchfile.TorchFileError as e:
            raise MaskError(str(e)) from None
        if not isinstance(obj, (list, tuple)):
            raise MaskError(f"{path}: expected List[List[LongTensor]], found {type(obj).__name__}")
        meta = {"source": str(path), "format": "lape-pt", "hook_point": "mlp.act"}
        try:
            return cls.from_indices(obj, languages, num_neurons=num_neurons, meta=meta)
        except MaskError as e:
            raise type(e)(f"{path}: {e}") from None
