"""Language Steering Score (LSS), the "difference of differences" of Rahmanisa et al. 2025
(tauimbz/lang-task-neuron `intervention_dod.py`, methods.md §4.4).

For a base (prompt) language b, a target language t and an item x:

    D_b^t(x) = log P(obj_t | prompt_b(x)) − log P(obj_b | prompt_b(x))      (summed over the object's tokens)
    LSS(b → t) = (1/N) Σ_x 1[ D_b^t(x) | amplify(t) − D_b^t(x) | no edit > 0 ]

i.e. the share of items on which amplifying t's neurons moves probability from
the b-language object to the t-language object. The original uses MLAMA facts
(`inayarhmns/MLAMA-dod-185`: prompt_b = the b template with subject_b, objects
= the object's name in b and in t).

**The cloze set here** comes from the default corpus's parallel held-out file
(`parallel/heldout.jsonl`: each English UI message with its human translations),
so it needs no download. MLAMA pairs one prompt with two objects that mean the
same thing in two languages; a translation pair gives exactly that:

    prompt_b(x) = '"{m_b}" = "'        (the message in b, quoted, then an opening quote)
    obj_b = m_b,  obj_t = m_t          (the message restated in b, or its translation into t)

Both objects are the same meaning, so `D` measures only the preferred output
language; the prompt names no language, so any shift comes from the edit. The
length difference between `m_b` and `m_t` biases `D` itself but cancels in the
difference of differences. Items where `m_b == m_t` are skipped. The template
is a parameter (`template`, with `{text}`).

Interventions on t's neurons at every position, one LSS matrix per strength:
`intervention="scale"`: `a *= factor` (`operation_target "*c"`; factor 1 gives
exactly 0, strict `>`), or `"additive"`: `a += alpha * mu_t` (Language
Arithmetics' additive steering, `mu_t` the mean activation of t from
`ActivationStats`; close in spirit to the paper's patched `p_max` replacement,
which sets the neurons to a typical high value of t).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jlang import edits as edit_lib
from jlang.data.corpora.gettext import ensure_default_corpus
from jlang.io.report import FigureWriter, Report, new_figure, save_figure, save_heatmaps
from jlang.masks import NeuronMasks
from jlang.models.scoring import TokenRows, continuation_rows, row_scorer
from jlang.models.vocab import DEFAULT_CHUNK

__all__ = ["ClozeItem", "LSSResult", "cloze_items", "lss", "lss_rate", "read_parallel"]

DEFAULT_TEMPLATE = '"{text}" = "'


@dataclass(frozen=True)
class ClozeItem:
    """One item of pair (base, target): a prompt in `base` and the two objects."""

    base: str
    target: str
    prompt: str
    obj_base: str
    obj_target: str


def read_parallel(path: str | Path | None = None) -> list[dict[str, str]]:
    """Rows of a parallel JSONL file (`{"text": {lang: message}}`); default: the default corpus's held-out file."""
    if path is None:
        path = ensure_default_corpus() / "parallel" / "heldout.jsonl"
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows.append(dict(row["text"]) if "text" in row else dict(row))
    return rows


def cloze_items(
    rows: Sequence[Mapping[str, str]], base: str, target: str, *, n: int | None = None, template: str = DEFAULT_TEMPLATE
) -> list[ClozeItem]:
    """The first `n` rows holding both languages with different texts, as cloze items of (base, target)."""
    out = []
    for row in rows:
        mb, mt = row.get(base), row.get(target)
        if not mb or not mt or mb.strip() == mt.strip():
            continue
        out.append(ClozeItem(base, target, template.format(text=mb), mb, mt))
        if n is not None and len(out) >= n:
            break
    return out


def lss_rate(d_edit: np.ndarray, d_none: np.ndarray) -> float:
    """`mean(1[d_edit − d_none > 0])` (tauimbz `res_dod`); NaN for no items."""
    d_edit, d_none = np.asarray(d_edit, np.float64), np.asarray(d_none, np.float64)
    return float(np.mean(d_edit - d_none > 0)) if d_edit.size else float("nan")


