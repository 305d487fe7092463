"""Ternary neurons (Zhang et al. 2025, NJUNLP/Language-Neurons-Alignment) on the default model.

    python experiments/ternary_default.py configs/ternary_default.yaml [--set max_tokens_per_language=1000 ...]

The paper counts activations on model answers to MGSM questions, response tokens only
(full-text counts minus prompt-only counts, methods.md §3.2-3.3). Here the prompts
and responses come from the default corpus's parallel held-out messages: for each
target language X, the prompt asks in English for the translation of the English
message into X and the response is the human translation in X. jlang's pad mode
counts the response tokens only (`jlang.data.pipeline`: the same tokens as NJUNLP's
subtraction, without a second pass).

Steps (all under `config.out`):

1. `stats.npz`: response-only activation statistics (reused when made with the same settings).
2. `masks.npz`: `jlang.ternary` with AutoSweep λ (largest λ in [0, 0.2] with no selected
   neuron assigned to every language).
3. Neuron types per layer (specific / related / general, `jlang.analysis.compare.neurons.model_neurons`),
   `types.png`, `masks.png`; the four layer stages (`jlang.analysis.compare.profile.layer_profile`), `stages.png`.
4. Overlap with the LAPE neurons of `runs/lape_default/masks.npz` when present.
5. `report.md`.
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
from jlang.analysis.compare.neurons import TYPE_NAMES, jaccard, model_neurons, type_counts
from jlang.analysis.compare.profile import layer_profile
from jlang.analysis.compare.report import draw_profile, plot_type_counts, stages_table
from jlang.data.langinfo import language_name
from jlang.evals.lss import read_parallel
from jlang.io.report import new_figure, save_figure, write_json
from jlang.masks import NeuronMasks
from jlang.stats import ActivationStats

LANGUAGES = ("en", "zh", "fr", "es", "ru", "ja", "de", "ar", "ko", "id", "vi", "hi")


@dataclasses.dataclass(frozen=True)
class PromptSection:
    # {language}/{source_language}: English names; {source}: the source-language message
    template: str = (
        "Translate the following text from {source_language} into {language}.\n{source_language}: {source}\n{language}:"
    )
    # for the source language itself (a translation into itself would be odd)
    source_template: str = "Repeat the following {source_language} text.\n{source_language}: {source}\n{language}:"
    response_prefix: str = " "  # the response follows "...French:" after a space
    source_language: str = "en"


@dataclasses.dataclass(frozen=True)
class IdentifySection:
    top_rate: float = 0.01
    lam: float | Literal["auto"] = "auto"
    activation_bar_ratio: float = 0.95


@dataclasses.dataclass(frozen=True)
class StagesSection:
    curve: Literal["both", "divergence", "language_share"] = "both"
    count: int = 4


@dataclasses.dataclass(frozen=True)
class TernaryDefaultConfig:
    """`experiments/ternary_default.py`: ternary neurons on response tokens of translation prompts."""

    out: str = "runs/ternary_default"
    model: config_lib.ModelSection = config_lib.ModelSection()
    # parallel JSONL ({"text": {lang: message}} per line); null = the default corpus's parallel/heldout.jsonl
    parallel: str | None = None
    languages: tuple[str, ...] = LANGUAGES
    prompt: PromptSection = PromptSection()
    batch_size: int = 8
    seq_len: int = 64
    max_tokens_per_language: int | None = 2500  # response tokens counted per language
    identify: IdentifySection = IdentifySection()
    stages: StagesSection = StagesSection()
    lape_masks: str | None = "runs/lape_default/masks.npz"  # overlap with these LAPE neurons when the file exists
    reuse_stats: bool = True


def prompt_pairs(rows, languages, p: PromptSection) -> dict[str, list[tuple[str, str]]]:
    """Per target language, (English prompt asking for the translation, the human translation) pairs."""
    src = p.source_language
    out = {}
    for lang in languages:
        template = p.source_template if lang == src else p.template
        pairs = []
        for row in rows:
            if row.get(src) and row.get(lang):
                prompt = template.format(
                    language=language_name(lang),
                    source_language=language_name(src),
                    source=row[src],
                )
                pairs.append((prompt, p.response_prefix + row[lang]))
        if not pairs:
            raise ValueError(f"the parallel file has no row with both {src!r} and {lang!r}")
        out[lang] = pairs
    return out


def _settings(cfg: TernaryDefaultConfig) -> dict:
    return json.loads(
        json.dumps(
            {
                k: config_lib.to_dict(cfg)[k]
                for k in (
                    "model",
                    "parallel",
                    "languages",
                    "prompt",
                    "batch_size",
                    "seq_len",
                    "max_tokens_per_language",
                )
            }
        )
    )


def report(cfg, stats, masks, neurons, profile, lape_overlap, pairs, timings) -> str:
    counts = type_counts(neurons.types)
    k = len(masks.languages)
    lc = masks.language_count()
    meta = masks.meta
    trace = meta.get("autosweep") or []
    example_lang = next(
        (l for l in masks.languages if l != cfg.prompt.source_language),
        masks.languages[0],
    )
    ex = pairs[example_lang][0]
    gen_layers = np.argsort(-counts[3], kind="stable")[:3]
    lines = [
        f"# Ternary neurons on `{stats.meta.get('model')}`",
        "",
        (
            "Zhang et al. 2025 (NJUNLP/Language-Neurons-Alignment), `jlang.ternary`: response-only activation "
            "probabilities, "
            f"score `H_norm − λ·max_p / norm_max`, the {meta['num_selected']} lowest-scoring neurons "
            f"(top_rate {cfg.identify.top_rate} of {stats.num_layers}x{stats.num_neurons}), each assigned to every "
            f"language with p > τ = {meta['tau']:.4f} (95th percentile of all p)."
        ),
        "",
        (
            "Data: the default corpus's parallel held-out messages as translation prompts (pad mode, one prompt "
            "per row, "
            f"seq_len {cfg.seq_len}; only response tokens counted, ≤ {cfg.max_tokens_per_language} per language). "
            f"Example ({example_lang}): prompt `{ex[0]!r}`, response `{ex[1]!r}`."
        ),
        "",
        "| language | prompts | response tokens | neurons | specific | related |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, lang in enumerate(masks.languages):
        m = masks.masks[i]
        lines.append(
            f"| {lang} | {len(pairs[lang])} | {int(stats.tokens[i]):,} | {int(m.sum())} | "
            f"{int((m & (lc == 1)).sum())} | "
            f"{int((m & (lc > 1)).sum())} |"
        )
    lam_text = f"{meta['lambda']:.6f}" + (" (AutoSweep)" if trace else " (fixed)")
    lines += [
        "",
        f"λ = **{lam_text}**; AutoSweep evaluated {len(trace)} values"
        + (
            f" (λ = {trace[0]['lambda']:g}: {trace[0]['general']} general selected; λ = {trace[1]['lambda']:g}: "
            f"{trace[1]['general']})"
            if len(trace) >= 2
            else ""
        )
        + ".",
        bound_note(trace),
        (
            f"appear[c] (selected neurons assigned to exactly c languages, c = 1..{k}): {meta['appear'][1:]}; "
            f"{meta['selected_unassigned']} selected neurons got no language (p ≤ τ everywhere)."
        ),
        "",
        "## Neuron types per layer",
        "",
        (
            f"specific = one language, related = 2..{k - 1} languages (both from the mask), general = p > τ for "
            f"all {k} languages (the paper's language-agnostic neurons; AutoSweep keeps them out of the mask, so "
            "they are counted "
            f"over all {stats.num_layers * stats.num_neurons:,} neurons)."
        ),
        "",
        f"Totals: **specific {counts[1].sum()}**, **related {counts[2].sum()}**, **general {counts[3].sum()}** "
        f"({100 * counts[3].sum() / neurons.types.size:.2f}% of all neurons; most in layers "
        + ", ".join(f"L{l} ({counts[3, l]})" for l in gen_layers)
        + ").",
        "",
        "| layer | " + " | ".join(TYPE_NAMES[1:]) + " | divergence |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {l} | {counts[1, l]} | {counts[2, l]} | {counts[3, l]} | {profile.divergence[l]:.3f} |"
            for l in range(stats.num_layers)
        ],
        "",
        "![types per layer](types.png)",
        "",
        "![neurons per layer and language](masks.png)",
        "",
        "## Four stages",
        "",
        (
            f"Curve `{profile.curve}` (divergence = 1 − mean cross-language correlation of the layer's activation "
            "probabilities; language share = specific + related neurons per layer; z-scored), cut into "
            f"{profile.num_stages} stages by the exact least-squares piecewise-constant segmentation "
            "(`jlang.analysis.compare.profile.segment`)."
        ),
        "",
        *stages_table({"model": profile}),
        "",
        "![stages](stages.png)",
    ]
    if lape_overlap is not None:
        lines += [
            "",
            "## Overlap with LAPE neurons",
            "",
            (
                f"LAPE masks `{cfg.lape_masks}` (train split, packed text; {lape_overlap['lape_unique']} unique "
                "neurons) vs "
                f"these ternary masks ({masks.unique_count()} unique): union Jaccard **{lape_overlap['union']:.3f}**."
            ),
            "",
            "| language | LAPE | ternary | shared | Jaccard |",
            "|---|---:|---:|---:|---:|",
            *[
                f"| {l} | {r['lape']} | {r['ternary']} | {r['shared']} | {r['jaccard']:.3f} |"
                for l, r in lape_overlap["per_language"].items()
            ],
        ]
    lines += [
        "",
        "## Wall time",
        "",
        ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def bound_note(trace) -> str:
    """Say so when the top of AutoSweep's range already selects no general neuron (λ is then set by the range)."""
    if len(trace) >= 2 and trace[1]["general"] == 0:
        return (
            f"Even λ = {trace[1]['lambda']:g}, the top of AutoSweep's range, selects no general neuron, so the "
            "search ends just below that bound: λ is set by the range, not by the data."
        )
    return ""


