"""Language arithmetic and amplification studies on the default model (methods.md §4, §5, §1.2).

    python experiments/arithmetic.py configs/arithmetic.yaml [--set mc.items=8 ...]

Steps (each writes under `config.out`):

1. LAPE neurons: `{lape.out}/masks.npz` + `stats.npz` reused when they fit the
   config, else the `jlang run` chain (as `experiments/lape_reproduction.py`).
2. `fallback_d{δ}.json|png`: the fallback experiment of Language Arithmetics
   (Gurgurov et al. 2025, `fallbacks.py`): for each prompt language, deactivate
   the union of a growing list of languages' neurons and identify the language
   the model answers in (`jlang.evals.fallback`).
3. `lss_scale.*`, `lss_additive.*`, `lss_sweep.png`: factor sweeps of
   amplification scored by the Language Steering Score (Rahmanisa et al. 2025,
   `jlang.evals.lss`): multiplicative `a *= c` and additive `a += α·μ_t`; plus,
   from the statistics alone, the sign of the target's neurons on other
   languages' text (why multiplying cannot switch them on).
4. `mc.json|png`: a 4-way translation multiple-choice task from the parallel
   held-out corpus scored by option log-probability, with no edit, the answer
   language's neurons deactivated, and amplified (`jlang.evals.multiple_choice`).
5. `report.md`: numbers, figures, headline per study.

Run from the repository root (paths in the config are relative to it). With
`reuse_results: true` a step whose `{out}/{step}.json` exists is loaded, not recomputed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

import numpy as np
import yaml

import jlang
from jlang import config as config_lib
from jlang.data.sources import read_documents, resolve_corpus
from jlang.evals.fallback import IDENTIFY_LANGUAGES, FallbackResult, run_fallback
from jlang.evals.langid import Py3LangID
from jlang.evals.lss import LSSResult, cloze_items, lss, read_parallel
from jlang.evals.multiple_choice import MCResult, build_items, run_multiple_choice
from jlang.evals.steering import default_generator, steering_prompts
from jlang.io.report import new_figure, save_figure
from jlang.models.scoring import Scorer
from jlang.parallel import make_mesh


@dataclasses.dataclass(frozen=True)
class FallbackSection:
    enabled: bool = True
    prompt_languages: tuple[str, ...] = ("en", "fr", "ja")
    prompts_per_language: int = 6
    split: Literal["train", "heldout"] = "heldout"
    template: str = "Q: {text}\nA:"
    # "paper" (Language Arithmetics' order, then the masks' other languages), "count", "mask", or a list
    order: Literal["paper", "count", "mask"] | tuple[str, ...] = "paper"
    prompt_first: bool = True
    max_steps: int | None = 5
    # one run per value: Language Arithmetics' `negative` -1.5, and LAPE's 0
    deactivate_values: tuple[float, ...] = (-1.5, 0.0)
    max_new_tokens: int = 16
    repetition_penalty: float = 1.1
    identify_languages: tuple[str, ...] | None = None  # default: Language Arithmetics' languages + the masks'


@dataclasses.dataclass(frozen=True)
class SweepSection:
    enabled: bool = True
    items: int = 4  # cloze items per (base, target) pair
    bases: tuple[str, ...] = ("en", "ja")
    targets: tuple[str, ...] | None = (
        "en",
        "fr",
        "ja",
        "ru",
    )  # None: the masks' languages
    factors: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0)  # a *= factor
    alphas: tuple[float, ...] = (0.5, 1.0, 2.0)  # a += alpha * mu_t
    template: str = '"{text}" = "'
    batch_size: int = 16


@dataclasses.dataclass(frozen=True)
class MCSection:
    enabled: bool = True
    pairs: tuple[tuple[str, ...], ...] = (("en", "fr"), ("en", "ja"), ("en", "ru"))
    items: int = 10
    options: int = 4
    seed: int = 0
    max_chars: int | None = 80  # only messages of at most 80 characters (cheaper rows, comparable lengths)
    conditions: tuple[str, ...] = ("none", "deactivate=0", "scale=2", "additive=1")
    template: str = "{source_name}: {question}\n{target_name}:"
    batch_size: int = 16


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
    """`experiments/arithmetic.py`: fallback experiment, amplification sweeps with LSS, multiple choice under edits."""

    out: str = "runs/arithmetic"
    reuse_lape: bool = True
    reuse_results: bool = False
    vocab_chunk: int = 16384
    lape: config_lib.RunConfig = dataclasses.field(default_factory=config_lib.RunConfig)
    fallback: FallbackSection = dataclasses.field(default_factory=FallbackSection)
    lss: SweepSection = dataclasses.field(default_factory=SweepSection)
    mc: MCSection = dataclasses.field(default_factory=MCSection)


def _sibling(name: str):
    """Import `experiments/{name}.py` (its helpers are reused here, not copied)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    if name not in sys.modules:
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses resolve string annotations through sys.modules
        spec.loader.exec_module(mod)
    return sys.modules[name]


