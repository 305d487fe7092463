"""The fallback experiment: switch off more and more languages' neurons and see which language the model falls back to.

Language Arithmetics (Gurgurov et al. 2025, d-gurgurov/Language-Neurons-Manipulation
`src/fallbacks.py`; methods.md §5.5): prompts in one language are continued
while the *union* of the neurons of a growing list of languages is deactivated,
`[en]`, `[en, fr]`, `[en, fr, es]`, ... (their hard-coded order
`en fr es it pt ru de ar zh ko ja`; the script's `--language_order` argument is
unused). Each output's language is identified, and each step reports the
language distribution and its most common language, the "fallback".

As in the original:

* deactivation is `a = δ` on the union's neurons at every position (its
  `negative` method, `index_fill_(δ)` after the activation, before `* up`);
  δ = −1.5 in methods.md (below GELU/SiLU minima; the script's argparse default
  is −1.0, and 0 is LAPE's deactivation);
* greedy decoding, `repetition_penalty=1.1`, stop at `"\\nQ:"` / `"\\nA:"`;
* the most common language breaks ties by first appearance (Python's
  `max(dict, key=dict.get)` over a dict filled in prompt order); an output with
  no letter is `"none"` (their `"unknown"`) and can be the most common.

Differences, all parameters: the prompts are held-out sentences in several
languages rather than the English MT-Bench questions (`template` wraps them;
default `"Q: {text}\\nA:"`, the steering template, where the original glues
`"Q: " + p + "A: "`); step 0 is the unedited model (the original starts with
`[en]` deactivated); with `prompt_first` (default) the prompt's own language is
switched off first and the rest follow the order (the original's prompts are
English and its order starts with `en`, so this is its design for other
prompt languages). The identifier is py3langid restricted to
`IDENTIFY_LANGUAGES` (the original's fastText `lid.176.bin` is unrestricted):
with French and English switched off, the default model's French prompts get
text that reads as Portuguese or Italian, which a set restricted to the masks'
languages would call Spanish. Beside the labels, `distinct_ratio` says whether
an output is text at all or a degenerate loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jlang import edits as edit_lib
from jlang.evals.langid import NO_LANGUAGE, Identifier
from jlang.io.report import FigureWriter, Report, new_figure, save_figure
from jlang.masks import NeuronMasks
from jlang.models.decoder import Edits

__all__ = [
    "IDENTIFY_LANGUAGES",
    "PAPER_ORDER",
    "FallbackResult",
    "distinct_ratio",
    "fallback_order",
    "most_common",
    "run_fallback",
]

# Language Arithmetics `fallbacks.py`: `high_resource_languages`, deactivated progressively in this order.
PAPER_ORDER = ("en", "fr", "es", "it", "pt", "ru", "de", "ar", "zh", "ko", "ja")
# Language Arithmetics' 21 languages (`compute_average_activations`) without "bo", which py3langid does not know.
IDENTIFY_LANGUAGES = (
    "mt",
    "it",
    "es",
    "de",
    "ja",
    "ar",
    "zh",
    "af",
    "nl",
    "fr",
    "pt",
    "ru",
    "ko",
    "hi",
    "tr",
    "pl",
    "sv",
    "da",
    "no",
    "en",
)
ORDERS = ("paper", "count", "mask")
# generate(prompts, edits) -> continuations (as `jlang.evals.steering.default_generator`)
Generator = Callable[[Sequence[str], "Edits | None"], list[str]]


def fallback_order(
    masks: NeuronMasks,
    order: str | Sequence[str] = "paper",
    *,
    prompt: str | None = None,
    prompt_first: bool = True,
    max_steps: int | None = None,
) -> list[str]:
    """The languages to deactivate, in order (step i deactivates the union of the first i).

    Args:
      masks: the languages' neurons; only its languages can be deactivated.
      order: `"paper"`: `PAPER_ORDER` restricted to the masks' languages, then the
        masks' other languages in mask order; `"count"`: by number of neurons,
        most first (ties in mask order); `"mask"`: the masks' order; or an explicit
        list of the masks' languages (only those are deactivated).
      prompt: the prompt language; with `prompt_first` it moves to the front.
      max_steps: keep only the first `max_steps` languages.
    """
    langs = list(masks.languages)
    if isinstance(order, str):
        if order == "paper":
            seq = [l for l in PAPER_ORDER if l in langs] + [l for l in langs if l not in PAPER_ORDER]
        elif order == "count":
            counts = masks.masks.sum(axis=(1, 2))
            seq = [langs[i] for i in sorted(range(len(langs)), key=lambda i: (-int(counts[i]), i))]
        elif order == "mask":
            seq = langs
        else:
            raise ValueError(f"order must be one of {ORDERS} or a list of languages, got {order!r}")
    else:
        seq = list(order)
        unknown = [l for l in seq if l not in langs]
        if unknown:
            raise ValueError(f"order names {unknown}, which the masks do not hold; they hold {langs}")
        if len(set(seq)) != len(seq):
            raise ValueError(f"order lists a language twice: {seq}")
        if not seq:
            raise ValueError("order is empty: name at least one language to deactivate")
    if prompt_first and prompt is not None:
        if prompt not in langs:
            raise ValueError(
                f"prompt language {prompt!r} has no neurons in the masks ({langs}); "
                "it cannot be deactivated first: set prompt_first=False"
            )
        seq = [prompt] + [l for l in seq if l != prompt]
    if max_steps is not None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        seq = seq[:max_steps]
    return seq


def distinct_ratio(text: str, n: int = 3) -> float:
    """Distinct character n-grams / all n-grams of `text` (NaN below n characters).

    A script-independent degeneration signal: fluent text scores near 1, a
    loop such as "si si si si" near 0. With many neurons forced to δ a small
    model often loops, and the identifier then labels the loop (a repeated
    "do" reads as Portuguese), so the fallback language needs this beside it.
    """
    t = " ".join(text.split())
    if len(t) < n:
        return float("nan")
    grams = [t[i : i + n] for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams)


def most_common(labels: Sequence[str]) -> str:
    """The most frequent label; ties go to the label seen first (the original's `max(dict, key=dict.get)`)."""
    if not labels:
        return NO_LANGUAGE
    counts: dict[str, int] = {}
    for l in labels:
        counts[l] = counts.get(l, 0) + 1
    return max(counts, key=counts.get)


@dataclass
class FallbackResult(Report):
    """Identified output languages while more and more languages' neurons are deactivated.

    Attributes:
      prompt_languages: the prompts' languages.
      steps: prompt language -> deactivated languages per step (`steps[p][0] == []`: no edit).
      labels: prompt language -> per step, the identified language of each prompt's output.
      neurons: prompt language -> per step, the number of neurons in the deactivated union.
      generations: prompt language -> per step, `{"prompt", "output", "language"}` per prompt.
      value: δ, the value the deactivated neurons are set to.
    """

    prompt_languages: list[str]
    steps: dict[str, list[list[str]]]
    labels: dict[str, list[list[str]]]
    neurons: dict[str, list[int]]
    value: float
    generations: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def fallback(self, prompt: str) -> list[str]:
        """The most common output language at each step."""
        return [most_common(x) for x in self.labels[prompt]]

    def shares(self, prompt: str) -> list[dict[str, float]]:
        """Per step, {language: share of outputs}, most common first."""
        out = []
        for labels in self.labels[prompt]:
            d: dict[str, float] = {}
            for l in labels:
                d[l] = d.get(l, 0.0) + 1.0 / len(labels)
            out.append(dict(sorted(d.items(), key=lambda kv: -kv[1])))
        return out

    def share_of(self, prompt: str, language: str) -> np.ndarray:
        """float64 `[steps]`: share of outputs identified as `language`."""
        return np.array(
            [np.mean([l == language for l in labels]) if labels else np.nan for labels in self.labels[prompt]]
        )

    def distinctness(self, prompt: str) -> np.ndarray:
        """float64 `[steps]`: mean `distinct_ratio` of the outputs (NaN where none has 3 characters)."""
        out = []
        for step in self.generations.get(prompt, []):
            r = [distinct_ratio(g["output"]) for g in step]
            r = [x for x in r if np.isfinite(x)]
            out.append(float(np.mean(r)) if r else float("nan"))
        return np.array(out)

    def _distinct_or_nan(self, prompt: str) -> np.ndarray:
        d = self.distinctness(prompt)
        return d if len(d) == len(self.steps[prompt]) else np.full(len(self.steps[prompt]), np.nan)

    def first_departure(self, prompt: str) -> int | None:
        """The first step whose most common language is not the prompt's own, or None."""
        for i, lang in enumerate(self.fallback(prompt)):
            if lang != prompt:
                return i
        return None

    def languages_seen(self) -> list[str]:
        """Every identified label, by total count (most first)."""
        c: dict[str, int] = {}
        for p in self.prompt_languages:
            for labels in self.labels[p]:
                for l in labels:
                    c[l] = c.get(l, 0) + 1
        return [l for l, _ in sorted(c.items(), key=lambda kv: -kv[1])]

    def to_dict(self) -> dict[str, Any]:
        summary = {
            p: [
                {"deactivated": s, "neurons": n, "most_common": m, "distribution": d, "distinct_3grams": r}
                for s, n, m, d, r in zip(
                    self.steps[p], self.neurons[p], self.fallback(p), self.shares(p), self._distinct_or_nan(p)
                )
            ]
            for p in self.prompt_languages
        }
        return {
            "format": "jlang.FallbackResult/1",
            "prompt_languages": self.prompt_languages,
            "value": self.value,
            "steps": self.steps,
            "labels": self.labels,
            "neurons": self.neurons,
            "summary": summary,
            "meta": self.meta,
            "generations": self.generations,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FallbackResult:
        return cls(
            prompt_languages=list(d["prompt_languages"]),
            steps={k: [list(s) for s in v] for k, v in d["steps"].items()},
            labels={k: [list(s) for s in v] for k, v in d["labels"].items()},
            neurons={k: [int(n) for n in v] for k, v in d["neurons"].items()},
            value=float(d["value"]),
            generations=d.get("generations", {}),
            meta=dict(d.get("meta", {})),
        )

    def table(self) -> str:
        """Markdown: per prompt language, the fallback language (and its share) at each step."""
        width = max(len(self.steps[p]) for p in self.prompt_languages)
        lines = [
            "| prompt | " + " | ".join(f"step {i}" for i in range(width)) + " |",
            "|---" + "|---" * width + "|",
        ]
        for p in self.prompt_languages:
            cells = []
            for s, m, d in zip(self.steps[p], self.fallback(p), self.shares(p)):
                head = "none" if not s else "+" + s[-1]
                cells.append(f"{head}: **{m}** {d[m]:.2f}")
            lines.append(f"| {p} | " + " | ".join(cells + [""] * (width - len(cells))) + " |")
        return "\n".join(lines)

    def figures(self) -> dict[str, FigureWriter]:
        """`{prefix}.png`: stacked language shares per step (`plot`)."""
        return {"": self.plot}

    def plot(self, path: str | Path) -> Path:
        """One panel per prompt language: stacked bars of the output languages' shares at each step."""
        seen = self.languages_seen()
        import matplotlib

        cmap = matplotlib.colormaps["tab20"]
        colors = {
            l: ("0.7" if l == NO_LANGUAGE else cmap(i % 20)) for i, l in enumerate(l for l in seen if l != NO_LANGUAGE)
        }
        colors.setdefault(NO_LANGUAGE, "0.7")
        n = len(self.prompt_languages)
        width = max(len(self.steps[p]) for p in self.prompt_languages)
        fig = new_figure(max(6.5, 0.6 * width + 3.0), 2.8 * n + 0.6)
        for i, p in enumerate(self.prompt_languages):
            ax = fig.add_subplot(n, 1, i + 1)
            shares = self.shares(p)
            bottom = np.zeros(len(shares))
            for l in seen:
                h = np.array([s.get(l, 0.0) for s in shares])
                if h.any():
                    ax.bar(
                        range(len(shares)),
                        h,
                        bottom=bottom,
                        color=colors[l],
                        label=l,
                        width=0.8,
                    )
                bottom += h
            for x, m in enumerate(self.fallback(p)):
                ax.text(x, 1.02, m, ha="center", va="bottom", fontsize=7)
            distinct = self._distinct_or_nan(p)
            if np.isfinite(distinct).any():
                ax.plot(range(len(shares)), distinct, color="black", marker="o", ms=3, lw=1, label="distinct 3-grams")
            ticks = [("none" if not s else "+" + s[-1]) + f"\n{k}" for s, k in zip(self.steps[p], self.neurons[p])]
            ax.set_xticks(range(len(shares)), labels=ticks, fontsize=7)
            ax.set_ylim(0, 1.15)
            ax.set_ylabel("share of outputs")
            ax.set_title(
                f"prompts in {p}: neurons of the languages so far set to {self.value:g}\n"
                "tick: language added, neurons off; black line: mean distinct character 3-grams",
                fontsize=8,
            )
            ax.legend(
                fontsize=6,
                ncols=2,
                loc="center left",
                bbox_to_anchor=(1.0, 0.5),
                frameon=False,
            )
        return save_figure(fig, path)


def run_fallback(
    masks: NeuronMasks,
    prompts: Mapping[str, Sequence[str]],
    *,
    generate: Generator,
    identify: Identifier,
    order: str | Sequence[str] = "paper",
    prompt_first: bool = True,
    max_steps: int | None = None,
    value: float = -1.5,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> FallbackResult:
    """For each prompt language: generate with no edit, then with the union of the first 1, 2, ... languages'
    neurons (`fallback_order`) set to `value`, and identify each output's language.

    Args:
      masks: the languages' neurons.
      prompts: prompt language -> prompts (e.g. `jlang.evals.steering.steering_prompts`).
      generate: `(prompts, edits) -> continuations` (`steering.default_generator(model)`;
        any stub in tests); step 0 gets the identity edit (an empty mask).
      identify: `(texts) -> language codes` (`Py3LangID(IDENTIFY_LANGUAGES + ...)`).
      order, prompt_first, max_steps: see `fallback_order`.
      value: δ for the deactivated neurons (−1.5 in methods.md §5.5; 0 = LAPE).
    """
    if not prompts:
        raise ValueError("no prompt language given")
    for p, items in prompts.items():
        if not items:
            raise ValueError(f"prompt language {p!r} has no prompts")
    value = float(value)
    plan = {p: fallback_order(masks, order, prompt=p, prompt_first=prompt_first, max_steps=max_steps) for p in prompts}
    bar = tqdm(total=sum(len(s) + 1 for s in plan.values()), desc="fallback", unit="step", disable=not progress)
    steps, labels, neurons, generations = {}, {}, {}, {}
    t0 = time.perf_counter()
    for p, seq in plan.items():
        steps[p], labels[p], neurons[p], generations[p] = [], [], [], []
        for i in range(len(seq) + 1):
            off = seq[:i]
            # step 0: the identity edit rather than None, so every step runs one compiled program
            edits = edit_lib.deactivate(masks, off, value=value) if off else edit_lib.identity(masks.shape[1:])
            outs = generate(list(prompts[p]), edits)
            langs = list(identify(outs))
            steps[p].append(list(off))
            labels[p].append(langs)
            neurons[p].append(int(np.asarray(edits.mask).sum()))
            generations[p].append(
                [{"prompt": q, "output": o, "language": l} for q, o, l in zip(prompts[p], outs, langs)]
            )
            bar.update(1)
    bar.close()
    info = {
        "order": order if isinstance(order, str) else list(order),
        "prompt_first": prompt_first,
        "max_steps": max_steps,
        "prompts_per_language": {p: len(v) for p, v in prompts.items()},
        "seconds": time.perf_counter() - t0,
        "no_language_label": NO_LANGUAGE,
        "reference": "Language Arithmetics src/fallbacks.py (Gurgurov et al. 2025), progressive union deactivation",
    }
    info.update(meta or {})
    return FallbackResult(
        prompt_languages=list(prompts),
        steps=steps,
        labels=labels,
        neurons=neurons,
        value=value,
        generations=generations,
        meta=info,
    )
