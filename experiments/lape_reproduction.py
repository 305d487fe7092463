"""Reproduce LAPE's deactivation study (Tang et al. 2024, RUCAIBox/Language-Specific-Neurons) on the default model.

    python experiments/lape_reproduction.py configs/lape_reproduction.yaml [--set ppl.batch_size=8 ...]

Steps (each writes under `config.out`):

1. LAPE neurons: `{lape.out}/masks.npz` and `stats.npz` are reused when present
   and made for the configured model and languages (`reuse_lape`); otherwise the
   whole `jlang run` chain (`jlang.methods.chain.run_lape`) makes them.
2. `ppl.json|png`: perplexity on the held-out split with each language's neurons
   set to 0 (`jlang.evals.perplexity.ppl_matrix`), and whether the diagonal of
   ΔPPL dominates (deactivating k hurts k far more than the other languages).
3. `steering.json|png`: generations from prompts in b with b's neurons
   deactivated and t's activated, identified by py3langid (`jlang.evals.steering`),
   plus the identifier's accuracy on the held-out sentences.
4. optional `lss.*` and `lens.*`.
5. `report.md`: the numbers and figures.

Paths in the config are relative to the working directory (run from the repository root).
With `reuse_results: true` an enabled step whose `{out}/{step}.json` exists is
loaded instead of recomputed (e.g. `--set reuse_results=true --set lens.enabled=true`
adds the logit lens to a finished run).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from jlang.evals.langid import Py3LangID, identifier_accuracy
from jlang.evals.logit_lens import LensResult, logit_lens
from jlang.evals.lss import LSSResult, cloze_items, lss, read_parallel
from jlang.evals.perplexity import PPLResult, ppl_matrix
from jlang.evals.steering import Activation, SteeringResult, default_generator, run_steering, steering_prompts
from jlang.evals.token_lang import TokenTagger, token_counts
from jlang.masks import NeuronMasks
from jlang.methods.chain import run_lape
from jlang.parallel import make_mesh
from jlang.stats import ActivationStats


@dataclasses.dataclass(frozen=True)
class PPLSection:
    enabled: bool = True
    split: Literal["train", "heldout"] = "heldout"
    mode: Literal["pad", "pack"] = "pad"
    batch_size: int = 16
    seq_len: int = 128
    edit_value: float = 0.0
    vocab_chunk: int = 16384
    max_tokens_per_language: int | None = None


@dataclasses.dataclass(frozen=True)
class SteeringSection:
    enabled: bool = True
    split: Literal["train", "heldout"] = "heldout"
    prompts_per_language: int = 6
    template: str = "Q: {text}\nA:"
    max_new_tokens: int = 32
    repetition_penalty: float = 1.1
    deactivate_value: float | None = 0.0
    activation: Literal["additive", "scale"] = "additive"
    strength: float = 1.0
    targets: tuple[str, ...] | None = None
    identifier_accuracy: bool = True


@dataclasses.dataclass(frozen=True)
class LSSSection:
    enabled: bool = False
    items: int = 20
    interventions: tuple[Literal["additive", "scale"], ...] = ("additive", "scale")
    alphas: tuple[float, ...] = (1.0, 2.0)  # additive: a += alpha * mu_t
    factors: tuple[float, ...] = (2.0, 5.0, 10.0)  # scale: a *= factor
    bases: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    batch_size: int = 16


@dataclasses.dataclass(frozen=True)
class LensSection:
    enabled: bool = False
    k: int = 10
    max_texts: int = 16
    where: Literal["all", "last"] = "all"
    script_only: bool = False


@dataclasses.dataclass(frozen=True)
class ReproductionConfig:
    """`experiments/lape_reproduction.py`: LAPE neurons, deactivation PPL matrix, steering (+ LSS, logit lens)."""

    out: str = "runs/lape_reproduction"
    reuse_lape: bool = True
    # Load a step's result from {out}/{ppl,steering,lss,lens}.json when it exists instead of recomputing it
    # (to add a step, or rebuild report.md, without redoing the others).
    reuse_results: bool = False
    lape: config_lib.RunConfig = config_lib.RunConfig()
    ppl: PPLSection = PPLSection()
    steering: SteeringSection = SteeringSection()
    lss: LSSSection = LSSSection()
    lens: LensSection = LensSection()


# ----------------------------------------------------------------------------- steps


def lape_neurons(cfg: ReproductionConfig, log) -> tuple[object, object, str]:
    """(masks, stats, how): reuse `{lape.out}` when it fits the config, else run the LAPE chain."""
    root = Path(cfg.lape.out)
    masks_path, stats_path = root / "masks.npz", root / "stats.npz"
    if cfg.reuse_lape and masks_path.is_file() and stats_path.is_file():
        masks, stats = NeuronMasks.load(masks_path), ActivationStats.load(stats_path)
        source = cfg.lape.model.source
        fits = (
            masks.meta.get("model") in (source, Path(source).name, Path(source).stem)
            and list(masks.languages) == list(cfg.lape.corpus.languages)
            and masks.meta.get("method") == cfg.lape.identify.method
        )
        if fits:
            log(f"reusing LAPE neurons from {masks_path} ({masks.unique_count()} neurons)")
            return masks, stats, f"reused {masks_path}"
        log(f"{masks_path} was made for another model/languages/method; running LAPE again")
    t = time.perf_counter()
    result = run_lape(cfg.lape)
    log(f"LAPE chain done in {time.perf_counter() - t:.0f} s")
    return (
        NeuronMasks.load(result["masks"]),
        ActivationStats.load(result["stats"]),
        f"ran jlang run ({result['timings']})",
    )


def load_existing(cfg: ReproductionConfig, name: str, cls, log):
    """`cls.from_dict` of `{out}/{name}.json` when `reuse_results` and the file exists (figures redrawn), else None."""
    path = Path(cfg.out) / f"{name}.json"
    if not (cfg.reuse_results and path.is_file()):
        return None
    log(f"reusing {path}")
    result = cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
    result.save(Path(cfg.out) / name)
    return result


def fmt_row(values, f="{:.2f}") -> str:
    return " | ".join("–" if not np.isfinite(v) else f.format(v) for v in values)


def dominance_text(ppl) -> list[str]:
    lines = []
    for which, unit in (("delta_ppl", "ΔPPL"), ("delta_nll", "ΔNLL")):
        dom = ppl.diagonal_dominance(which)
        per = dom["per_language"]
        lines += [
            f"**{unit}**: the diagonal entry is the largest of its row (deactivating k hurts k more than any other "
            f"language) for **{dom['row_dominant']}/{dom['languages']}** languages and the largest of its column "
            f"(k suffers most from its own neurons) for **{dom['col_dominant']}/{dom['languages']}**. "
            f"Median {unit}[k,k] / max_j≠k {unit}[k,j] = **{dom['median_ratio_max']:.2f}**, "
            f"median {unit}[k,k] / mean_j≠k {unit}[k,j] = **{dom['median_ratio_mean']:.2f}**.",
            "",
            f"| k | {unit}[k,k] | max j≠k | mean j≠k | own / max | own / mean | row max? | column max? |",
            "|---|---:|---:|---:|---:|---:|:-:|:-:|",
        ]
        for k, v in per.items():
            lines.append(
                f"| {k} | {v['own']:.3f} | {v['max_other']:.3f} | {v['mean_other']:.3f} | {v['ratio_max']:.2f} | "
                f"{v['ratio_mean']:.2f} | {'yes' if v['row_dominant'] else 'no'} | "
                f"{'yes' if v['col_dominant'] else 'no'} |"
            )
        lines.append("")
    return lines


def verdict(ppl) -> str:
    """A one-paragraph answer, with numbers, to: does deactivating k hurt k far more than the other languages?"""
    dom = ppl.diagonal_dominance("delta_ppl")
    n, rows, cols = dom["languages"], dom["row_dominant"], dom["col_dominant"]
    delta, per = ppl.delta_ppl, dom["per_language"]
    exceptions = []
    for k, v in per.items():
        if not v["row_dominant"]:
            i = ppl.rows.index(k)
            others = [(float(delta[i, j]), c) for j, c in enumerate(ppl.columns) if c != k]
            top = max(others)
            exceptions.append(f"{k} (ΔPPL[{k},{k}] = {v['own']:.1f} < ΔPPL[{k},{top[1]}] = {top[0]:.1f})")
    if rows == n:
        word = "Yes"
    elif rows >= 0.75 * n:
        word = "Mostly"
    elif rows >= 0.5 * n or cols >= 0.75 * n:
        word = "Partly"
    else:
        word = "No"
    text = (
        f"{word}: deactivating language k's neurons raises k's PPL more than any other language's for {rows}/{n} "
        f"languages (row maximum), and k's PPL rises most under its own deactivation for {cols}/{n} (column "
        f"maximum); the median ratio of ΔPPL[k,k] to the mean ΔPPL[k,j≠k] is {dom['median_ratio_mean']:.1f} "
        f"(to the max: {dom['median_ratio_max']:.2f})."
    )
    if exceptions:
        text += " Rows where another language suffers more: " + "; ".join(exceptions) + "."
    return text


def report(cfg, model, masks, how, ppl, steer, lss_res, lens_res, timings) -> str:
    lines = [
        f"# LAPE reproduction on `{model.name}`",
        "",
        f"Model `{model.name}` ({model.family}, {model.num_layers} layers x {model.num_neurons} neurons, "
        f"vocabulary {model.config.vocab_size:,}). LAPE neurons: {masks.unique_count()} unique "
        f"({', '.join(f'{l} {int(masks[l].sum())}' for l in masks.languages)}); {how}.",
        "",
    ]
    if ppl is not None:
        none = ppl.rows.index("none")
        lines += [
            "## Deactivation perplexity (held-out split)",
            "",
            f"Rows: the language whose LAPE neurons are set to {cfg.ppl.edit_value:g} in every layer (LAPE `ppl.py`); "
            f"columns: evaluated language; {cfg.ppl.mode} mode (one held-out sentence per row), "
            f"{int(ppl.tokens.sum()):,} scored tokens in {int(ppl.sequences.sum()):,} sentences. PPL = exp(mean over "
            "sentences of the per-sentence mean NLL) (NJUNLP convention; LAPE prints the NLL itself, in `ppl.json`).",
            "",
            "Baseline PPL (no edit): " + ", ".join(f"{c} {p:.1f}" for c, p in zip(ppl.columns, ppl.ppl[none])) + ". "
            "Absolute PPLs depend on the text (the default corpus holds short UI messages without context) and differ "
            "across languages, so ΔNLL = log(PPL/PPL_none) compares languages better than ΔPPL; both are given.",
            "",
            "### ΔPPL = PPL(deactivated) − PPL(none)",
            "",
            ppl.table("delta_ppl", "{:.2f}"),
            "",
            "### ΔNLL = log(PPL / PPL_none)",
            "",
            ppl.table("delta_nll", "{:.3f}"),
            "",
            "![ΔPPL heat map](ppl.png)",
            "",
            "### Does the diagonal dominate?",
            "",
            verdict(ppl),
            "",
            *dominance_text(ppl),
        ]
    if steer is not None:
        act = steer.meta["activation"]
        lines += [
            "## Language steering",
            "",
            f"Prompts: {cfg.steering.prompts_per_language} held-out sentences per language as "
            f"`{cfg.steering.template!r}`; {steer.meta.get('generator')}, {cfg.steering.max_new_tokens} new tokens. "
            f"Condition b→t: b's neurons set to {steer.meta['deactivate_value']}, then t's neurons {act['kind']} "
            f"(strength {act['strength']:g}{', a += s·mean activation of t' if act['kind'] == 'additive' else ''}). "
            f"Language of each generation: {steer.meta.get('identifier')} restricted to the study's languages. "
            "Success = identified as t.",
            "",
            f"Mean success over the {int(np.isfinite(steer.success).sum())} off-diagonal pairs: "
            f"**{steer.mean_success():.3f}** (a random one of {len(steer.targets)} languages: "
            f"{1 / len(steer.targets):.3f}). Control: the share of generations already in t when b is deactivated but "
            f"t is not activated: {steer.mean_control():.3f}; mean lift (success − control) "
            f"**{steer.mean_success() - steer.mean_control():.3f}**. The model often falls back to English when a "
            "prompt language's neurons are off (and answers many non-English prompts in English even without edits), "
            "so English as a target succeeds largely without steering: read its column against the control.",
            "",
            steer.table(),
            "",
            "Per target language (mean over sources):",
            "",
            "| | " + " | ".join(steer.targets) + " |",
            "|---|" + "---:|" * len(steer.targets),
            *[
                f"| {name} | " + fmt_row([v[key] for v in steer.per_target().values()]) + " |"
                for name, key in (("success", "success"), ("control", "control"), ("lift", "lift"))
            ],
            "",
            "![steering](steering.png)",
            "",
        ]
        if steer.identifier_accuracy:
            acc = steer.identifier_accuracy
            lines += [
                f"Identifier accuracy on the held-out sentences: macro **{acc['macro']:.3f}**, micro "
                f"{acc['micro']:.3f}.",
                "",
                "| " + " | ".join(acc["per_language"]) + " |",
                "|" + "---:|" * len(acc["per_language"]),
                "| " + fmt_row(acc["per_language"].values()) + " |",
                "",
            ]
    for kind, res in lss_res.items():
        lines += [
            f"## Language Steering Score ({res.meta.get('intervention')})",
            "",
            f"Cloze items from the parallel held-out messages (prompt `{res.meta.get('example_prompt')!r}`-style: "
            "the message in b quoted, objects = the message in b vs its translation in t; `jlang.evals.lss`); "
            f"{int(res.items.sum())} items over {int((res.items > 0).sum())} pairs. LSS(b→t) = share of "
            "items where the intervention on t's neurons raises log P(obj_t) − log P(obj_b); 0.5 = no preference.",
            "",
            "| strength | mean LSS | mean shift of D (nats) |",
            "|---:|---:|---:|",
            *[
                f"| {res.strength_label(f)} | {m:.3f} | {np.nanmean(res.mean_shift[i]):.3f} |"
                for i, (f, m) in enumerate(zip(res.factors, res.mean_lss()))
            ],
            "",
            f"![LSS](lss_{kind}.png)",
            "",
        ]
    if lens_res is not None:
        own, raw = lens_res.own_share("final_norm"), lens_res.own_share("raw")
        L = own.shape[0]
        lines += [
            "## Logit lens",
            "",
            f"Top-{lens_res.meta.get('k')} tokens of every layer's residual stream ({lens_res.meta.get('where')} "
            f"positions of {lens_res.meta.get('max_texts')} held-out sentences per language), tagged by script and, "
            "for Latin/Han tokens, by train-split frequency (`jlang.evals.token_lang`). Share of the prompt's "
            "own language:",
            "",
            "| layer | " + " | ".join(lens_res.languages) + " |",
            "|---:|" + "---:|" * len(lens_res.languages),
            *[f"| {l} | " + fmt_row(own[l]) + " |" for l in sorted({0, L // 4, L // 2, 3 * L // 4, L - 2, L - 1})],
            f"| {L - 1} (no final norm) | " + fmt_row(raw[L - 1]) + " |",
            "",
            "![logit lens](lens.png)",
            "",
            "![labels per layer](lens_labels.png)",
            "",
        ]
    earlier = {}
    for label, res in (
        ("PPL matrix", ppl),
        ("steering", steer),
        *((f"LSS ({k})", r) for k, r in lss_res.items()),
        ("logit lens", lens_res),
    ):
        if res is not None and label not in timings:
            sec = res.meta.get("seconds")
            earlier[label] = sum(sec.values()) if isinstance(sec, dict) else sec
    lines += ["## Wall time", "", "This run: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + "."]
    if earlier:
        lines += [
            "",
            "Reused results (their own run): " + ", ".join(f"{k} {v:.0f} s" for k, v in earlier.items() if v) + ".",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg: ReproductionConfig = config_lib.load_config(args.config, ReproductionConfig, args.set)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config_lib.to_dict(cfg))), sort_keys=False))
    log = lambda msg: print(f"[lape_reproduction] {msg}", flush=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    masks, stats, how = lape_neurons(cfg, log)
    timings["LAPE neurons"] = time.perf_counter() - t
    languages = list(masks.languages)

    t = time.perf_counter()
    mesh = make_mesh(cfg.lape.mesh.data, cfg.lape.mesh.model) if (cfg.lape.mesh.data or cfg.lape.mesh.model) else None
    model = jlang.load_model(cfg.lape.model.source, dtype=cfg.lape.model.dtype, mesh=mesh)
    masks.check_fits(model.num_layers, model.num_neurons, model=model.name)
    timings["load model"] = time.perf_counter() - t

    ppl = steer = lens_res = None
    lss_res: dict = {}
    if cfg.ppl.enabled:
        ppl = load_existing(cfg, "ppl", PPLResult, log)
    if cfg.ppl.enabled and ppl is None:
        t = time.perf_counter()
        c = cfg.ppl
        ppl = ppl_matrix(
            model,
            masks,
            resolve_corpus(cfg.lape.corpus.source, languages, c.split),
            languages=languages,
            batch_size=c.batch_size,
            seq_len=c.seq_len,
            mode=c.mode,
            edit_value=c.edit_value,
            vocab_chunk=c.vocab_chunk,
            max_tokens=c.max_tokens_per_language,
        )
        ppl.save(out / "ppl")
        timings["PPL matrix"] = time.perf_counter() - t
        log(f"PPL matrix in {timings['PPL matrix']:.0f} s\n{ppl.table('delta_ppl')}\n{verdict(ppl)}")

    if cfg.steering.enabled:
        steer = load_existing(cfg, "steering", SteeringResult, log)
    if cfg.steering.enabled and steer is None:
        t = time.perf_counter()
        c = cfg.steering
        targets = list(c.targets) if c.targets else languages
        study = list(dict.fromkeys(languages + targets))
        corpus = resolve_corpus(cfg.lape.corpus.source, study, c.split)
        texts = {l: [d for d in read_documents(corpus[l]) if isinstance(d, str)] for l in study}
        identify = Py3LangID(study)
        generate, gen_how = default_generator(
            model, max_new_tokens=c.max_new_tokens, repetition_penalty=c.repetition_penalty
        )
        steer = run_steering(
            masks,
            steering_prompts({l: texts[l] for l in languages}, c.prompts_per_language, c.template),
            generate=generate,
            identify=identify,
            targets=targets,
            deactivate_value=c.deactivate_value,
            activation=Activation(c.activation, c.strength),
            stats=stats,
            meta={
                "model": model.name,
                "generator": gen_how,
                "identifier": identify.name,
                "max_new_tokens": c.max_new_tokens,
            },
        )
        if c.identifier_accuracy:
            steer.identifier_accuracy = identifier_accuracy(identify, texts)
        steer.save(out / "steering")
        timings["steering"] = time.perf_counter() - t
        log(f"steering in {timings['steering']:.0f} s, mean success {steer.mean_success():.3f}\n{steer.table()}")

    for kind in cfg.lss.interventions if cfg.lss.enabled else ():
        name = f"lss_{kind}"
        lss_res[kind] = load_existing(cfg, name, LSSResult, log)
        if lss_res[kind] is not None:
            continue
        t = time.perf_counter()
        c = cfg.lss
        rows = read_parallel(
            None if cfg.lape.corpus.source == "default" else Path(cfg.lape.corpus.source) / "parallel" / "heldout.jsonl"
        )
        items = [
            it
            for b in (c.bases or languages)
            for tl in (c.targets or languages)
            if b != tl
            for it in cloze_items(rows, b, tl, n=c.items)
        ]
        lss_res[kind] = lss(
            model,
            masks,
            items,
            factors=c.alphas if kind == "additive" else c.factors,
            intervention=kind,
            stats=stats,
            batch_size=c.batch_size,
            vocab_chunk=cfg.ppl.vocab_chunk,
        )
        lss_res[kind].save(out / name)
        timings[f"LSS ({kind})"] = time.perf_counter() - t

    if cfg.lens.enabled:
        lens_res = load_existing(cfg, "lens", LensResult, log)
    if cfg.lens.enabled and lens_res is None:
        t = time.perf_counter()
        c = cfg.lens
        counts = None
        if not c.script_only:
            counts = token_counts(
                resolve_corpus(cfg.lape.corpus.source, languages, "train"),
                model.tokenizer,
                languages,
                model.config.vocab_size,
            )
        tagger = TokenTagger.from_tokenizer(
            model.tokenizer, languages, vocab_size=model.config.vocab_size, counts=counts
        )
        lens_res = logit_lens(
            model,
            resolve_corpus(cfg.lape.corpus.source, languages, "heldout"),
            languages=languages,
            tagger=tagger,
            k=c.k,
            max_texts=c.max_texts,
            where=c.where,
            vocab_chunk=cfg.ppl.vocab_chunk,
        )
        lens_res.save(out / "lens")
        timings["logit lens"] = time.perf_counter() - t

    (out / "report.md").write_text(
        report(cfg, model, masks, how, ppl, steer, lss_res, lens_res, timings), encoding="utf-8"
    )
    log(f"wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