# ----------------------------------------------------------------------------- analysis helpers


def sign_table(stats, masks, bases, targets) -> list[dict]:
    """Per target t: its neurons' mean activation and P(a > 0) on t's own text and on the bases' text.

    `a *= c` maps a negative activation to a more negative one: if t's neurons sit
    below 0 on b's text, multiplying pushes them away from t's regime, while
    `a += α·μ_t` moves them towards it whatever their sign.
    """
    mean, probs = stats.mean, stats.probs
    out = []
    for t in targets:
        m = masks[t]
        if not m.any():
            continue
        own = stats.index(t)
        others = [stats.index(b) for b in bases if b != t]
        out.append(
            {
                "target": t,
                "neurons": int(m.sum()),
                "mean_own": float(mean[own][m].mean()),
                "p_own": float(probs[own][m].mean()),
                "mean_bases": float(np.mean([mean[k][m].mean() for k in others])) if others else float("nan"),
                "p_bases": float(np.mean([probs[k][m].mean() for k in others])) if others else float("nan"),
                "negative_on_bases": float(np.mean([(mean[k][m] < 0).mean() for k in others]))
                if others
                else float("nan"),
            }
        )
    return out


def sweep_figure(results: dict, path: Path) -> Path:
    """Mean LSS and mean shift of D against the strength, one column per intervention."""
    fig = new_figure(4.2 * len(results), 5.6)
    for col, (kind, res) in enumerate(results.items()):
        xlabel = "alpha (a += alpha·mu_t)" if kind == "additive" else "factor (a *= factor)"
        ax = fig.add_subplot(2, len(results), col + 1)
        ax.plot(res.factors, res.mean_lss(), marker="o")
        for i, b in enumerate(res.bases):
            ax.plot(
                res.factors,
                [np.nanmean(m[i]) for m in res.lss],
                lw=0.8,
                alpha=0.6,
                label=f"prompt {b}",
            )
        ax.axhline(0.5, color="grey", lw=0.5, ls="--")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"LSS, {kind}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("LSS (thick: mean over pairs)")
        ax.legend(fontsize=7)
        ax = fig.add_subplot(2, len(results), len(results) + col + 1)
        ax.plot(res.factors, [np.nanmean(m) for m in res.mean_shift], marker="o")
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean shift of D (nats)")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- report


def fmt(x, f="{:.2f}") -> str:
    return "–" if x is None or not np.isfinite(x) else f.format(x)


def fallback_name(value: float) -> str:
    """`fallback_d-1.5`, `fallback_d0`: the files of the run with deactivation value δ."""
    return f"fallback_d{value:g}"


def headline_fallback(fbs: dict) -> str:
    """Per δ: the most common output language (and its share) once the prompt's own language is off."""
    runs = []
    for fb in fbs.values():
        parts = []
        for p in fb.prompt_languages:
            if len(fb.steps[p]) < 2:
                continue
            top = fb.fallback(p)[1]
            parts.append(f"{p} → **{top}** ({fb.shares(p)[1][top]:.2f})")
        if parts:
            runs.append(f"δ = {fb.value:g}: " + ", ".join(parts))
    if not runs:
        return "no deactivation step ran."
    return (
        "with only the prompt's own language's neurons off (step 1), the most common output language: "
        + "; ".join(runs)
        + "."
    )


