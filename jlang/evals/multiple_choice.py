"""A multiple-choice translation task from parallel sentences, scored by option log-probability, under neuron edits.

Downstream effect of language-neuron edits (Rahmanisa et al. 2025,
tauimbz/lang-task-neuron `intervention_tasks.py`: XWinograd/XCOPA accuracy by
option log-probability, lm-eval style; methods.md §4.4): does deactivating or
amplifying a language's neurons change what the model knows, not only which
language it speaks? Those benchmarks are downloads; this task is built from the
packaged parallel held-out corpus instead (`parallel/heldout.jsonl`, human
translations of the same UI message), so it runs offline:

    prompt:   "{source_name}: {question}\\n{target_name}:"      e.g. "English: Enter a valid date.\\nFrench:"
    options:  " {option}" for 4 sentences in the target language: the question's translation and 3 others

Distractors are other messages' translations into the same target language,
drawn without replacement from the distinct texts of that language, never
equal to the correct text (so the right answer appears exactly once). The draw
uses `numpy.random.default_rng([seed, crc32(source), crc32(target)])`: a pair's
items depend only on the seed, the pair and the rows, not on the other pairs.

Scoring (lm-eval's `acc` and its normalisations): each option's log-probability
given the prompt, summed over its tokens (`jlang.models.scoring.Scorer`,
chunked log-softmax); the choice is the argmax of the sum (`"sum"`), of the
mean per token (`"token"`), or of the sum per character (`"char"`, lm-eval's
`acc_norm`). Ties go to the first option. Accuracy per language pair, for each
edit condition: none, or the answer (target) / question (source) language's
neurons deactivated (`a = δ`), scaled (`a *= c`) or shifted (`a += α·μ`).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jlang import edits as edit_lib
from jlang.data.langinfo import language_name
from jlang.io.report import FigureWriter, Report, new_figure, save_figure
from jlang.masks import NeuronMasks
from jlang.models.scoring import TokenRows, continuation_rows, row_scorer
from jlang.models.vocab import DEFAULT_CHUNK

__all__ = [
    "Condition",
    "MCItem",
    "MCResult",
    "build_items",
    "option_rows",
    "predict",
    "run_multiple_choice",
]

DEFAULT_TEMPLATE = "{source_name}: {question}\n{target_name}:"
DEFAULT_OPTION_TEMPLATE = " {option}"
NORMS = ("sum", "token", "char")
KINDS = ("none", "deactivate", "scale", "additive")


# ----------------------------------------------------------------------------- items


@dataclass(frozen=True)
class MCItem:
    """One question: `question` in `source`; `options` in `target`; `options[answer]` is its translation."""

    source: str
    target: str
    question: str
    options: tuple[str, ...]
    answer: int
    row: int  # index of the parallel row the question comes from

    def __post_init__(self):
        if not 0 <= self.answer < len(self.options):
            raise ValueError(f"answer {self.answer} is not an index of the {len(self.options)} options")


def build_items(
    rows: Sequence[Mapping[str, str]],
    source: str,
    target: str,
    *,
    n: int | None = None,
    options: int = 4,
    seed: int = 0,
    max_chars: int | None = None,
) -> list[MCItem]:
    """Items of pair (source, target) from parallel rows (`{lang: text}`, e.g. `jlang.evals.lss.read_parallel()`).

    Questions are the first `n` rows that hold both languages with different texts (in file order);
    each gets `options - 1` distractors drawn from the other distinct texts of `target` and the
    answer at a random position. Deterministic in (rows, source, target, n, options, seed, max_chars).
    `max_chars`: keep only questions, answers and distractors of at most this many characters
    (shorter rows are cheaper to score, and distractors stay of comparable length).
    """
    if source == target:
        raise ValueError(f"source and target must differ, got {source!r} twice")
    if options < 2:
        raise ValueError(f"a multiple-choice item needs at least 2 options, got {options}")
    fits = lambda t: bool(t) and (max_chars is None or len(t) <= max_chars)
    eligible = []
    for i, row in enumerate(rows):
        q, a = (row.get(source) or "").strip(), (row.get(target) or "").strip()
        if fits(q) and fits(a) and q != a:
            eligible.append((i, q, a))
    pool = list(dict.fromkeys((row.get(target) or "").strip() for row in rows))
    pool = [t for t in pool if fits(t)]
    if len(pool) < options:
        raise ValueError(
            f"language {target!r} has {len(pool)} distinct texts in the parallel rows"
            f"{'' if max_chars is None else f' of at most {max_chars} characters'}; "
            f"{options} options need at least {options}"
        )
    rng = np.random.default_rng([seed, zlib.crc32(source.encode()), zlib.crc32(target.encode())])
    items = []
    for i, q, a in eligible[:n] if n is not None else eligible:
        others = [t for t in pool if t != a]
        picks = rng.choice(len(others), size=options - 1, replace=False)
        opts = [others[j] for j in picks]
        answer = int(rng.integers(options))
        opts.insert(answer, a)
        items.append(MCItem(source, target, q, tuple(opts), answer, i))
    return items


def prompt_text(item: MCItem, template: str = DEFAULT_TEMPLATE) -> str:
    return template.format(
        source_name=language_name(item.source),
        target_name=language_name(item.target),
        question=item.question,
        source=item.source,
        target=item.target,
    )


def option_rows(
    tokenizer,
    items: Sequence[MCItem],
    *,
    template: str = DEFAULT_TEMPLATE,
    option_template: str = DEFAULT_OPTION_TEMPLATE,
) -> TokenRows:
    """Rows `prompt + option` for every option of every item (row `i * O + o`, group `i`); the option's tokens
    are scored (from where the text's tokens depart from the prompt's: `jlang.models.scoring.continuation_rows`)."""
    if not items:
        raise ValueError("no multiple-choice item to score")
    widths = {len(it.options) for it in items}
    if len(widths) != 1:
        raise ValueError(f"items have different numbers of options: {sorted(widths)}")
    options = [[option_template.format(option=o) for o in it.options] for it in items]
    return continuation_rows(tokenizer, [prompt_text(it, template) for it in items], options)


def predict(logprob: np.ndarray, tokens: np.ndarray, nchars: np.ndarray, norm: str = "sum") -> np.ndarray:
    """int64 `[..., N]`: the chosen option per item from option log-probs `[..., N, O]` (first on ties).

    `norm`: "sum" (acc), "token" (mean per scored token) or "char" (per character, lm-eval's acc_norm).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    lp = np.asarray(logprob, np.float64)
    if norm == "token":
        lp = lp / np.maximum(tokens, 1)
    elif norm == "char":
        lp = lp / np.maximum(nchars, 1)
    return np.argmax(lp, axis=-1)


# ----------------------------------------------------------------------------- edit conditions


@dataclass(frozen=True)
class Condition:
    """An edit applied while scoring: `kind` on the neurons of the item's `on` language.

    `none`; `deactivate` (`a = value`, LAPE 0); `scale` (`a *= value`, tauimbz `"*c"`);
    `additive` (`a += value * mu`, Language Arithmetics; needs `ActivationStats`).
    Written `"none"`, `"deactivate=0"`, `"scale=2"`, `"additive=1"`, prefixed `"source:"` to edit
    the question's language instead of the answer's.
    """

    kind: str = "none"
    value: float = 0.0
    on: str = "target"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"condition kind must be one of {KINDS}, got {self.kind!r}")
        if self.on not in ("target", "source"):
            raise ValueError(f"condition `on` must be 'target' or 'source', got {self.on!r}")

    @property
    def name(self) -> str:
        if self.kind == "none":
            return "none"
        return ("source:" if self.on == "source" else "") + f"{self.kind}={self.value:g}"

    @classmethod
    def parse(cls, text: str) -> Condition:
        """`"none"`, `"[source:|target:]deactivate[=δ]"`, `"[source:]scale=c"`, `"[source:]additive=α"`."""
        s = text.strip()
        on = "target"
        for prefix in ("source:", "target:"):
            if s.startswith(prefix):
                on, s = prefix[:-1], s[len(prefix) :]
        kind, _, raw = s.partition("=")
        if kind == "none":
            if raw:
                raise ValueError(f"condition {text!r}: 'none' takes no value")
            return cls("none")
        if kind not in KINDS:
            raise ValueError(f"condition {text!r}: kind must be one of {KINDS}")
        if not raw:
            if kind != "deactivate":
                raise ValueError(f"condition {text!r}: {kind} needs a value, e.g. {kind}=2")
            raw = "0"
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"condition {text!r}: {raw!r} is not a number") from None
        if not np.isfinite(value):
            raise ValueError(f"condition {text!r}: the value must be finite")
        return cls(kind, value, on)