def object_rows(tokenizer, items: Sequence[ClozeItem]) -> TokenRows:
    """Rows `[prompt + obj_target, prompt + obj_base]` per item (2i, 2i+1); the object's tokens are scored
    (from where the text's tokens depart from the prompt's: `jlang.models.scoring.continuation_rows`)."""
    return continuation_rows(tokenizer, [it.prompt for it in items], [(it.obj_target, it.obj_base) for it in items])


@dataclass
class LSSResult(Report):
    """LSS per amplification factor and language pair.

    Attributes:
      bases, targets: languages (rows, columns).
      factors: amplification factors.
      lss: float64 `[F, B, T]` (NaN on b == t or pairs without items).
      mean_shift: float64 `[F, B, T]` mean of `D_edit − D_none` (nats).
      d_none: float64 `[B, T]` mean `D` without an edit.
      items: int64 `[B, T]`.
    """

    bases: list[str]
    targets: list[str]
    factors: list[float]
    lss: np.ndarray
    mean_shift: np.ndarray
    d_none: np.ndarray
    items: np.ndarray
    meta: dict = field(default_factory=dict)

    def mean_lss(self) -> np.ndarray:
        """float64 `[F]`: LSS averaged over the language pairs."""
        return np.array([np.nanmean(m) if np.isfinite(m).any() else np.nan for m in self.lss])

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "jlang.LSSResult/1",
            "bases": self.bases,
            "targets": self.targets,
            "factors": self.factors,
            "lss": self.lss,
            "mean_lss": self.mean_lss(),
            "mean_shift": self.mean_shift,
            "d_none": self.d_none,
            "items": self.items,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LSSResult:
        arr = lambda x: np.array(x, dtype=object).astype(np.float64)  # None -> nan
        return cls(
            bases=list(d["bases"]),
            targets=list(d["targets"]),
            factors=[float(f) for f in d["factors"]],
            lss=arr(d["lss"]),
            mean_shift=arr(d["mean_shift"]),
            d_none=arr(d["d_none"]),
            items=np.asarray(d["items"], np.int64),
            meta=dict(d.get("meta", {})),
        )

    def strength_label(self, f: float) -> str:
        """`"x2"` (scale) or `"+2·mu"` (additive)."""
        return f"+{f:g}·mu" if self.meta.get("intervention_kind") == "additive" else f"x{f:g}"

    def figures(self) -> dict[str, FigureWriter]:
        """`{prefix}.png`: one LSS heat map per strength; `{prefix}_sweep.png`: mean LSS against the strength."""
        return {"": functools.partial(plot_lss, self), "sweep": functools.partial(plot_sweep, self)}


def plot_lss(result: LSSResult, path: Path) -> Path:
    """One heat map per strength: LSS, prompt language x target (amplified) language."""
    panels = [
        dict(
            matrix=result.lss[i],
            rows=result.bases,
            cols=result.targets,
            vmin=0.0,
            vmax=1.0,
            title=f"LSS, target's neurons {result.strength_label(f)}",
            cbar_label="LSS",
            fmt="{:.2f}",
            xlabel="target (amplified) language",
            ylabel="prompt language",
        )
        for i, f in enumerate(result.factors)
    ]
    size = (0.5 * len(result.targets) + 3, 0.4 * len(result.bases) + 2)
    return save_heatmaps(path, panels, ncols=min(3, len(panels)), panel_size=size)