def fallback_section(cfg, fb, name: str) -> list[str]:
    width = max(len(fb.steps[p]) for p in fb.prompt_languages)
    head = "| prompt | " + " | ".join(f"step {i}" for i in range(width)) + " |"
    rule = "|---" + "|---:" * width + "|"
    lines = [
        f"### δ = {fb.value:g}",
        "",
        fb.table(),
        "",
        f"![fallback δ={fb.value:g}]({name}.png)",
        "",
        (
            "Share of outputs in the prompt's own language, and mean distinct character 3-grams of the outputs "
            "(1 = no repetition; a loop such as `si si si` scores near 0):"
        ),
        "",
        head,
        rule,
        *[f"| {p} own language | " + " | ".join(fmt(x) for x in fb.share_of(p, p)) + " |" for p in fb.prompt_languages],
        *[
            f"| {p} distinct 3-grams | " + " | ".join(fmt(x) for x in fb.distinctness(p)) + " |"
            for p in fb.prompt_languages
        ],
        "",
        "Examples (first prompt of each language at step 0, 1 and the last step):",
        "",
    ]
    for p in fb.prompt_languages:
        g = fb.generations.get(p) or []
        for i in sorted({0, min(1, len(g) - 1), len(g) - 1}):
            if i >= 0 and g and g[i]:
                out = g[i][0]["output"].strip().replace("\n", " ")[:90].replace("`", "'")
                lines.append(
                    f"- {p}, step {i} ({'+'.join(fb.steps[p][i]) or 'no edit'}): [{g[i][0]['language']}] `{out}`"
                )
    return lines + [""]


def model_description(cfg, masks, model=None) -> dict:
    """name, family, layers and neurons of the model: from the model when it was loaded, else from the masks."""
    if model is not None:
        return {
            "name": model.name,
            "family": model.family,
            "layers": model.num_layers,
            "neurons": model.num_neurons,
        }
    return {
        "name": masks.meta.get("model", cfg.lape.model.source),
        "family": masks.meta.get("family", "?"),
        "layers": masks.num_layers,
        "neurons": masks.num_neurons,
    }