def condition_edits(masks: NeuronMasks, condition: Condition, language: str, stats=None):
    """The `Edits` of `condition` on `language`'s neurons (None for `none`), via `jlang.edits`."""
    if condition.kind == "none":
        return None
    if condition.kind == "deactivate":
        return edit_lib.deactivate(masks, language, value=condition.value)
    if condition.kind == "scale":
        return edit_lib.amplify(masks, language, factor=condition.value)
    if stats is None:
        raise ValueError(f"condition {condition.name} adds the mean activation mu: pass stats= (ActivationStats)")
    return edit_lib.add(masks, language, stats, alpha=condition.value)


# ----------------------------------------------------------------------------- result


@dataclass
class MCResult(Report):
    """Option log-probabilities and accuracies per edit condition and language pair.

    Attributes:
      pairs: (source, target) language pairs, in first-seen order of the items.
      conditions: condition names (`Condition.name`).
      items: the questions (`MCItem`).
      logprob: float64 `[C, N, O]` summed option log-probabilities.
      tokens, nchars: int64 `[N, O]` scored tokens / characters of each option.
    """

    pairs: list[tuple[str, str]]
    conditions: list[str]
    items: list[MCItem]
    logprob: np.ndarray
    tokens: np.ndarray
    nchars: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def answers(self) -> np.ndarray:
        return np.array([it.answer for it in self.items], np.int64)

    def correct(self, norm: str = "sum") -> np.ndarray:
        """bool `[C, N]`."""
        return predict(self.logprob, self.tokens, self.nchars, norm) == self.answers[None, :]

    def pair_index(self) -> np.ndarray:
        """int64 `[N]`: each item's pair."""
        return np.array([self.pairs.index((it.source, it.target)) for it in self.items], np.int64)

    def accuracy(self, norm: str = "sum") -> np.ndarray:
        """float64 `[C, P]`: accuracy per condition and pair."""
        ok, pair = self.correct(norm), self.pair_index()
        return np.stack(
            [[ok[c, pair == p].mean() for p in range(len(self.pairs))] for c in range(len(self.conditions))]
        )

    def mean_accuracy(self, norm: str = "sum") -> np.ndarray:
        """float64 `[C]`: accuracy over all items."""
        return self.correct(norm).mean(axis=1)

    def flips(self, norm: str = "sum", reference: str = "none") -> dict[str, tuple[int, int]]:
        """Per condition: (items right under `reference` but wrong under it, items wrong under `reference` but
        right under it): the paired changes behind an accuracy difference (McNemar's discordant pairs)."""
        if reference not in self.conditions:
            raise ValueError(f"reference {reference!r} is not a condition of this result: {self.conditions}")
        ok = self.correct(norm)
        ref = ok[self.conditions.index(reference)]
        return {c: (int((ref & ~ok[i]).sum()), int((~ref & ok[i]).sum())) for i, c in enumerate(self.conditions)}

    def counts(self) -> np.ndarray:
        """int64 `[P]`: items per pair."""
        return np.bincount(self.pair_index(), minlength=len(self.pairs))

    def chance(self) -> float:
        return 1.0 / self.logprob.shape[-1]

    def to_dict(self) -> dict[str, Any]:
        acc = {n: self.accuracy(n) for n in NORMS}
        return {
            "format": "jlang.MCResult/1",
            "pairs": [list(p) for p in self.pairs],
            "conditions": self.conditions,
            "accuracy": acc,
            "mean_accuracy": {n: self.mean_accuracy(n) for n in NORMS},
            "chance": self.chance(),
            "items_per_pair": self.counts(),
            "meta": self.meta,
            "items": [
                {
                    "source": it.source,
                    "target": it.target,
                    "question": it.question,
                    "options": list(it.options),
                    "answer": it.answer,
                    "row": it.row,
                }
                for it in self.items
            ],
            "logprob": self.logprob,
            "tokens": self.tokens,
            "nchars": self.nchars,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MCResult:
        items = [
            MCItem(x["source"], x["target"], x["question"], tuple(x["options"]), int(x["answer"]), int(x["row"]))
            for x in d["items"]
        ]
        return cls(
            pairs=[tuple(p) for p in d["pairs"]],
            conditions=list(d["conditions"]),
            items=items,
            logprob=np.array(d["logprob"], np.float64),
            tokens=np.array(d["tokens"], np.int64),
            nchars=np.array(d["nchars"], np.int64),
            meta=dict(d.get("meta", {})),
        )

    def table(self, norm: str = "sum") -> str:
        """Markdown: accuracy per pair (rows) and condition (columns), plus the mean over items."""
        acc, mean, n = self.accuracy(norm), self.mean_accuracy(norm), self.counts()
        lines = [
            "| pair | items | " + " | ".join(self.conditions) + " |",
            "|---|---:|" + "---:|" * len(self.conditions),
        ]
        for p, (s, t) in enumerate(self.pairs):
            lines.append(
                f"| {s}→{t} | {n[p]} | " + " | ".join(f"{acc[c, p]:.2f}" for c in range(len(self.conditions))) + " |"
            )
        lines.append(f"| all | {n.sum()} | " + " | ".join(f"**{m:.3f}**" for m in mean) + " |")
        return "\n".join(lines)

    def figures(self) -> dict[str, FigureWriter]:
        """`{prefix}.png`: accuracy bars (`plot`)."""
        return {"": self.plot}

    def plot(self, path: str | Path, norms: Sequence[str] = ("sum", "token")) -> Path:
        """Grouped bars: accuracy per pair (and over all items) for each condition; one panel per scoring."""
        labels = [f"{s}→{t}" for s, t in self.pairs] + ["all"]
        C = len(self.conditions)
        fig = new_figure(max(6.0, 0.3 * len(labels) * (C + 1) + 3.0), 3.0 * len(norms))
        w = 0.8 / C
        for k, norm in enumerate(norms):
            ax = fig.add_subplot(len(norms), 1, k + 1)
            acc = np.concatenate([self.accuracy(norm), self.mean_accuracy(norm)[:, None]], axis=1)
            for c, name in enumerate(self.conditions):
                ax.bar(
                    np.arange(len(labels)) + (c - (C - 1) / 2) * w,
                    acc[c],
                    width=w,
                    label=name,
                )
            ax.axhline(self.chance(), color="grey", lw=0.8, ls="--")
            ax.set_xticks(range(len(labels)), labels=labels)
            ax.set_ylim(0, 1)
            ax.set_ylabel(f"accuracy ({norm})")
            ax.set_title(
                f"translation multiple choice, {self.logprob.shape[-1]} options, scored by option log-prob "
                f"({'sum' if norm == 'sum' else 'per ' + norm}); dashed: chance",
                fontsize=9,
            )
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        return save_figure(fig, path)


# ----------------------------------------------------------------------------- run


def parse_conditions(conditions: Sequence[Condition | str]) -> list[Condition]:
    """`Condition`s from conditions or their names; at least one, no name twice."""
    conds = [c if isinstance(c, Condition) else Condition.parse(c) for c in conditions]
    if not conds:
        raise ValueError("no condition to score")
    names = [c.name for c in conds]
    if len(set(names)) != len(names):
        raise ValueError(f"conditions repeat: {names}")
    return conds


def check_masks(model, masks: NeuronMasks | None, conditions: Sequence[Condition], items: Sequence[MCItem]) -> None:
    """The masks fit the model and hold every language a condition edits (None only when no condition edits)."""
    if masks is None:
        if any(c.kind != "none" for c in conditions):
            raise ValueError("conditions that edit neurons need masks=")
        return
    masks.check_fits(model.num_layers, model.num_neurons, model=model.name)
    for cond in conditions:
        for lang in {getattr(it, cond.on) for it in items} if cond.kind != "none" else ():
            masks.index(lang)  # names the masks' languages when one is missing


def scoring_passes(
    conditions: Sequence[Condition], items: Sequence[MCItem]
) -> list[tuple[int, str | None, np.ndarray]]:
    """(condition index, edited language or None, item indices) per scoring pass: one pass per condition and
    edited language (the items whose answer, or question, is in that language)."""
    passes = []
    for c, cond in enumerate(conditions):
        if cond.kind == "none":
            passes.append((c, None, np.arange(len(items))))
            continue
        on = [getattr(it, cond.on) for it in items]
        for lang in dict.fromkeys(on):
            passes.append((c, lang, np.array([i for i, l in enumerate(on) if l == lang])))
    return passes


def run_multiple_choice(
    model,
    masks: NeuronMasks | None,
    items: Sequence[MCItem],
    *,
    conditions: Sequence[Condition | str] = ("none",),
    stats=None,
    template: str = DEFAULT_TEMPLATE,
    option_template: str = DEFAULT_OPTION_TEMPLATE,
    batch_size: int = 16,
    vocab_chunk: int = DEFAULT_CHUNK,
    score_fn: Callable[[TokenRows, Any], np.ndarray] | None = None,
    edit_fn: Callable[[Condition, str], Any] | None = None,
    progress: bool = True,
) -> MCResult:
    """Score every option of every item under each condition.

    Args:
      model: a `jlang.Model` (its tokenizer builds the rows; its `Scorer` scores them).
      masks: the languages' neurons (may be None when every condition is `none`).
      items: `build_items` output, any pairs.
      conditions: `Condition`s or their names (`Condition.parse`).
      stats: `ActivationStats` for `additive` conditions (mean activations mu).
      score_fn: `(rows, edits) -> float [rows]` summed option log-probs (default: `Scorer.row_sums`);
        `edit_fn`: `(condition, language) -> edits` (default: `condition_edits`). Seams for tests.
    """
    conds = parse_conditions(conditions)
    items = list(items)
    if edit_fn is None:
        check_masks(model, masks, conds, items)
        edit_fn = lambda cond, lang: condition_edits(masks, cond, lang, stats)
    if score_fn is None:
        score_fn = row_scorer(model, batch_size=batch_size, vocab_chunk=vocab_chunk)
    rows = option_rows(model.tokenizer, items, template=template, option_template=option_template)
    N, O = len(items), len(items[0].options)
    nchars = np.array(
        [[len(option_template.format(option=o).strip()) for o in it.options] for it in items],
        np.int64,
    )
    logprob = np.full((len(conds), N, O), np.nan)
    passes = scoring_passes(conds, items)
    bar = tqdm(total=len(passes), desc="multiple choice", unit="pass", disable=not progress)
    t0 = time.perf_counter()
    for c, lang, idx in passes:
        edits = None if lang is None else edit_fn(conds[c], lang)
        sel = (idx[:, None] * O + np.arange(O)[None, :]).ravel()
        logprob[c, idx] = np.asarray(score_fn(rows.take(sel), edits), np.float64).reshape(len(idx), O)
        bar.update(1)
    bar.close()
    meta = {
        "model": getattr(model, "name", None),
        "template": template,
        "option_template": option_template,
        "example_prompt": prompt_text(items[0], template),
        "options": O,
        "seconds": time.perf_counter() - t0,
        "conditions": {c.name: {"kind": c.kind, "value": c.value, "on": c.on} for c in conds},
        "reference": "option log-prob accuracy as lm-eval / tauimbz/lang-task-neuron intervention_tasks.py",
    }
    return MCResult(
        pairs=list(dict.fromkeys((it.source, it.target) for it in items)),
        conditions=[c.name for c in conds],
        items=items,
        logprob=logprob,
        tokens=rows.scored_counts().reshape(N, O),
        nchars=nchars,
        meta=meta,
    )