def lape_overlap(path: str | None, masks):
    """Per language, LAPE vs ternary neuron sets (languages both hold), or None without a fitting LAPE file."""
    if not path or not Path(path).is_file():
        return None
    lape = NeuronMasks.load(path)
    if lape.shape[1:] != masks.shape[1:]:
        return None
    common = [l for l in masks.languages if l in lape.languages]
    per = {
        l: {
            "lape": int(lape[l].sum()),
            "ternary": int(masks[l].sum()),
            "shared": int((lape[l] & masks[l]).sum()),
            "jaccard": jaccard(lape[l], masks[l]),
        }
        for l in common
    }
    return {
        "per_language": per,
        "union": jaccard(lape.union(), masks.union()),
        "lape_unique": lape.unique_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg: TernaryDefaultConfig = config_lib.load_config(args.config, TernaryDefaultConfig, args.set)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config_lib.to_dict(cfg))), sort_keys=False))
    log = lambda msg: print(f"[ternary_default] {msg}", flush=True)
    timings: dict[str, float] = {}

    pairs = prompt_pairs(read_parallel(cfg.parallel), cfg.languages, cfg.prompt)
    stats_path = out / "stats.npz"
    stats = None
    if cfg.reuse_stats and stats_path.is_file():
        stats = ActivationStats.load(stats_path)
        if stats.meta.get("experiment_settings") != _settings(cfg):
            stats = None
        else:
            log(f"reusing {stats_path}")
            timings.update({f"{k} (earlier run, reused)": v for k, v in stats.meta.get("seconds", {}).items()})
    if stats is None:
        t = time.perf_counter()
        model = jlang.load_model(cfg.model.source, dtype=cfg.model.dtype)
        timings["load model"] = time.perf_counter() - t
        t = time.perf_counter()
        stats = jlang.collect_stats(
            model,
            {l: pairs[l] for l in cfg.languages},
            batch_size=cfg.batch_size,
            seq_len=cfg.seq_len,
            mode="pad",
            max_tokens=cfg.max_tokens_per_language,
            add_bos=True,
        )
        stats.meta.update(
            experiment_settings=_settings(cfg),
            response_only="pad mode: (prompt, response) pairs count the response",
        )
        timings["statistics"] = time.perf_counter() - t
        stats.meta["seconds"] = dict(timings)
        stats.save(stats_path)
        log(f"statistics: {int(stats.tokens.sum()):,} response tokens in {timings['statistics']:.0f} s")

    t = time.perf_counter()
    masks = jlang.ternary(
        stats,
        top_rate=cfg.identify.top_rate,
        lam=cfg.identify.lam,
        activation_bar_ratio=cfg.identify.activation_bar_ratio,
    )
    neurons = model_neurons(stats, masks, activation_bar_ratio=cfg.identify.activation_bar_ratio)
    profile = layer_profile(neurons, curve=cfg.stages.curve, num_stages=cfg.stages.count)
    timings["identify + stages"] = time.perf_counter() - t
    masks.save(out / "masks.npz")
    masks.plot_heatmap(
        out / "masks.png",
        title=f"{stats.meta.get('model')}: ternary neurons per layer (λ={masks.meta['lambda']:.4f})",
    )
    counts = type_counts(neurons.types)
    plot_type_counts(
        counts,
        out / "types.png",
        title=f"{stats.meta.get('model')}: ternary neuron types per layer",
    )
    fig = new_figure(8, 4.6)
    draw_profile(
        fig.add_subplot(1, 1, 1),
        profile,
        f"stages start at layers {[0, *profile.boundaries]}",
    )
    save_figure(fig, out / "stages.png")
    overlap = lape_overlap(cfg.lape_masks, masks)
    write_json(
        out / "ternary.json",
        {
            "languages": masks.languages,
            "tokens": stats.tokens,
            "lambda": masks.meta["lambda"],
            "tau": masks.meta["tau"],
            "appear": masks.meta["appear"],
            "autosweep": masks.meta.get("autosweep"),
            "type_names": ["none", "specific", "related", "general"],
            "type_counts": counts,
            "neurons_per_language": masks.counts().sum(axis=1),
            "profile": profile.to_dict(),
            "lape_overlap": overlap,
            "seconds": timings,
        },
    )
    (out / "report.md").write_text(
        report(cfg, stats, masks, neurons, profile, overlap, pairs, timings),
        encoding="utf-8",
    )
    log(
        f"λ = {masks.meta['lambda']:.6f}; specific {counts[1].sum()}, related {counts[2].sum()}, "
        f"general {counts[3].sum()}; "
        f"stages start at {[0, *profile.boundaries]}; wrote {out / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