def plot_sweep(result: LSSResult, path: Path) -> Path:
    """Mean LSS over the pairs against the strength."""
    fig = new_figure(4.5, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(result.factors, result.mean_lss(), marker="o")
    additive = result.meta.get("intervention_kind") == "additive"
    ax.set_xlabel("alpha (a += alpha·mu_t)" if additive else "factor (a *= factor)")
    ax.set_ylabel("mean LSS over pairs")
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    return save_figure(fig, path)


def intervention_edits(masks: NeuronMasks, intervention: str, stats=None) -> Callable[[str, float], Any]:
    """`(target, strength) -> Edits`: `a *= strength` ("scale") or `a += strength * mu_t` ("additive", `stats`)."""
    if intervention == "scale":
        return lambda target, factor: edit_lib.amplify(masks, target, factor)
    if stats is None:
        raise ValueError("intervention='additive' needs stats= (ActivationStats with mean activations)")
    return lambda target, alpha: edit_lib.add(masks, target, stats, alpha)


def in_mask_order(masks: NeuronMasks, languages) -> list[str]:
    """The distinct `languages`, in the masks' order (languages the masks do not hold last, as first seen)."""
    order = {l: i for i, l in enumerate(masks.languages)}
    return sorted(dict.fromkeys(languages), key=lambda l: order.get(l, len(order)))


def lss(
    model,
    masks: NeuronMasks,
    items: Sequence[ClozeItem],
    *,
    factors: Sequence[float] = (2.0, 5.0, 10.0),
    intervention: str = "scale",
    stats=None,
    batch_size: int = 16,
    vocab_chunk: int = DEFAULT_CHUNK,
    score_fn: Callable[[TokenRows, Any], np.ndarray] | None = None,
    edit_fn: Callable[[str, float], Any] | None = None,
    progress: bool = True,
) -> LSSResult:
    """LSS of every (base, target) pair present in `items`, for each amplification factor.

    Args:
      items: cloze items (`cloze_items`) of any pairs.
      factors: strengths: `a *= factor` (intervention "scale") or `a += factor * mu_t` ("additive", needs
        `stats`, the `ActivationStats` whose mean activations give `mu_t`).
      score_fn: `(rows, edits) -> float [N]` summed object log-probs (default: the model's `Scorer`);
        `edit_fn`: `(target, factor) -> edits` (default: from `intervention`). Both are
        seams for tests and for other interventions.
    """
    if score_fn is None:
        score_fn = row_scorer(model, batch_size=batch_size, vocab_chunk=vocab_chunk)
    if intervention not in ("scale", "additive"):
        raise ValueError(f"intervention must be 'scale' or 'additive', got {intervention!r}")
    if edit_fn is None:
        masks.check_fits(model.num_layers, model.num_neurons, model=model.name)
        edit_fn = intervention_edits(masks, intervention, stats)
    bases = in_mask_order(masks, (it.base for it in items))
    targets = in_mask_order(masks, (it.target for it in items))
    for t in targets:
        masks.index(t)
    t0 = time.perf_counter()
    tokenizer = model.tokenizer if model is not None else None

    def d_values(subset: Sequence[ClozeItem], edits) -> np.ndarray:
        sums = np.asarray(score_fn(object_rows(tokenizer, subset), edits), np.float64)
        return sums[0::2] - sums[1::2]  # log P(obj_t) - log P(obj_b)

    F, B, T = len(factors), len(bases), len(targets)
    out = np.full((F, B, T), np.nan)
    shift = np.full((F, B, T), np.nan)
    d_none_m = np.full((B, T), np.nan)
    counts = np.zeros((B, T), np.int64)
    bar = tqdm(total=len(targets) * (F + 1), desc="LSS", unit="pass", disable=not progress)
    for j, t in enumerate(targets):
        subset = [it for it in items if it.target == t]
        pair = np.array([bases.index(it.base) for it in subset])
        d0 = d_values(subset, None)
        bar.update(1)
        present = [(i, pair == i) for i in range(B) if (pair == i).any()]
        for i, sel in present:
            counts[i, j] = int(sel.sum())
            d_none_m[i, j] = float(d0[sel].mean())
        for f, factor in enumerate(factors):
            d1 = d_values(subset, edit_fn(t, factor))
            for i, sel in present:
                out[f, i, j] = lss_rate(d1[sel], d0[sel])
                shift[f, i, j] = float((d1[sel] - d0[sel]).mean())
            bar.update(1)
    bar.close()
    return LSSResult(
        bases=bases,
        targets=targets,
        factors=[float(f) for f in factors],
        lss=out,
        mean_shift=shift,
        d_none=d_none_m,
        items=counts,
        meta={
            "model": getattr(model, "name", None),
            "example_prompt": items[0].prompt if items else None,
            "intervention_kind": intervention,
            "intervention": ("a *= factor" if intervention == "scale" else "a += factor * mu_t")
            + " on the target's neurons, every layer and position",
            "seconds": time.perf_counter() - t0,
            "reference": "tauimbz/lang-task-neuron intervention_dod.py (Rahmanisa et al. 2025)",
        },
    )
