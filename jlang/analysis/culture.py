"""Culture neurons (Namazifard & Galke, repo `namazifard/Culture_Neurons`; methods.md §6).

LAPE is run twice, with the same defaults: once on *language* corpora (one per
language) and once on *culture* corpora (text about a culture written in that
culture's own language). Every culture `c` names the language(s) it is written in.
From the two mask sets:

* **compound** `C_c ∧ ⋃_{l ∈ c} L_l`: culture neurons that are also neurons of the
  culture's language (`make_compound_and_pure.py` builds `L_l ∧ C_c` per language;
  with one language per culture the two are the same);
* **pure culture** `C_c ∖ ⋃_{l ∈ c} L_l`: culture neurons minus the neurons of the
  culture's own language(s) (`make_compound_and_pure.py`);
* **generic** `⋂_c Pure_c`: neurons in every culture's pure set (`make_generic_mask.py`).

So `compound_c` and `pure_c` split `C_c` in two. Both mask sets are counted at
`mlp.act` (the activated gate, the FFN neurons): the released
`activation_*_transformers.py` hooked the whole `mlp` module and counted the MLP
*output* (hidden-size residual dimensions, not neurons), which jlang does not copy;
`check_hook_point` refuses statistics or masks recorded at another point.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jlang.data.sources import Corpus
from jlang.evals.perplexity import PPLResult, ppl_matrix
from jlang.io.report import FigureWriter, Report, save_heatmaps
from jlang.masks import NeuronMasks
from jlang.methods import lape

__all__ = [
    "CultureError",
    "CultureMasks",
    "CulturePPL",
    "check_hook_point",
    "culture_masks",
    "culture_ppl",
    "identify_culture_neurons",
]

HOOK_POINT = "mlp.act"


class CultureError(ValueError):
    """Culture and language masks do not fit together; the message says what and how to fix it."""


def check_hook_point(obj, what: str) -> None:
    """Refuse statistics/masks recorded at a hook point other than `mlp.act` (the FFN neurons)."""
    point = getattr(obj, "meta", {}).get("hook_point")
    if point is not None and point != HOOK_POINT:
        raise CultureError(
            f"{what} were recorded at hook point {point!r}, not {HOOK_POINT!r}: culture neurons are FFN neurons "
            "(the activated gate). Counting the MLP output (the released *_transformers.py scripts) gives residual "
            "dimensions, not neurons; re-collect the statistics with jlang.collect_stats"
        )


@dataclass
class CultureMasks:
    """The four mask sets of the culture-neuron study, each a `NeuronMasks` `[K, L, F]`.

    `language` is keyed by language code, `culture`, `compound` and `pure` by culture
    name, `generic` has the single entry `"generic"`. `culture_languages` maps each
    culture to its language(s).
    """

    language: NeuronMasks
    culture: NeuronMasks
    compound: NeuronMasks
    pure: NeuronMasks
    generic: NeuronMasks
    culture_languages: dict[str, list[str]]
    meta: dict = field(default_factory=dict)

    KINDS = ("language", "culture", "compound", "pure", "generic")

    def kind(self, name: str) -> NeuronMasks:
        if name not in self.KINDS:
            raise KeyError(f"unknown mask kind {name!r}; kinds: {list(self.KINDS)}")
        return getattr(self, name)

    def counts(self) -> dict[str, dict[str, int]]:
        """Neurons per entry of every mask kind."""
        return {
            k: {lang: int(m.sum()) for lang, m in zip(self.kind(k).languages, self.kind(k).masks)} for k in self.KINDS
        }

    def combined(self, separator: str = ":") -> NeuronMasks:
        """All entries in one `NeuronMasks` named `"{kind}:{name}"` (one PPL pass serves every kind)."""
        names, arrays = [], []
        for k in self.KINDS:
            m = self.kind(k)
            names += [f"{k}{separator}{x}" for x in m.languages]
            arrays.append(m.masks)
        return NeuronMasks(names, np.concatenate(arrays), {**self.meta, "kinds": list(self.KINDS)})

    def save(self, directory: str | Path) -> dict[str, Path]:
        """`{directory}/{kind}.npz` for every kind (NumPy-only NeuronMasks files)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        return {k: self.kind(k).save(d / f"{k}.npz") for k in self.KINDS}

    @classmethod
    def load(cls, directory: str | Path, culture_languages: Mapping[str, str | Sequence[str]]) -> CultureMasks:
        """Read the `{kind}.npz` files written by `save`."""
        d = Path(directory)
        kinds = {k: NeuronMasks.load(d / f"{k}.npz") for k in cls.KINDS}
        return cls(
            **kinds,
            culture_languages=_normalise_mapping(culture_languages),
            meta=dict(kinds["culture"].meta),
        )

    def summary_table(self) -> str:
        """Markdown: per culture, neurons of C_c, its language(s), compound, pure, and their share of C_c."""
        lines = [
            "| culture | language(s) | culture C | language L | compound C∧L | pure C∖L | pure / C |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for c in self.culture.languages:
            langs = self.culture_languages[c]
            n_c = int(self.culture[c].sum())
            n_l = int(np.logical_or.reduce([self.language[l] for l in langs]).sum())
            n_comp, n_pure = int(self.compound[c].sum()), int(self.pure[c].sum())
            share = f"{n_pure / n_c:.2f}" if n_c else "–"
            lines.append(f"| {c} | {', '.join(langs)} | {n_c} | {n_l} | {n_comp} | {n_pure} | {share} |")
        lines.append(f"| generic ⋂ pure | | | | | {int(self.generic.masks.sum())} | |")
        return "\n".join(lines)


def _normalise_mapping(
    culture_languages: Mapping[str, str | Sequence[str]],
) -> dict[str, list[str]]:
    out = {}
    for c, langs in culture_languages.items():
        langs = [langs] if isinstance(langs, str) else list(langs)
        if not langs:
            raise CultureError(f"culture {c!r} names no language; give the language(s) it is written in")
        out[str(c)] = [str(x) for x in langs]
    if not out:
        raise CultureError("no culture given")
    return out


def culture_masks(
    language: NeuronMasks,
    culture: NeuronMasks,
    culture_languages: Mapping[str, str | Sequence[str]],
) -> CultureMasks:
    """Compound, pure and generic masks from language masks `L` and culture masks `C` (same model).

    Args:
      language: LAPE masks of the language corpora, keyed by language code.
      culture: LAPE masks of the culture corpora, keyed by culture name.
      culture_languages: culture -> its language code (or list of codes); every culture of
        `culture` needs an entry and every language must be in `language`.
    """
    mapping = _normalise_mapping(culture_languages)
    for m, what in ((language, "language masks"), (culture, "culture masks")):
        check_hook_point(m, what)
    if language.shape[1:] != culture.shape[1:]:
        raise CultureError(
            f"language masks are {language.num_layers} layers x {language.num_neurons} neurons but culture masks are "
            f"{culture.num_layers} x {culture.num_neurons}: both must come from the same model"
        )
    missing = [c for c in culture.languages if c not in mapping]
    if missing:
        raise CultureError(f"cultures {missing} have no language in culture_languages (it maps {sorted(mapping)})")
    unknown = sorted({l for c in culture.languages for l in mapping[c] if l not in language.languages})
    if unknown:
        raise CultureError(
            f"languages {unknown} are not in the language masks ({language.languages}); "
            "run LAPE on a language corpus for them"
        )
    mapping = {c: mapping[c] for c in culture.languages}
    compound, pure = [], []
    for c in culture.languages:
        lang_union = np.logical_or.reduce([language[l] for l in mapping[c]])  # [L, F]
        compound.append(culture[c] & lang_union)
        pure.append(culture[c] & ~lang_union)
    pure_arr = np.stack(pure)
    generic = pure_arr.all(axis=0)[None]
    base = {
        "model": culture.meta.get("model") or language.meta.get("model"),
        "hook_point": HOOK_POINT,
        "culture_languages": mapping,
        "reference": "namazifard/Culture_Neurons make_compound_and_pure.py, make_generic_mask.py",
    }
    return CultureMasks(
        language=language,
        culture=culture,
        compound=NeuronMasks(
            list(culture.languages),
            np.stack(compound),
            {**base, "method": "culture-compound", "rule": "C_c & OR_{l in c} L_l"},
        ),
        pure=NeuronMasks(
            list(culture.languages), pure_arr, {**base, "method": "culture-pure", "rule": "C_c & ~OR_{l in c} L_l"}
        ),
        generic=NeuronMasks(["generic"], generic, {**base, "method": "culture-generic", "rule": "AND_c pure_c"}),
        culture_languages=mapping,
        meta=base,
    )


def identify_culture_neurons(
    language_stats,
    culture_stats,
    culture_languages: Mapping[str, str | Sequence[str]],
    *,
    top_rate: float = 0.01,
    filter_rate: float = 0.95,
    activation_bar_ratio: float = 0.95,
) -> CultureMasks:
    """LAPE (RUCAIBox defaults) on language and on culture statistics separately, then `culture_masks`.

    `language_stats` may hold more languages than the cultures use; LAPE runs on the
    cultures' languages only (as the study runs it on its own language set), in the
    order they first appear in `culture_languages`.
    """
    mapping = _normalise_mapping(culture_languages)
    for s, what in (
        (language_stats, "language statistics"),
        (culture_stats, "culture statistics"),
    ):
        check_hook_point(s, what)
    if (language_stats.num_layers, language_stats.num_neurons) != (
        culture_stats.num_layers,
        culture_stats.num_neurons,
    ):
        raise CultureError(
            f"language statistics are {language_stats.num_layers} x {language_stats.num_neurons} but culture "
            f"statistics {culture_stats.num_layers} x {culture_stats.num_neurons}: both must come from the same model"
        )
    langs = list(dict.fromkeys(l for c in culture_stats.languages for l in mapping.get(c, [])))
    missing = [l for l in langs if l not in language_stats.languages]
    if missing:
        raise CultureError(
            f"languages {missing} have no statistics (language statistics hold {language_stats.languages})"
        )
    if len(langs) < 2 or culture_stats.num_languages < 2:
        raise CultureError(
            "LAPE compares at least two languages and two cultures; "
            f"got languages {langs} and cultures {culture_stats.languages}"
        )
    params: dict[str, Any] = {
        "top_rate": top_rate,
        "filter_rate": filter_rate,
        "activation_bar_ratio": activation_bar_ratio,
    }
    lang_masks = lape(language_stats.select(langs), **params)
    cult_masks = lape(culture_stats, **params)
    lang_masks.meta.setdefault("hook_point", HOOK_POINT)
    cult_masks.meta.setdefault("hook_point", HOOK_POINT)
    result = culture_masks(lang_masks, cult_masks, mapping)
    result.meta["lape"] = params
    return result


# ----------------------------------------------------------------------------- ΔPPL matrices


@dataclass
class CulturePPL(Report):
    """ΔPPL matrices of every mask kind, from one perplexity pass (`jlang.evals.perplexity.ppl_matrix`).

    `result` is the whole `PPLResult`: rows `"none"` and `"{kind}:{name}"`, columns
    `"culture:{c}"` (held-out culture text) and `"language:{l}"` (held-out language text).
    """

    result: PPLResult
    culture_languages: dict[str, list[str]]

    def rows_of(self, kind: str) -> list[str]:
        return [r for r in self.result.rows if r.startswith(kind + ":")]

    def columns_of(self, group: str) -> list[str]:
        return [c for c in self.result.columns if c.startswith(group + ":")]

    def matrix(
        self, kind: str, group: str = "culture", which: str = "delta_ppl"
    ) -> tuple[list[str], list[str], np.ndarray]:
        """(row names, column names, `[R, C]` matrix) of one mask kind on one column group."""
        rows, cols = self.rows_of(kind), self.columns_of(group)
        full = getattr(self.result, which)
        ri = [self.result.rows.index(r) for r in rows]
        ci = [self.result.columns.index(c) for c in cols]
        strip = lambda xs: [x.split(":", 1)[1] for x in xs]
        return strip(rows), strip(cols), full[np.ix_(ri, ci)]

    def own_vs_other(self, kind: str, which: str = "delta_ppl") -> dict[str, float]:
        """For kinds keyed by culture: mean Δ on the culture's own text, on other cultures' texts, on its
        language's text.

        For `language` (keyed by language): own = the cultures written in that language, other = the rest.
        For `generic`: the mean over all culture texts and over all language texts.
        """
        rows, cols, m = self.matrix(kind, "culture", which)
        _lrows, lcols, lm = self.matrix(kind, "language", which)
        if kind == "generic":
            return {
                "culture_text": float(np.nanmean(m)),
                "language_text": float(np.nanmean(lm)),
            }
        own, other, own_lang, other_lang = [], [], [], []
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                mine = (c == r) if kind != "language" else (r in self.culture_languages.get(c, []))
                (own if mine else other).append(m[i, j])
            langs = self.culture_languages.get(r, [r]) if kind != "language" else [r]
            for j, l in enumerate(lcols):
                (own_lang if l in langs else other_lang).append(lm[i, j])
        mean = lambda v: float(np.nanmean(v)) if v else float("nan")
        return {
            "own_culture": mean(own),
            "other_cultures": mean(other),
            "own_language": mean(own_lang),
            "other_languages": mean(other_lang),
        }

    def own_dominant(self, kind: str, which: str = "delta_nll") -> tuple[int, int]:
        """(rows whose largest Δ on culture text is on the row's own culture, rows) for culture-keyed kinds."""
        rows, cols, m = self.matrix(kind, "culture", which)
        own = [(i, cols.index(r)) for i, r in enumerate(rows) if r in cols]
        return sum(int(np.nanargmax(m[i]) == j) for i, j in own), len(own)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": "jlang.CulturePPL/1",
            "ppl": self.result.to_dict(),
            "culture_languages": self.culture_languages,
            "kinds": {},
        }
        for kind in CultureMasks.KINDS:
            entry = {}
            for group in ("culture", "language"):
                rows, cols, m = self.matrix(kind, group)
                entry[group] = {
                    "rows": rows,
                    "columns": cols,
                    "delta_ppl": m,
                    "delta_nll": self.matrix(kind, group, "delta_nll")[2],
                }
            entry["own_vs_other"] = self.own_vs_other(kind)
            entry["own_vs_other_delta_nll"] = self.own_vs_other(kind, "delta_nll")
            out["kinds"][kind] = entry
        return out

    def table(
        self,
        kind: str,
        group: str = "culture",
        which: str = "delta_ppl",
        fmt: str = "{:.2f}",
    ) -> str:
        rows, cols, m = self.matrix(kind, group, which)
        lines = [
            f"| {kind} ↓ / {group} text → | " + " | ".join(cols) + " |",
            "|---" + "|---:" * len(cols) + "|",
        ]
        for i, r in enumerate(rows):
            lines.append(f"| {r} | " + " | ".join("–" if not np.isfinite(v) else fmt.format(v) for v in m[i]) + " |")
        return "\n".join(lines)

    def figures(self) -> dict[str, FigureWriter]:
        """`{prefix}.png`: ΔNLL heat maps, one row of panels per mask kind."""
        return {"": functools.partial(plot_culture_ppl, self)}


