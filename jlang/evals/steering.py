"""Language steering: deactivate the prompt language's neurons and/or activate a target's; which language comes out?

Protocol (LAPE `generation.py`, Tang et al. 2024; Language Arithmetics
"language forcing", Gurgurov et al. 2025, `src/batch_generation.py`; methods.md
§1.2, §5.4-5.5):

* prompts in a source language b, `"Q: {text}\\nA:"` (LAPE's template, without
  its answer-in-language instruction) built from held-out sentences;
* greedy decoding with `repetition_penalty=1.1`, stopping at `"\\nQ:"` / `"\\nA:"`;
* conditions per source b: no edit (`none`), b's neurons deactivated
  (`deactivate`, `a = deactivate_value`; LAPE: 0), and for every target t != b
  the deactivation of b followed by the activation of t (`b->t`);
  `deactivate_value=None` activates t without deactivating b;
* activation of t (the value LAPE's paper uses is not in its code): `additive`
  `a += strength * mu_t` (Language Arithmetics' main method; `mu_t` the mean
  activation of t from `ActivationStats`), or `scale` `a *= strength`;
* each generation's language is identified (default: py3langid restricted to
  the study's languages, `jlang.evals.langid`); success = identified == t.

Reported: `success[b, t]` (share of b->t generations identified as t),
`baseline_same[b]` (no edit, identified as b), `deactivated_same[b]`
(b deactivated, still identified as b), the identified-language counts of every
condition, and the generations themselves.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jlang import edits as edit_lib
from jlang.evals.langid import NO_LANGUAGE, Identifier
from jlang.io.report import FigureWriter, Report, from_json_matrix, save_heatmaps
from jlang.masks import NeuronMasks
from jlang.models import generate as gen
from jlang.models.decoder import Edits

__all__ = [
    "Activation",
    "SteeringResult",
    "condition_key",
    "default_generator",
    "run_steering",
    "steering_edits",
    "steering_prompts",
    "tally",
]

DEFAULT_TEMPLATE = "Q: {text}\nA:"
DEFAULT_STOP = ("\nQ:", "\nA:")
# generate(prompts, edits) -> continuations
Generator = Callable[[Sequence[str], "Edits | None"], list[str]]


@dataclass(frozen=True)
class Activation:
    """How the target language's neurons are activated: `additive` (`a += strength * mu_t`) or `scale`
    (`a *= strength`)."""

    kind: str = "additive"
    strength: float = 1.0

    def __post_init__(self):
        if self.kind not in ("additive", "scale"):
            raise ValueError(f"activation kind must be 'additive' or 'scale', got {self.kind!r}")


def condition_key(source: str, target: str | None, deactivated: bool = True) -> str:
    """`"b|none"`, `"b|deactivate"`, or `"b->t"`."""
    if target is None:
        return f"{source}|deactivate" if deactivated else f"{source}|none"
    return f"{source}->{target}"


def steering_edits(
    masks: NeuronMasks,
    source: str | None,
    target: str | None,
    *,
    deactivate_value: float | None = 0.0,
    activation: Activation = Activation(),
    stats=None,
) -> Edits | None:
    """The edit of one condition: deactivate `source` (unless `deactivate_value` is None), then activate `target`."""
    parts = []
    if source is not None and deactivate_value is not None:
        parts.append(edit_lib.deactivate(masks, source, value=deactivate_value))
    if target is not None:
        if activation.kind == "scale":
            parts.append(edit_lib.amplify(masks, target, activation.strength))
        else:
            if stats is None:
                raise ValueError("additive activation needs ActivationStats (the mean activation mu_t); pass stats=")
            parts.append(edit_lib.add(masks, target, stats, activation.strength))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else edit_lib.combine(parts[0], parts[1])


def steering_prompts(
    texts: Mapping[str, Sequence[str]], n: int, template: str = DEFAULT_TEMPLATE, max_chars: int = 200
) -> dict[str, list[str]]:
    """`template.format(text=...)` for the first `n` texts of each language (texts longer than `max_chars` skipped)."""
    out = {}
    for lang, items in texts.items():
        chosen = [t for t in items if len(t) <= max_chars][:n]
        if not chosen:
            raise ValueError(f"language {lang!r} has no text of at most {max_chars} characters for steering prompts")
        out[lang] = [template.format(text=t) for t in chosen]
    return out


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min([i for i in (text.find(s) for s in stop) if i >= 0], default=len(text))
    return text[:cut]


def default_generator(
    model, *, max_new_tokens: int = 48, repetition_penalty: float = 1.1, stop: Sequence[str] = DEFAULT_STOP
) -> tuple[Generator, str]:
    """(generate(prompts, edits) -> continuations, a description): `jlang.models.generate.generate`, greedy, with
    a KV cache, the repetition penalty and the stop strings."""

    def run(prompts, edits):
        outs = gen.generate(
            model,
            list(prompts),
            max_new_tokens=max_new_tokens,
            temperature=0.0,
            repetition_penalty=repetition_penalty,
            stop=tuple(stop),
            edits=edits,
        )
        return [cut_at_stop(o, stop) for o in outs]

    return run, f"jlang.models.generate.generate(greedy, repetition_penalty={repetition_penalty}, stop={list(stop)})"


def tally(identified: Mapping[str, Sequence[str]], sources: Sequence[str], targets: Sequence[str]) -> dict[str, Any]:
    """Success rates from identified languages per condition key (see `condition_key`).

    Returns `success` float `[B, T]` (NaN where b == t or the condition is missing), `control` `[B, T]`
    (share identified as t *without* activating t: after deactivating b alone when that condition exists,
    else with no edit; a model that falls back to English when b is deactivated "succeeds" for t = en
    without steering), `baseline_same` `[B]`, `deactivated_same` `[B]` (NaN when missing) and
    `counts`: key -> {language: n}.
    """

    def share(key: str, lang: str) -> float:
        labels = identified.get(key)
        if not labels:
            return float("nan")
        return sum(l == lang for l in labels) / len(labels)

    success = np.full((len(sources), len(targets)), np.nan)
    control = np.full_like(success, np.nan)
    for i, b in enumerate(sources):
        deact = condition_key(b, None, True)
        reference = deact if identified.get(deact) else condition_key(b, None, False)
        for j, t in enumerate(targets):
            if b != t:
                success[i, j] = share(condition_key(b, t), t)
                control[i, j] = share(reference, t)
    counts = {}
    for key, labels in identified.items():
        c: dict[str, int] = {}
        for l in labels:
            c[l] = c.get(l, 0) + 1
        counts[key] = dict(sorted(c.items(), key=lambda kv: -kv[1]))
    return {
        "success": success,
        "control": control,
        "baseline_same": np.array([share(condition_key(b, None, False), b) for b in sources]),
        "deactivated_same": np.array([share(condition_key(b, None, True), b) for b in sources]),
        "counts": counts,
    }


@dataclass
class SteeringResult(Report):
    """Success rates of language steering.

    Attributes:
      sources: prompt (and deactivated) languages, rows.
      targets: activated languages, columns.
      success, control: float64 `[B, T]`; `baseline_same`, `deactivated_same`: float64 `[B]` (see `tally`).
      counts: condition key -> identified language -> count.
      generations: condition key -> list of {"prompt", "output", "language"}.
      identifier_accuracy: the identifier on held-out text of known language (`identifier_accuracy`), if measured.
    """

    sources: list[str]
    targets: list[str]
    success: np.ndarray
    control: np.ndarray
    baseline_same: np.ndarray
    deactivated_same: np.ndarray
    counts: dict
    generations: dict = field(default_factory=dict)
    identifier_accuracy: dict | None = None
    meta: dict = field(default_factory=dict)

    def mean_success(self) -> float:
        """Mean over the off-diagonal cells of `success`."""
        return float(np.nanmean(self.success)) if np.isfinite(self.success).any() else float("nan")

    def mean_control(self) -> float:
        return float(np.nanmean(self.control)) if np.isfinite(self.control).any() else float("nan")

    @property
    def lift(self) -> np.ndarray:
        """`success - control` `[B, T]`: what activating t adds over deactivating b alone."""
        return self.success - self.control

    def per_target(self) -> dict[str, dict[str, float]]:
        """Per target language: mean success, control and lift over the sources."""
        col = lambda m, j: float(np.nanmean(m[:, j])) if np.isfinite(m[:, j]).any() else float("nan")
        return {
            t: {"success": col(self.success, j), "control": col(self.control, j), "lift": col(self.lift, j)}
            for j, t in enumerate(self.targets)
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "jlang.SteeringResult/1",
            "sources": self.sources,
            "targets": self.targets,
            "success": self.success,
            "mean_success": self.mean_success(),
            "control": self.control,
            "mean_control": self.mean_control(),
            "per_target": self.per_target(),
            "baseline_same": self.baseline_same,
            "deactivated_same": self.deactivated_same,
            "counts": self.counts,
            "identifier_accuracy": self.identifier_accuracy,
            "meta": self.meta,
            "generations": self.generations,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SteeringResult:
        """Rebuild from `to_dict` output; the rates are recounted from the stored generations when present."""
        sources, targets = list(d["sources"]), list(d["targets"])
        generations = d.get("generations", {})
        if generations:
            t = tally({k: [g["language"] for g in v] for k, v in generations.items()}, sources, targets)
        else:
            nan = lambda xs: np.array([np.nan if x is None else x for x in xs], np.float64)
            t = {
                "success": from_json_matrix(d["success"]),
                "control": from_json_matrix(d["control"]),
                "baseline_same": nan(d["baseline_same"]),
                "deactivated_same": nan(d["deactivated_same"]),
                "counts": d["counts"],
            }
        return cls(
            sources=sources,
            targets=targets,
            generations=generations,
            identifier_accuracy=d.get("identifier_accuracy"),
            meta=d.get("meta", {}),
            **t,
        )

    def figures(self) -> dict[str, FigureWriter]:
        """`{prefix}.png`: success matrix, lift over the control, same-language shares."""
        return {"": functools.partial(plot_steering, self)}

    def table(self) -> str:
        lines = [
            "| prompt \\ target | " + " | ".join(self.targets) + " | no edit: same | deactivated: same |",
            "|---" + "|---:" * (len(self.targets) + 2) + "|",
        ]
        f = lambda x: "–" if not np.isfinite(x) else f"{x:.2f}"
        for i, b in enumerate(self.sources):
            cells = [f(x) for x in self.success[i]] + [f(self.baseline_same[i]), f(self.deactivated_same[i])]
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def plot_steering(result: SteeringResult, path: Path) -> Path:
    """Heat maps: success rate and lift (prompt x target language), and the same-language shares per prompt."""
    act = result.meta.get("activation", {})
    deact = result.meta.get("deactivate_value")
    title = (
        f"{result.meta.get('model', '')}: share identified as the target\n"
        f"({'source := ' + str(deact) + ', ' if deact is not None else ''}"
        f"target {act.get('kind', '')} x{act.get('strength', '')})"
    )
    pairs = {"rows": result.sources, "cols": result.targets, "fmt": "{:.2f}"}
    pairs |= {"xlabel": "target (activated) language", "ylabel": "prompt (deactivated) language"}
    panels = [
        dict(matrix=result.success, vmin=0.0, vmax=1.0, title=title, cbar_label="success rate", **pairs),
        dict(
            matrix=result.lift,
            diverging=True,
            vmin=-1.0,
            vmax=1.0,
            title="lift = success − share of t\nwithout activating t (control)",
            cbar_label="lift",
            **pairs,
        ),
        dict(
            matrix=np.stack([result.baseline_same, result.deactivated_same], axis=1),
            rows=result.sources,
            cols=["no edit", "deactivated"],
            vmin=0.0,
            vmax=1.0,
            title="share identified as\nthe prompt language",
            cbar_label="share",
            fmt="{:.2f}",
            xlabel="condition",
            ylabel="prompt language",
        ),
    ]
    size = (0.55 * len(result.targets) + 3, 0.45 * len(result.sources) + 2)
    return save_heatmaps(path, panels, ncols=3, panel_size=size)


def run_steering(
    masks: NeuronMasks,
    prompts: Mapping[str, Sequence[str]],
    *,
    generate: Generator,
    identify: Identifier,
    targets: Sequence[str] | None = None,
    deactivate_value: float | None = 0.0,
    activation: Activation = Activation(),
    stats=None,
    baselines: bool = True,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> SteeringResult:
    """Generate under every condition and tally the identified languages.

    Args:
      masks: the languages' neurons.
      prompts: source language -> prompts (`steering_prompts`).
      generate: `(prompts, edits) -> continuations` (`default_generator(model)`; any stub in tests).
      identify: `(texts) -> language codes` (`Py3LangID(languages)`).
      targets: activated languages (default: the sources).
      deactivate_value: value for the source's neurons (LAPE 0), or None to activate only.
      activation: how targets are activated; `stats` (ActivationStats) for `additive`.
      baselines: also run the no-edit and deactivate-only conditions.
    """
    sources = list(prompts)
    targets = list(targets) if targets is not None else sources
    for lang in set(sources) | set(targets):
        masks.index(lang)
    conditions: list[tuple[str, str | None, bool]] = []
    for b in sources:
        if baselines:
            conditions.append((b, None, False))
            if deactivate_value is not None:
                conditions.append((b, None, True))
        conditions += [(b, t, True) for t in targets if t != b]
    bar = tqdm(total=len(conditions), desc="steering", unit="condition", disable=not progress)
    identified: dict[str, list[str]] = {}
    generations: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    for b, t, deact in conditions:
        key = condition_key(b, t, deact)
        edits = steering_edits(
            masks, b if deact else None, t, deactivate_value=deactivate_value, activation=activation, stats=stats
        )
        outs = generate(list(prompts[b]), edits)
        langs = identify(outs)
        identified[key] = list(langs)
        generations[key] = [{"prompt": p, "output": o, "language": l} for p, o, l in zip(prompts[b], outs, langs)]
        bar.update(1)
    bar.close()
    counts = tally(identified, sources, targets)
    info = {
        "deactivate_value": deactivate_value,
        "activation": {"kind": activation.kind, "strength": activation.strength},
        "prompts_per_language": {b: len(p) for b, p in prompts.items()},
        "conditions": len(conditions),
        "seconds": time.perf_counter() - t0,
        "no_language_label": NO_LANGUAGE,
        "reference": "LAPE generation.py (Tang et al. 2024); "
        "Language Arithmetics batch_generation.py (Gurgurov et al. 2025)",
    }
    info.update(meta or {})
    return SteeringResult(sources=sources, targets=targets, generations=generations, meta=info, **counts)
