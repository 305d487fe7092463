"""Culture neurons (Namazifard & Galke, namazifard/Culture_Neurons; methods.md §6) on the default model.

    python experiments/culture.py configs/culture_default.yaml [--set ppl.max_tokens=1024 ...]

Steps (everything under `config.out`):

1. Language statistics at `mlp.act`: reused from `language.reuse_stats` (the LAPE run's
   `stats.npz`) when it holds the cultures' languages for this model, else collected on
   the language corpus (`language_stats.npz`).
2. Culture statistics at `mlp.act` on the culture corpus's train split (`culture_stats.npz`);
   the default corpus is jlang's *demonstration* set (Faker locale records, see
   `jlang.data.corpora.culture`), not the paper's MUREL data.
3. LAPE (RUCAIBox defaults) on each, then compound / pure / generic masks
   (`masks/{language,culture,compound,pure,generic}.npz`, `masks.png`).
4. ΔPPL matrices of every mask kind on held-out culture and language text
   (`culture_ppl.json|png`), from one perplexity pass.
5. `report.md` with the numbers and figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

import numpy as np
import yaml

import jlang
from jlang import config as config_lib
from jlang.analysis.culture import CultureMasks, CulturePPL, culture_ppl, identify_culture_neurons
from jlang.data.corpora.culture import culture_corpus as demo_culture_corpus  # this module's culture_corpus wraps it
from jlang.data.sources import Corpus, resolve_corpus
from jlang.evals.perplexity import PPLResult
from jlang.io.report import new_figure, save_figure
from jlang.stats import ActivationStats
from jlang.stats.collect import collect_stats
from jlang.stats.container import check_stats_fit_model


@dataclasses.dataclass(frozen=True)
class CultureCorpusSection:
    # "demo": the Faker demonstration set (built and cached on first use); or a directory with
    # train/{culture}.txt and heldout/{culture}.txt (e.g. MUREL, one file per culture).
    source: str = "demo"
    train_lines: int = 400
    heldout_lines: int = 60


@dataclasses.dataclass(frozen=True)
class LanguageSection:
    reuse_stats: str | None = "runs/lape_default/stats.npz"  # used when it fits (model, languages, mlp.act)
    corpus: str = "default"  # "default" or a directory of {lang}.txt with train/ and heldout/
    max_tokens_per_language: int | None = 20000  # only when collecting


@dataclasses.dataclass(frozen=True)
class StatsSection:
    batch_size: int = 8
    seq_len: int = 256
    mode: Literal["pack", "pad"] = "pack"
    max_tokens_per_culture: int | None = None


@dataclasses.dataclass(frozen=True)
class IdentifySection:
    top_rate: float = 0.01
    filter_rate: float = 0.95
    activation_bar_ratio: float = 0.95


@dataclasses.dataclass(frozen=True)
class PPLSection:
    enabled: bool = True
    batch_size: int = 8
    seq_len: int = 128
    mode: Literal["pack", "pad"] = "pack"
    max_tokens: int | None = 512  # per evaluated column (culture text, language text)
    edit_value: float = 0.0
    language_text: bool = True  # also evaluate on held-out language text


@dataclasses.dataclass(frozen=True)
class CultureConfig:
    """`experiments/culture.py`: culture neurons; compound, pure and generic masks; ΔPPL matrices."""

    out: str = "runs/culture"
    seed: int = 0
    model: config_lib.ModelSection = config_lib.ModelSection()
    # culture=language pairs (a culture may name several languages: "xx=a,b")
    cultures: tuple[str, ...] = (
        "en_US=en",
        "en_GB=en",
        "de_DE=de",
        "ru_RU=ru",
        "zh_CN=zh",
        "ja_JP=ja",
    )
    culture_corpus: CultureCorpusSection = CultureCorpusSection()
    language: LanguageSection = LanguageSection()
    stats: StatsSection = StatsSection()
    identify: IdentifySection = IdentifySection()
    ppl: PPLSection = PPLSection()
    # Rebuild report.md from {out}/run.json, culture_stats.npz, masks/ and culture_ppl.json when they exist
    # (no model needed), instead of recomputing them.
    reuse_results: bool = False


def parse_cultures(pairs) -> dict[str, list[str]]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise config_lib.ConfigError(f"cultures: {pair!r} is not CULTURE=LANG[,LANG]")
        c, langs = pair.split("=", 1)
        out[c.strip()] = [x.strip() for x in langs.split(",") if x.strip()]
    if len(out) < 2:
        raise config_lib.ConfigError("cultures: LAPE needs at least two cultures")
    return out


def culture_corpus(cfg: CultureConfig, cultures: dict[str, list[str]], split: str):
    c = cfg.culture_corpus
    if c.source == "demo":
        return demo_culture_corpus(
            split,
            {k: v[0] for k, v in cultures.items()},
            train_lines=c.train_lines,
            heldout_lines=c.heldout_lines,
            seed=cfg.seed,
        )
    return Corpus.from_dir(c.source, split=split, languages=list(cultures))


def language_stats(cfg: CultureConfig, model, languages: list[str], log):
    """(stats, how): reuse `language.reuse_stats` when it fits, else collect on the language corpus."""
    path = cfg.language.reuse_stats
    if path and Path(path).is_file():
        stats = ActivationStats.load(path)
        try:
            check_stats_fit_model(stats, model)
            if stats.meta.get("hook_point", "mlp.act") != "mlp.act":
                raise ValueError(f"hook point {stats.meta.get('hook_point')}")
            missing = [l for l in languages if l not in stats.languages]
            if missing:
                raise ValueError(f"no statistics for {missing}")
            log(f"reusing language statistics {path}")
            return (
                stats.select(languages),
                f"reused `{path}` "
                f"({', '.join(f'{l} {n:,}' for l, n in zip(stats.languages, stats.tokens) if l in languages)} tokens)",
            )
        except ValueError as e:
            log(f"{path} does not fit ({e}); collecting language statistics")
    out = Path(cfg.out) / "language_stats.npz"
    corpus = resolve_corpus(cfg.language.corpus, languages, "train")
    stats = collect_stats(
        model,
        corpus,
        batch_size=cfg.stats.batch_size,
        seq_len=cfg.stats.seq_len,
        mode=cfg.stats.mode,
        max_tokens=cfg.language.max_tokens_per_language,
        seed=cfg.seed,
    )
    stats.save(out)
    return (
        stats,
        f"collected on the `{cfg.language.corpus}` corpus, ≤ {cfg.language.max_tokens_per_language} tokens per "
        f"language (`{out}`)",
    )


def plot_masks(cmasks, path: Path) -> Path:
    """Neurons per layer of each culture for the culture, compound and pure masks (one panel each)."""
    kinds = ("culture", "compound", "pure")
    fig = new_figure(4.2 * len(kinds) + 1, 4.2)
    vmax = max(int(cmasks.kind(k).counts().max()) for k in kinds) or 1
    for i, kind in enumerate(kinds):
        m = cmasks.kind(kind)
        ax = fig.add_subplot(1, len(kinds), i + 1)
        im = ax.imshow(
            m.counts().T,
            aspect="auto",
            origin="lower",
            cmap="viridis",
            vmin=0,
            vmax=vmax,
            interpolation="nearest",
        )
        ax.set_xticks(range(len(m.languages)), labels=m.languages, rotation=45)
        ax.set_ylabel("layer")
        ax.set_title(f"{kind}: {int(m.masks.sum())} neurons")
    fig.colorbar(im, ax=ax, label="neurons (same scale in every panel)")
    return save_figure(fig, path)


def layer_share(masks, top: int = 4) -> float:
    """Share of a mask set's (union) neurons in the top `top` layers."""
    per_layer = masks.masks.any(axis=0).sum(axis=1)
    return float(per_layer[-top:].sum() / max(per_layer.sum(), 1))