def plot_culture_ppl(result: CulturePPL, path: Path) -> Path:
    """ΔNLL heat maps: per mask kind, its masks deactivated on culture text and on language text."""
    panels = []
    for kind in CultureMasks.KINDS:
        for group in ("culture", "language"):
            rows, cols, m = result.matrix(kind, group, "delta_nll")
            panels.append(
                {
                    "matrix": m,
                    "rows": rows,
                    "cols": cols,
                    "title": f"{kind} masks on {group} text: ΔNLL",
                    "cbar_label": "ΔNLL (nats)",
                    "fmt": "{:.2f}",
                    "diverging": True,
                    "xlabel": f"evaluated {group} text",
                    "ylabel": f"{kind} mask deactivated",
                }
            )
    k = max(len(result.columns_of("culture")), len(result.columns_of("language")))
    return save_heatmaps(path, panels, ncols=2, panel_size=(0.6 * k + 3.0, 0.45 * 6 + 2.2))


def culture_ppl(
    model,
    masks: CultureMasks,
    culture_corpus,
    language_corpus=None,
    *,
    batch_size: int = 16,
    seq_len: int = 128,
    mode: str = "pack",
    max_tokens: int | None = None,
    edit_value: float = 0.0,
    vocab_chunk: int | None = None,
    progress: bool = True,
) -> CulturePPL:
    """Perplexity with each mask of every kind deactivated, on held-out culture and language text.

    Args:
      model: a `jlang.Model` (the masks' model).
      masks: `CultureMasks`.
      culture_corpus: a `Corpus` keyed by culture name (held-out culture text).
      language_corpus: a `Corpus` keyed by language code (held-out language text), or None.
      mode, batch_size, seq_len, max_tokens, edit_value, vocab_chunk: as `ppl_matrix` (LAPE: pack, edit 0).
    """
    sources = {f"culture:{c}": culture_corpus[c] for c in masks.culture.languages}
    if language_corpus is not None:
        langs = list(dict.fromkeys(l for ls in masks.culture_languages.values() for l in ls))
        sources.update({f"language:{l}": language_corpus[l] for l in langs})
    combined = masks.combined()
    kwargs = {} if vocab_chunk is None else {"vocab_chunk": vocab_chunk}
    result = ppl_matrix(
        model,
        combined,
        Corpus(sources),
        languages=list(sources),
        deactivate=list(combined.languages),
        batch_size=batch_size,
        seq_len=seq_len,
        mode=mode,
        edit_value=edit_value,
        max_tokens=max_tokens,
        progress=progress,
        **kwargs,
    )
    return CulturePPL(result=result, culture_languages=dict(masks.culture_languages))
