"""A PLND pass's result: per-language top-k counts, and the language-specific units they give.

Selection (as released, `neuron_deactivate/test_mistral_gsm.py`): a language's *activated*
set is the intersection over its documents of their per-layer top-k; its *language-specific*
set is the activated set minus the units activated by every language (`act_L − ⋂_k act_k`).
The counts fold exactly over batches and processes, so every set derives from them.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jlang.io.npz import read_npz, write_npz
from jlang.io.report import save_heatmaps, write_text
from jlang.masks import NeuronMasks, UnknownLanguageError
from jlang.methods.plnd.common import PARTS, PLNDError

_FORMAT = "jlang.PLND/1"
# The released output file of a language (`neuron_detection.py`): its 5 lines and the part each holds.
_ORIGINAL_LINES = (("fwd_up", "ffn"), ("fwd_down", "ffn"), ("q", "qk"), ("k", "qk"), ("v", "vo"))


def _counts_array(name: str, x: Any, k: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 3 or a.shape[0] != k or a.dtype.kind not in "iu":
        raise PLNDError(f"{name} counts must be integer [K={k}, L, n], got {a.dtype} {a.shape}")
    return a.astype(np.int64)


@dataclass
class PLNDResult:
    """Per-language PLND counts and the masks they give.

    `counts[part][k, l, i]` is the number of language k's documents whose per-layer
    top-k held unit i (`part`: "ffn" `[K, L, F]`, "qk" and "vo" `[K, L, H*D]`);
    `documents[k]` the number of documents. Derived, exactly:

    * `activated(part)` = counts == documents (the intersection over documents);
    * `shared(part)` = activated by every language of `shared_languages` (all by default);
    * `specific(part)` = activated and not shared (what the deactivation uses);
    * `ffn` (a `NeuronMasks`), `qk`, `vo`: the language-specific masks.

    `meta` holds the mode, top-k, model shape (`num_heads`, `num_kv_heads`, `head_dim`), corpus.
    """

    languages: list[str]
    documents: np.ndarray  # int64 [K]
    counts: dict[str, np.ndarray]  # part -> int64 [K, L, n]
    shared_languages: list[str] | None = None  # None: every language (none removed when K == 1)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.languages = [str(x) for x in self.languages]
        k = len(self.languages)
        if k == 0 or len(set(self.languages)) != k:
            raise PLNDError(f"languages must be non-empty and distinct, got {self.languages}")
        self.documents = np.asarray(self.documents, np.int64)
        if self.documents.shape != (k,):
            raise PLNDError(f"documents must be [K={k}], got shape {self.documents.shape}")
        empty = [lang for lang, n in zip(self.languages, self.documents) if n <= 0]
        if empty:
            raise PLNDError(
                f"languages {empty} have no document: an intersection over no document is undefined; "
                "give every language at least one non-empty document"
            )
        unknown = [p for p in self.counts if p not in PARTS]
        if unknown or not self.counts:
            raise PLNDError(f"counts must hold some of the parts {PARTS}, got {list(self.counts)}")
        self.counts = {p: _counts_array(p, self.counts[p], k) for p in PARTS if p in self.counts}
        shapes = {p: c.shape for p, c in self.counts.items()}
        if len({sh[1] for sh in shapes.values()}) != 1 or (
            "qk" in shapes and "vo" in shapes and shapes["qk"] != shapes["vo"]
        ):
            raise PLNDError(f"count shapes disagree: {shapes}")
        if any((c < 0).any() or (c > self.documents[:, None, None]).any() for c in self.counts.values()):
            raise PLNDError("counts must lie in [0, documents] (documents holding a unit in their top-k)")
        if self.shared_languages is not None:
            self.shared_languages = [str(x) for x in self.shared_languages]
            for lang in self.shared_languages:
                self.index(lang)

    # -- shape ---------------------------------------------------------------------------------------

    @property
    def parts(self) -> tuple[str, ...]:
        """The scored parts ("ffn", "qk", "vo"; a pass may score only some)."""
        return tuple(self.counts)

    @property
    def num_layers(self) -> int:
        return int(next(iter(self.counts.values())).shape[1])

    @property
    def num_neurons(self) -> int | None:
        """F, or None if the FFN was not scored."""
        return int(self.counts["ffn"].shape[2]) if "ffn" in self.counts else self.meta.get("num_neurons")

    @property
    def attn_width(self) -> int | None:
        """H*D, the flattened query-head dimensions (None if attention was not scored and meta does not say)."""
        for p in ("qk", "vo"):
            if p in self.counts:
                return int(self.counts[p].shape[2])
        m = self.meta
        return int(m["num_heads"]) * int(m["head_dim"]) if "num_heads" in m and "head_dim" in m else None

    def index(self, language: str) -> int:
        try:
            return self.languages.index(language)
        except ValueError:
            raise UnknownLanguageError(
                f"unknown language {language!r}; this PLND result holds {self.languages}"
            ) from None

    def _part(self, part: str) -> np.ndarray:
        if part not in PARTS:
            raise PLNDError(f"unknown part {part!r}; use one of {PARTS}")
        if part not in self.counts:
            raise PLNDError(f"part {part!r} was not scored in this PLND result (scored: {list(self.counts)})")
        return self.counts[part]

    # -- masks ---------------------------------------------------------------------------------------

    def activated(self, part: str) -> np.ndarray:
        """bool `[K, L, n]`: in the top-k of every one of the language's documents."""
        return self._part(part) == self.documents[:, None, None]

    def removal_languages(self) -> list[str]:
        """The languages whose common activated units are removed (`shared_languages`, default all; none for K = 1)."""
        if self.shared_languages is not None:
            return list(self.shared_languages)
        return list(self.languages) if len(self.languages) > 1 else []

    def shared(self, part: str) -> np.ndarray:
        """bool `[L, n]`: activated by every language of `removal_languages()` (all False when there is none)."""
        act = self.activated(part)
        idx = [self.index(x) for x in self.removal_languages()]
        if not idx:
            return np.zeros(act.shape[1:], bool)
        return act[idx].all(axis=0)

    def specific(self, part: str) -> np.ndarray:
        """bool `[K, L, n]`: activated and not shared (`spec_L = act_L − ⋂ act`, test_mistral_gsm.py)."""
        return self.activated(part) & ~self.shared(part)[None]

    @property
    def ffn(self) -> NeuronMasks:
        """The language-specific FFN neurons as `NeuronMasks` `[K, L, F]` (usable by every mask tool)."""
        meta = dict(
            self.meta,
            method=f"plnd-{self.meta.get('mode', '?')}",
            hook_point="mlp.act",
            params={k: self.meta.get(k) for k in ("mode", "top_ffn", "top_attn")},
            documents={l: int(n) for l, n in zip(self.languages, self.documents)},
            removed_shared_by=self.removal_languages(),
        )
        return NeuronMasks(list(self.languages), self.specific("ffn"), meta)

    @property
    def qk(self) -> np.ndarray:
        """bool `[K, L, H*D]`: language-specific Q/K dimensions (query space `h*D + j`)."""
        return self.specific("qk")

    @property
    def vo(self) -> np.ndarray:
        """bool `[K, L, H*D]`: language-specific V/O dimensions (the `o_proj` input space `h*D + j`)."""
        return self.specific("vo")

    def layer_counts(self, part: str, which: str = "specific") -> np.ndarray:
        """int64 `[K, L]`: units per language and layer (`which`: "specific", "activated")."""
        masks = self.specific(part) if which == "specific" else self.activated(part)
        return masks.sum(axis=2, dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        """Counts per language (activated, specific; FFN, Q/K, V/O), shared units, parameters."""
        per = {}
        for k, lang in enumerate(self.languages):
            per[lang] = {"documents": int(self.documents[k])}
            for p in self.parts:
                per[lang][f"{p}_activated"] = int(self.activated(p)[k].sum())
                per[lang][f"{p}_specific"] = int(self.specific(p)[k].sum())
        return {
            "method": "plnd",
            "mode": self.meta.get("mode"),
            "top_ffn": self.meta.get("top_ffn"),
            "top_attn": self.meta.get("top_attn"),
            "num_layers": self.num_layers,
            "num_neurons": self.num_neurons,
            "attn_width": self.attn_width,
            "removed_shared_by": self.removal_languages(),
            "parts": list(self.parts),
            "shared": {p: int(self.shared(p).sum()) for p in self.parts},
            "per_language": per,
            "specific_per_layer": {
                p: {lang: self.layer_counts(p)[k].tolist() for k, lang in enumerate(self.languages)} for p in self.parts
            },
        }

    def with_shared_languages(self, languages: Sequence[str] | None) -> PLNDResult:
        """The same counts, removing the units shared by `languages` (the released script used en es fr zh ru)."""
        return dataclasses.replace(self, shared_languages=None if languages is None else list(languages))

    # -- files ---------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write an `.npz` (NumPy only; atomic): documents, `{part}_counts`, languages, meta (JSON)."""
        p = Path(path)
        meta = dict(self.meta, shared_languages=self.shared_languages)
        arrays = {"documents": self.documents, **{f"{k}_counts": v for k, v in self.counts.items()}}
        write_npz(p, format=_FORMAT, languages=self.languages, arrays=arrays, meta=meta, compressed=True)
        return p

    @classmethod
    def load(cls, path: str | Path) -> PLNDResult:
        try:
            arrays, languages, meta = read_npz(path, format_prefix="jlang.PLND/")
        except ValueError as e:
            raise PLNDError(str(e)) from None
        counts = {p: arrays[f"{p}_counts"] for p in PARTS if f"{p}_counts" in arrays}
        if "documents" not in arrays or not counts:
            raise PLNDError(f"{path}: missing arrays: needs 'documents' and some of {[f'{p}_counts' for p in PARTS]}")
        shared = meta.pop("shared_languages", None)
        return cls(languages, arrays["documents"], counts, shared, meta)

    def original_text(self, language: str, *, specific: bool = False) -> str:
        """The released output file of one language: 5 lines, each `str({layer: set(indices)})`.

        Lines: fwd_up, fwd_down (FFN), q, k (Q/K, both in the `H*D` query space, as the code
        scores K after `repeat_kv`), v (V/O). `neuron_detection.py` writes the *activated*
        sets (the intersection over documents); `specific=True` writes the sets after removing
        the units shared by all languages (what `test_mistral_gsm.py` deactivates).
        """
        k = self.index(language)
        if self.parts != PARTS:
            raise PLNDError(f"the released format holds FFN, Q/K and V/O sets; this result scored only {self.parts}")
        get = self.specific if specific else self.activated
        lines = []
        for _, part in _ORIGINAL_LINES:
            m = get(part)[k]
            lines.append(str({layer: {int(i) for i in np.flatnonzero(m[layer])} for layer in range(self.num_layers)}))
        return "\n".join(lines) + "\n"

    def to_original_text(
        self,
        directory: str | Path,
        *,
        specific: bool = False,
        template: str = "{lang}.txt",
    ) -> list[Path]:
        """Write `original_text` of every language to `directory/template`; returns the paths (atomic writes)."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        return [
            write_text(root / template.format(lang=lang), self.original_text(lang, specific=specific))
            for lang in self.languages
        ]

    def plot_heatmap(self, path: str | Path, *, which: str = "specific", title: str | None = None) -> Path:
        """A PNG of units per layer (rows) x language (columns): FFN, Q/K and V/O panels."""
        layers = [str(l) for l in range(self.num_layers)]
        names = {
            "ffn": f"FFN neurons (of {self.num_neurons})",
            "qk": f"Q/K dims (of {self.attn_width})",
            "vo": f"V/O dims (of {self.attn_width})",
        }
        panels = [
            {
                "matrix": self.layer_counts(p, which).T,
                "rows": layers,
                "cols": self.languages,
                "title": names[p],
                "cbar_label": f"{which} units",
                "fmt": "{:.0f}",
                "xlabel": "language",
                "ylabel": "layer",
                "origin": "lower",
                "annotate": self.num_layers * len(self.languages) <= 400,
            }
            for p in self.parts
        ]
        head = title or f"PLND ({self.meta.get('mode')} mode) {which} units per layer: {self.meta.get('model', '')}"
        return save_heatmaps(
            path,
            panels,
            ncols=3,
            suptitle=head,
            panel_size=(1.2 + 0.45 * len(self.languages), 1.8 + 0.22 * self.num_layers),
        )


def read_original_text(path: str | Path) -> dict[str, dict[int, set[int]]]:
    """Parse a released PLND output file (5 lines of `str(dict)`) safely, with `ast.literal_eval`."""
    lines = [x for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    names = [name for name, _ in _ORIGINAL_LINES]
    if len(lines) != len(names):
        raise PLNDError(f"{path}: expected {len(names)} lines ({', '.join(names)}), found {len(lines)}")
    out = {}
    for name, line in zip(names, lines):
        try:
            value = ast.literal_eval(line)
        except (ValueError, SyntaxError) as e:
            raise PLNDError(f"{path}: line {name!r} is not a Python dict literal ({e})") from None
        if not isinstance(value, dict):
            raise PLNDError(f"{path}: line {name!r} is {type(value).__name__}, not a dict")
        out[name] = {int(k): set(v) for k, v in value.items()}
    return out