def report(cfg, model, cultures, manifest, how_lang, cult_stats, cmasks, res, timings) -> str:
    L = model.num_layers
    lines = [
        f"# Culture neurons on `{model.name}`",
        "",
        (
            "Namazifard & Galke (`namazifard/Culture_Neurons`): LAPE (RUCAIBox defaults: top 1 %, 95th-percentile "
            "filter and bar) run separately on language corpora and on culture corpora; compound = C_c ∧ L_lang(c), "
            "pure = C_c ∖ L_lang(c), generic = ⋂_c pure_c. Neurons are counted at `mlp.act` (a = act(gate), the FFN "
            "neurons), not at the MLP output the released `*_transformers.py` scripts hooked by mistake."
        ),
        "",
        f"Model `{model.name}` ({model.family}, {L} layers × {model.num_neurons} neurons).",
        "",
        "## Data",
        "",
    ]
    if cfg.culture_corpus.source == "demo":
        lines += [
            (
                "**Culture corpus: jlang's demonstration set, not the paper's data.** MUREL (85M tokens of proverbs, "
                "survey items, literature per culture) is not installable here, so each culture's text is made from "
                f"the locale data inside the PyPI package Faker (version {manifest.get('faker_version')}): one line = "
                "a made-up record (person name, job title, company, postal address) in the culture's language and "
                "conventions. The entities (names, towns, regions, company forms, address formats) are "
                "culture-specific; the text is synthetic and far narrower than MUREL. en_US and en_GB are two cultures "
                "written in one language. Examples (held-out):"
            ),
            "",
            *[f"- `{c}`: {info['example']}" for c, info in manifest.get("counts", {}).items()],
            "",
        ]
    else:
        lines += [
            f"Culture corpus: `{cfg.culture_corpus.source}` (train split for LAPE, heldout for PPL).",
            "",
        ]
    lines += [
        f"Language statistics: {how_lang}. Culture statistics: "
        + ", ".join(f"{c} {n:,}" for c, n in zip(cult_stats.languages, cult_stats.tokens))
        + f" tokens ({cfg.stats.mode} mode, {cfg.stats.seq_len}-token rows).",
        "",
        "## Masks",
        "",
        cmasks.summary_table(),
        "",
        f"Language neurons (LAPE on {', '.join(cmasks.language.languages)}): "
        + ", ".join(f"{l} {int(cmasks.language[l].sum())}" for l in cmasks.language.languages)
        + f". Share of the neurons in the last 4 of {L} layers: language {layer_share(cmasks.language):.2f}, "
        f"culture {layer_share(cmasks.culture):.2f}, pure culture {layer_share(cmasks.pure):.2f} "
        f"(mean layer: language {mean_layer(cmasks.language):.1f}, culture {mean_layer(cmasks.culture):.1f}, "
        f"pure {mean_layer(cmasks.pure):.1f}).",
        "",
        "![neurons per layer](masks.png)",
        "",
    ]
    if res is not None:
        none = res.result.rows.index("none")
        base = {c: p for c, p in zip(res.result.columns, res.result.ppl[none])}
        lines += [
            "## ΔPPL when a mask is deactivated",
            "",
            (
                f"Each row sets one mask's neurons to {cfg.ppl.edit_value:g} in every layer (LAPE `ppl.py`); columns "
                f"are held-out culture text and held-out language text ({cfg.ppl.mode} mode, {cfg.ppl.seq_len}-token "
                f"windows, ≤ {cfg.ppl.max_tokens} tokens per column, {int(res.result.tokens.sum()):,} scored tokens "
                "per row). ΔPPL = PPL(mask off) − PPL(baseline) (`scripts/combine_results.py`); ΔNLL = log of the PPL "
                "ratio in the figure."
            ),
            "",
            "Baseline PPL: "
            + ", ".join(f"{c.split(':', 1)[1]} ({c.split(':')[0]}) {p:.1f}" for c, p in base.items())
            + ".",
            "",
            "### Own versus other",
            "",
            (
                "Mean Δ of a culture's mask on its own culture's text, on the other cultures' texts, on its own "
                "language's text and on other languages' text (for `language` masks: own culture = the cultures "
                "written in that language). ΔNLL (nats, = log PPL ratio) compares texts whose baseline PPLs differ "
                "tenfold; ΔPPL means are dominated by the high-PPL columns (zh). Last column: rows whose largest ΔNLL "
                "on culture text is on their own culture."
            ),
            "",
            (
                "| mask kind | ΔNLL own culture | other cultures | own language | other languages | ΔPPL own culture | "
                "other cultures | own language | other languages | own culture hit most |"
            ),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for kind in ("language", "culture", "compound", "pure"):
            n, o = res.own_vs_other(kind, "delta_nll"), res.own_vs_other(kind)
            hit = "" if kind == "language" else "{}/{}".format(*res.own_dominant(kind))
            lines.append(
                f"| {kind} | {n['own_culture']:.3f} | {n['other_cultures']:.3f} | {n['own_language']:.3f} | "
                f"{n['other_languages']:.3f} | {o['own_culture']:.1f} | {o['other_cultures']:.1f} | "
                f"{o['own_language']:.1f} | {o['other_languages']:.1f} | {hit} |"
            )
        g, gp = res.own_vs_other("generic", "delta_nll"), res.own_vs_other("generic")
        lines += [
            (
                f"| generic ({int(cmasks.generic.masks.sum())} neurons) | all culture text {g['culture_text']:.3f} | | "
                f"all language text {g['language_text']:.3f} | | {gp['culture_text']:.1f} | | "
                f"{gp['language_text']:.1f} | | |"
            ),
            "",
            verdict(res),
            "",
            "ΔPPL tables (rows: the deactivated mask; columns: held-out culture text, then held-out language text):",
            "",
        ]
        for kind in cmasks.KINDS:
            lines += [f"### {kind} masks", "", res.table(kind, "culture"), ""]
            if res.columns_of("language"):
                lines += [res.table(kind, "language"), ""]
        lines += ["![ΔNLL heat maps](culture_ppl.png)", ""]
    spent = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "_reused") + "."
    if timings.get("_reused"):
        spent = "Results reused (`reuse_results: true`); the run that computed them: " + spent
    lines += ["## Wall time", "", spent, ""]
    return "\n".join(lines)