def report(cfg, model: dict, masks, how, fbs, sweeps, signs, mc, timings) -> str:
    lines = [
        f"# Language arithmetic and amplification studies on `{model['name']}`",
        "",
        (
            f"Model `{model['name']}` ({model['family']}, {model['layers']} layers x {model['neurons']} neurons). LAPE "
            f"neurons: {masks.unique_count()} unique "
            f"({', '.join(f'{l} {int(masks[l].sum())}' for l in masks.languages)}); {how}."
        ),
        "",
        "## Headlines",
        "",
    ]
    heads = []
    if fbs:
        heads.append("- **Fallback**: " + headline_fallback(fbs))
    if sweeps:
        bits = [
            f"{kind} {res.strength_label(f)}: {m:.2f}"
            for kind, res in sweeps.items()
            for f, m in zip(res.factors, res.mean_lss())
        ]
        heads.append("- **Amplification (mean LSS over pairs; 0.5 = no preference)**: " + ", ".join(bits) + ".")
    if mc is not None:
        acc = mc.mean_accuracy("sum")
        heads.append(
            "- **Multiple choice (accuracy, sum of option log-probs; chance "
            f"{mc.chance():.2f})**: " + ", ".join(f"{c} {a:.3f}" for c, a in zip(mc.conditions, acc)) + "."
        )
    lines += heads + [""]

    if fbs:
        fb = next(iter(fbs.values()))
        lines += [
            "## Fallback experiment",
            "",
            (
                "Language Arithmetics' `fallbacks.py` (methods.md §5.5): prompts are "
                f"{cfg.fallback.prompts_per_language} held-out sentences per language as `{cfg.fallback.template!r}`; "
                f"{fb.meta.get('generator')}, {cfg.fallback.max_new_tokens} new tokens. Step i sets the neurons of the "
                f"union of the first i languages to δ at every position (order `{fb.meta.get('order')}`"
                f"{', prompt language first' if fb.meta.get('prompt_first') else ''}); step 0 is the unedited model. "
                "δ = −1.5 is the original's `negative` deactivation, δ = 0 LAPE's. "
                f"Output language: {fb.meta.get('identifier')}. Each cell: the language added at that step, then the "
                "most common output language and its share."
            ),
            "",
        ]
        for name, res in fbs.items():
            lines += fallback_section(cfg, res, name)

    if sweeps:
        any_res = next(iter(sweeps.values()))
        lines += [
            "## Amplification factor sweeps (LSS)",
            "",
            (
                f"Cloze items from the parallel held-out messages (`jlang.evals.lss`; prompt "
                f"`{any_res.meta.get('example_prompt')!r}`-style), {int(any_res.items.sum())} items over "
                f"{int((any_res.items > 0).sum())} (prompt b, target t) pairs. LSS(b→t) = share of items where the "
                "edit on t's neurons (every layer and position) raises log P(obj_t) − log P(obj_b); strict `>`, so a "
                "no-op scores 0 and 0.5 means no preference."
            ),
            "",
            "| intervention | strength | mean LSS | mean shift of D (nats) |",
            "|---|---:|---:|---:|",
        ]
        for kind, res in sweeps.items():
            for i, (f, m) in enumerate(zip(res.factors, res.mean_lss())):
                lines.append(f"| {kind} | {res.strength_label(f)} | {m:.3f} | {np.nanmean(res.mean_shift[i]):.2f} |")
        lines += ["", "![LSS sweep](lss_sweep.png)", ""]
        for kind, res in sweeps.items():
            lines += [
                f"Per target language ({kind}, mean LSS over the prompt languages):",
                "",
                "| strength | " + " | ".join(res.targets) + " |",
                "|---:|" + "---:|" * len(res.targets),
                *[
                    f"| {res.strength_label(f)} | "
                    + " | ".join(
                        fmt(np.nanmean(res.lss[i][:, j]) if np.isfinite(res.lss[i][:, j]).any() else np.nan)
                        for j in range(len(res.targets))
                    )
                    + " |"
                    for i, f in enumerate(res.factors)
                ],
                "",
                f"![LSS {kind}](lss_{kind}.png)",
                "",
            ]
        if signs:
            lines += [
                (
                    "Why multiplying works differently from adding, from the LAPE statistics alone: the mean "
                    "activation and P(a > 0) of t's neurons on t's own text and on the prompt languages' text (mean "
                    "over those languages; `negative` = share of t's neurons whose mean activation on a prompt "
                    "language's text is < 0)."
                ),
                "",
                "| t | neurons | mean a on t | P(a>0) on t | mean a on prompts | P(a>0) on prompts | negative |",
                "|---|---:|---:|---:|---:|---:|---:|",
                *[
                    f"| {s['target']} | {s['neurons']} | {s['mean_own']:.3f} | {s['p_own']:.2f} | "
                    f"{s['mean_bases']:.3f} | {s['p_bases']:.2f} | {s['negative_on_bases']:.2f} |"
                    for s in signs
                ],
                "",
            ]
    if mc is not None:
        lines += [
            "## Multiple choice under edits",
            "",
            (
                f"{mc.logprob.shape[-1]}-way translation choice from the parallel held-out corpus "
                f"(`jlang.evals.multiple_choice`): prompt `{mc.meta.get('example_prompt')!r}`, options = the "
                f"translation and {mc.logprob.shape[-1] - 1} other messages in the target language (seed "
                f"{cfg.mc.seed}). Conditions act on the answer (target) language's neurons at every position: "
                "`deactivate=v` sets them to v, `scale=c` multiplies, `additive=α` adds α·μ_t. "
                f"Chance = {mc.chance():.2f}."
            ),
            "",
            "Accuracy, argmax of the summed option log-prob:",
            "",
            mc.table("sum"),
            "",
            "Accuracy, argmax of the mean log-prob per option token:",
            "",
            mc.table("token"),
            "",
            "![multiple choice](mc.png)",
            "",
        ]
        none = mc.conditions.index("none") if "none" in mc.conditions else None
        if none is not None:
            lp = mc.logprob
            ans = mc.answers
            right = np.arange(lp.shape[-1])[None, :] == ans[:, None]  # [N, O]
            gold = lp[:, right]  # [C, N]
            wrong = lp[:, ~right].reshape(len(lp), len(ans), -1).mean(axis=-1)  # [C, N]
            flips = {norm: mc.flips(norm) for norm in ("sum", "token")}
            lines += [
                (
                    "Paired view against no edit: the change of the mean summed log-prob of the correct option and of "
                    "the wrong ones (nats), and the items each condition gets wrong that no edit got right "
                    "(lost) and the reverse (gained):"
                ),
                "",
                "| condition | Δ log P(correct) | Δ log P(wrong) | sum: lost / gained | per token: lost / gained |",
                "|---|---:|---:|---:|---:|",
                *[
                    f"| {c} | {np.mean(gold[i] - gold[none]):+.2f} | {np.mean(wrong[i] - wrong[none]):+.2f} | "
                    f"{flips['sum'][c][0]} / {flips['sum'][c][1]} | {flips['token'][c][0]} / {flips['token'][c][1]} |"
                    for i, c in enumerate(mc.conditions)
                ],
                "",
            ]
    lines += [
        "## Wall time",
        "",
        "This run: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".",
    ]
    earlier = {}
    for label, res in (
        *((f"fallback δ={r.value:g}", r) for r in fbs.values()),
        *((f"LSS ({k})", r) for k, r in sweeps.items()),
        ("multiple choice", mc),
    ):
        if res is not None and label not in timings and res.meta.get("seconds"):
            earlier[label] = res.meta["seconds"]
    if earlier:
        lines += [
            "",
            "Reused results (their own run): " + ", ".join(f"{k} {v:.0f} s" for k, v in earlier.items()) + ".",
        ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="e.g. configs/arithmetic.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. mc.items=8",
    )
    args = parser.parse_args(argv)
    cfg: ArithmeticConfig = config_lib.load_config(args.config, ArithmeticConfig, args.set)
    for pair in cfg.mc.pairs:
        if len(pair) != 2:
            raise config_lib.ConfigError(f"mc.pairs: each pair is [source, target], got {list(pair)}")

    repro = _sibling("lape_reproduction")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config_lib.to_dict(cfg))), sort_keys=False))
    log = lambda msg: print(f"[arithmetic] {msg}", flush=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    masks, stats, how = repro.lape_neurons(cfg, log)
    timings["LAPE neurons"] = time.perf_counter() - t
    languages = list(masks.languages)

    loaded: dict = {}

    def get_model():
        """The model, loaded on first use (a run whose every step is reused never loads it)."""
        if "model" not in loaded:
            t = time.perf_counter()
            mesh = None
            if cfg.lape.mesh.data or cfg.lape.mesh.model:
                mesh = make_mesh(cfg.lape.mesh.data, cfg.lape.mesh.model)
            m = jlang.load_model(cfg.lape.model.source, dtype=cfg.lape.model.dtype, mesh=mesh)
            masks.check_fits(m.num_layers, m.num_neurons, model=m.name)
            timings["load model"] = time.perf_counter() - t
            loaded["model"] = m
        return loaded["model"]

    parallel_path = (
        None if cfg.lape.corpus.source == "default" else Path(cfg.lape.corpus.source) / "parallel" / "heldout.jsonl"
    )

    mc = None
    sweeps: dict = {}
    scorer = None

    def score_fn(batch_size: int):
        """Summed log-probs of token rows under edits, from one `Scorer` shared by LSS and multiple choice (one
        `jit`: its compiled programs are reused by both)."""
        nonlocal scorer
        scorer = scorer or Scorer(get_model(), vocab_chunk=cfg.vocab_chunk)
        return lambda rows, edits: scorer.row_sums(rows, edits, batch_size=batch_size)

    fbs: dict = {}
    for value in cfg.fallback.deactivate_values if cfg.fallback.enabled else ():
        name = fallback_name(value)
        fbs[name] = repro.load_existing(cfg, name, FallbackResult, log)
        if fbs[name] is not None:
            continue

        t = time.perf_counter()
        model = get_model()
        c = cfg.fallback
        corpus = resolve_corpus(cfg.lape.corpus.source, c.prompt_languages, c.split)
        texts = {l: [d for d in read_documents(corpus[l]) if isinstance(d, str)] for l in c.prompt_languages}
        id_langs = list(c.identify_languages or dict.fromkeys([*IDENTIFY_LANGUAGES, *languages]))
        identify = Py3LangID(id_langs)
        generate, gen_how = default_generator(
            model,
            max_new_tokens=c.max_new_tokens,
            repetition_penalty=c.repetition_penalty,
        )
        fbs[name] = run_fallback(
            masks,
            steering_prompts(texts, c.prompts_per_language, c.template),
            generate=generate,
            identify=identify,
            order=c.order if isinstance(c.order, str) else list(c.order),
            prompt_first=c.prompt_first,
            max_steps=c.max_steps,
            value=value,
            meta={
                "model": model.name,
                "generator": gen_how,
                "identifier": f"{identify.name} over {' '.join(id_langs)}",
                "template": c.template,
                "max_new_tokens": c.max_new_tokens,
            },
        )
        fbs[name].save(out / name)
        timings[f"fallback δ={value:g}"] = time.perf_counter() - t
        log(f"fallback δ={value:g} in {timings[f'fallback δ={value:g}']:.0f} s\n{fbs[name].table()}")

    signs = []
    if cfg.lss.enabled:
        c = cfg.lss
        targets = list(c.targets or languages)
        rows = None
        for kind, strengths in (("scale", c.factors), ("additive", c.alphas)):
            name = f"lss_{kind}"
            res = repro.load_existing(cfg, name, LSSResult, log)
            if res is None:
                t = time.perf_counter()
                rows = rows if rows is not None else read_parallel(parallel_path)
                items = [
                    it
                    for b in c.bases
                    for tl in targets
                    if b != tl
                    for it in cloze_items(rows, b, tl, n=c.items, template=c.template)
                ]
                res = lss(
                    get_model(),
                    masks,
                    items,
                    factors=strengths,
                    intervention=kind,
                    stats=stats,
                    score_fn=score_fn(c.batch_size),
                )
                res.save(out / name)
                timings[f"LSS ({kind})"] = time.perf_counter() - t
                log(
                    f"LSS {kind} in {timings[f'LSS ({kind})']:.0f} s: "
                    + ", ".join(f"{res.strength_label(f)} {m:.3f}" for f, m in zip(res.factors, res.mean_lss()))
                )
            sweeps[kind] = res
        sweep_figure(sweeps, out / "lss_sweep.png")
        signs = sign_table(stats, masks, list(c.bases), targets)

    if cfg.mc.enabled:
        mc = repro.load_existing(cfg, "mc", MCResult, log)
    if cfg.mc.enabled and mc is None:
        t = time.perf_counter()
        c = cfg.mc
        rows = read_parallel(parallel_path)
        items = [
            it
            for s, tl in c.pairs
            for it in build_items(
                rows,
                s,
                tl,
                n=c.items,
                options=c.options,
                seed=c.seed,
                max_chars=c.max_chars,
            )
        ]
        mc = run_multiple_choice(
            get_model(),
            masks,
            items,
            conditions=c.conditions,
            stats=stats,
            template=c.template,
            score_fn=score_fn(c.batch_size),
        )
        mc.save(out / "mc")
        timings["multiple choice"] = time.perf_counter() - t
        log(f"multiple choice in {timings['multiple choice']:.0f} s\n{mc.table('sum')}")

    (out / "report.md").write_text(
        report(
            cfg,
            model_description(cfg, masks, loaded.get("model")),
            masks,
            how,
            fbs,
            sweeps,
            signs,
            mc,
            timings,
        ),
        encoding="utf-8",
    )
    log(f"wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