def mean_layer(masks) -> float:
    per_layer = masks.masks.any(axis=0).sum(axis=1)
    return float((per_layer * np.arange(len(per_layer))).sum() / max(per_layer.sum(), 1))


def verdict(res) -> str:
    pure, comp = (
        res.own_vs_other("pure", "delta_nll"),
        res.own_vs_other("compound", "delta_nll"),
    )
    hit, n = res.own_dominant("pure")
    ratio = pure["own_culture"] / pure["other_cultures"] if pure["other_cultures"] > 0 else float("inf")
    return (
        f"Deactivating a culture's **pure** culture neurons raises NLL on its own culture's held-out text by "
        f"{pure['own_culture']:.3f} nats on average, {ratio:.1f}× the {pure['other_cultures']:.3f} on the other "
        f"cultures' texts (own culture hit most for {hit}/{n} cultures), and by {pure['own_language']:.3f} on plain "
        f"text in its own language. The **compound** neurons (culture ∧ language): {comp['own_culture']:.3f} own "
        f"culture, {comp['other_cultures']:.3f} other cultures, {comp['own_language']:.3f} own language."
    )


def compute(cfg, cultures, languages, train, held, out: Path, log):
    """Load the model, collect statistics, identify the masks, run the ΔPPL matrices."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    model = jlang.load_model(cfg.model.source, dtype=cfg.model.dtype)
    timings["load model"] = time.perf_counter() - t

    t = time.perf_counter()
    lang_stats, how_lang = language_stats(cfg, model, languages, log)
    timings["language statistics"] = time.perf_counter() - t

    t = time.perf_counter()
    cult_stats = collect_stats(
        model,
        train,
        batch_size=cfg.stats.batch_size,
        seq_len=cfg.stats.seq_len,
        mode=cfg.stats.mode,
        max_tokens=cfg.stats.max_tokens_per_culture,
        seed=cfg.seed,
    )
    cult_stats.save(out / "culture_stats.npz")
    timings["culture statistics"] = time.perf_counter() - t

    c = cfg.identify
    cmasks = identify_culture_neurons(
        lang_stats,
        cult_stats,
        cultures,
        top_rate=c.top_rate,
        filter_rate=c.filter_rate,
        activation_bar_ratio=c.activation_bar_ratio,
    )
    cmasks.save(out / "masks")
    plot_masks(cmasks, out / "masks.png")
    log("masks\n" + cmasks.summary_table())

    res = None
    if cfg.ppl.enabled:
        t = time.perf_counter()
        p = cfg.ppl
        lang_corpus = resolve_corpus(cfg.language.corpus, languages, "heldout") if p.language_text else None
        res = culture_ppl(
            model,
            cmasks,
            held,
            lang_corpus,
            batch_size=p.batch_size,
            seq_len=p.seq_len,
            mode=p.mode,
            max_tokens=p.max_tokens,
            edit_value=p.edit_value,
        )
        res.save(out / "culture_ppl")
        timings["ΔPPL matrices"] = time.perf_counter() - t
        log(verdict(res))
    return model, how_lang, cult_stats, cmasks, res, timings


def load_results(cfg, cultures, out: Path, log):
    """The saved outputs of an earlier run of this config (figures redrawn); no model is loaded."""
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    cult_stats = ActivationStats.load(out / "culture_stats.npz")
    cmasks = CultureMasks.load(out / "masks", cultures)
    plot_masks(cmasks, out / "masks.png")
    res = None
    if cfg.ppl.enabled and (out / "culture_ppl.json").is_file():
        d = json.loads((out / "culture_ppl.json").read_text(encoding="utf-8"))
        res = CulturePPL(PPLResult.from_dict(d["ppl"]), d["culture_languages"])
        res.save(out / "culture_ppl")
    log(f"reusing the results in {out} (run.json, culture_stats.npz, masks/, culture_ppl.json)")
    timings = {"_reused": 1.0, **record["timings"]}
    return (
        SimpleNamespace(**record["model"]),
        record["how_lang"],
        cult_stats,
        cmasks,
        res,
        timings,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg: CultureConfig = config_lib.load_config(args.config, CultureConfig, args.set)
    cultures = parse_cultures(cfg.cultures)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config_lib.to_dict(cfg))), sort_keys=False))
    log = lambda msg: print(f"[culture] {msg}", flush=True)
    languages = list(dict.fromkeys(l for ls in cultures.values() for l in ls))

    t = time.perf_counter()
    train = culture_corpus(cfg, cultures, "train")  # builds the demonstration set once (cached)
    held = culture_corpus(cfg, cultures, "heldout")
    manifest = {}
    if cfg.culture_corpus.source == "demo":
        manifest = json.loads(
            (Path(train[next(iter(cultures))].path).parents[1] / "manifest.json").read_text(encoding="utf-8")
        )
    timings_corpus = time.perf_counter() - t

    if cfg.reuse_results and (out / "run.json").is_file():
        model, how_lang, cult_stats, cmasks, res, timings = load_results(cfg, cultures, out, log)
    else:
        model, how_lang, cult_stats, cmasks, res, timings = compute(cfg, cultures, languages, train, held, out, log)
        timings = {"culture corpus": timings_corpus, **timings}
        record = {
            "model": {
                "name": model.name,
                "family": model.family,
                "num_layers": model.num_layers,
                "num_neurons": model.num_neurons,
            },
            "how_lang": how_lang,
            "timings": timings,
        }
        (out / "run.json").write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
    (out / "report.md").write_text(
        report(cfg, model, cultures, manifest, how_lang, cult_stats, cmasks, res, timings), encoding="utf-8"
    )
    log(f"wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
