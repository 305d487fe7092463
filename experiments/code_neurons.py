"""Programming-language neurons (Kargaran et al. 2025, cisnlp/code-specific-neurons) on the default model.

    python experiments/code_neurons.py configs/code_neurons.yaml [--set stats.max_tokens_per_language=4096 ...]

Steps (each writes under `config.out`):

1. The code corpus (`jlang.data.corpora.code`): source files of the installed Python
   packages, the standard library, C/C++ headers, JavaScript/HTML/CSS static files,
   Rust crates when Debian's `librust-*-dev` sources are installed, and English
   (the default gettext corpus's). Built once into jlang's cache; languages the
   machine has no files for are left out, with what to install, in the report.
2. `stats.npz`: activation statistics on the train split (LAPE packing, capped tokens
   per language); reused when made with the same model, languages, corpus and sizes.
3. `masks_lape.npz` (identify.py defaults, 1% of all neurons) and `masks_fixed.npz`
   (the N lowest-entropy neurons per language, Kargaran et al.'s `custom_activation`),
   their heat maps and overlaps, and how specific each language's neurons are.
4. `ppl.json|png`: held-out perplexity of every language with each language's neurons
   set to 0 (`jlang.evals.perplexity.ppl_matrix`; fixed-count masks by default, so
   every row removes the same number of neurons).
5. `lens.json|png`: the logit lens over held-out code: per layer, the share of the
   top-k decoded tokens that are keywords of each language (`jlang.analysis.code_lens`).
6. `report.md`: the numbers and figures.

Paths in the config are relative to the working directory (run from the repository root).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Literal

# run from a clone without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import yaml

import jlang
from jlang import config as config_lib
from jlang.analysis.code_lens import KeywordLensResult, keyword_lens
from jlang.analysis.code_neurons import identify_code_neurons, layer_bands, specificity, top_neurons
from jlang.data.corpora.code import DEFAULT_CODE_LANGUAGES, code_corpus, ensure_code_corpus, excerpt
from jlang.data.sources import read_documents
from jlang.evals.perplexity import PPLResult, ppl_matrix
from jlang.io.report import save_heatmaps, write_json
from jlang.stats import ActivationStats
from jlang.stats.collect import collect_stats

DEFAULT_SOURCE = "code-default"


@dataclasses.dataclass(frozen=True)
class CorpusPart:
    # "code-default": built once from this machine's installed packages into jlang's cache;
    # or a directory written by `jlang code-corpus --out DIR`
    source: str = DEFAULT_SOURCE
    languages: tuple[str, ...] = DEFAULT_CODE_LANGUAGES
    require_all: bool = False  # true: fail when a language is missing; false: leave it out with a note


@dataclasses.dataclass(frozen=True)
class StatsPart:
    batch_size: int = 8
    seq_len: int = 256
    max_tokens_per_language: int | None = 12288
    reuse: bool = True  # load {out}/stats.npz when it was made with the same model, languages, corpus and sizes


@dataclasses.dataclass(frozen=True)
class IdentifyPart:
    top_rate: float = 0.01  # LAPE: share of all L*F neurons selected
    filter_rate: float = 0.95
    activation_bar_ratio: float = 0.95
    num_per_language: int = 50  # fixed-count variant (Kargaran et al.: 400 of Llama-3.1-8B's 458,752 neurons)


@dataclasses.dataclass(frozen=True)
class PPLPart:
    enabled: bool = True
    masks: Literal["fixed_count", "lape"] = "fixed_count"
    # one row per held-out file: an excerpt of `chars_per_text` characters from its middle, for this many files
    # per language (many files, few tokens each); null: the held-out stream in `mode` rows, `max_tokens` capped
    texts_per_language: int | None = 8
    chars_per_text: int = 400
    mode: Literal["pack", "pad"] = "pad"
    batch_size: int = 8
    seq_len: int = 256
    max_tokens_per_language: int | None = None
    edit_value: float = 0.0
    vocab_chunk: int = 16384


@dataclasses.dataclass(frozen=True)
class LensPart:
    enabled: bool = True
    k: int = 10  # code-logitlens: top-10
    texts_per_language: int = 6
    seq_len: int = 48
    batch_size: int = 8
    vocab_chunk: int = 16384


@dataclasses.dataclass(frozen=True)
class CodeNeuronsConfig:
    """`experiments/code_neurons.py`: LAPE and fixed-count neurons of programming languages, ΔPPL, keyword lens."""

    out: str = "runs/code_neurons"
    seed: int = 0
    # load {out}/ppl.json and lens.json when they exist instead of recomputing them (to redraw the report)
    reuse_results: bool = False
    model: config_lib.ModelSection = config_lib.ModelSection()
    corpus: CorpusPart = CorpusPart()
    stats: StatsPart = StatsPart()
    identify: IdentifyPart = IdentifyPart()
    ppl: PPLPart = PPLPart()
    lens: LensPart = LensPart()


# ----------------------------------------------------------------------------- steps


def resolve_code_corpus(cfg: CodeNeuronsConfig, log) -> tuple[Path, dict, list[str], dict]:
    """(corpus directory, manifest, languages used, languages left out -> why)."""
    if cfg.corpus.source == DEFAULT_SOURCE:
        root = ensure_code_corpus()
    else:
        root = Path(cfg.corpus.source)
        if not (root / "manifest.json").is_file():
            raise SystemExit(
                f"{root} is not a code corpus (no manifest.json); build one with `jlang code-corpus --out {root}`"
            )
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    missing = {
        l: manifest.get("dropped", {}).get(
            l, {"reason": "not requested when the corpus was built", "hint": "rebuild it with this language"}
        )
        for l in cfg.corpus.languages
        if l not in manifest["languages"]
    }
    if missing and cfg.corpus.require_all:
        raise SystemExit(
            "languages missing from the code corpus: "
            + "; ".join(f"{l}: {d['reason']} ({d['hint']})" for l, d in missing.items())
        )
    for l, d in missing.items():
        log(f"leaving out {l}: {d['reason']}; {d.get('hint', '')}")
    languages = [l for l in cfg.corpus.languages if l in manifest["languages"]]
    if len(languages) < 2:
        raise SystemExit(f"need at least 2 languages, the corpus at {root} has {manifest['languages']}")
    return root, manifest, languages, missing


def statistics(cfg: CodeNeuronsConfig, model, corpus, languages, fingerprint: str, log):
    """(ActivationStats, how): reuse `{out}/stats.npz` when it fits, else collect on the train split.

    `fingerprint` identifies the corpus build (its manifest's sha256): a rebuilt corpus at the same path
    does not reuse statistics of the old one."""
    path = Path(cfg.out) / "stats.npz"
    want = {
        "model": model.name,
        "seq_len": cfg.stats.seq_len,
        "max_tokens": cfg.stats.max_tokens_per_language,
        "corpus": {l: corpus[l].describe() for l in languages},
        "code_corpus": fingerprint,
    }
    if cfg.stats.reuse and path.is_file():
        stats = ActivationStats.load(path)
        if list(stats.languages) == languages and all(stats.meta.get(k) == v for k, v in want.items()):
            log(f"reusing {path} ({int(stats.tokens.sum()):,} tokens)")
            return stats, f"reused {path}"
        log(f"{path} was made for another model/languages/corpus/sizes; collecting again")
    stats = collect_stats(
        model,
        corpus,
        batch_size=cfg.stats.batch_size,
        seq_len=cfg.stats.seq_len,
        mode="pack",
        max_tokens=cfg.stats.max_tokens_per_language,
        seed=cfg.seed,
    )
    stats.meta["code_corpus"] = fingerprint
    stats.save(path)
    return stats, "collected"


def deactivation_ppl(cfg: CodeNeuronsConfig, model, neurons, root: Path, languages):
    """The held-out PPL matrix with each language's neurons set to `ppl.edit_value`; saved as ppl.json|png."""
    p = cfg.ppl
    heldout = code_corpus("heldout", languages, path=root)
    if p.texts_per_language is not None:  # middle excerpts of many files, one row each
        heldout = {
            l: [excerpt(d, p.chars_per_text) for d in read_documents(heldout[l])[: p.texts_per_language]]
            for l in languages
        }
    mode = "pad" if p.texts_per_language is not None else p.mode
    ppl = ppl_matrix(
        model,
        getattr(neurons, p.masks),
        heldout,
        languages=languages,
        batch_size=p.batch_size,
        seq_len=p.seq_len,
        mode=mode,
        edit_value=p.edit_value,
        vocab_chunk=p.vocab_chunk,
        max_tokens=p.max_tokens_per_language,
    )
    ppl.save(Path(cfg.out) / "ppl")
    return ppl


def code_lens(cfg: CodeNeuronsConfig, model, root: Path, languages):
    """The keyword logit lens on the first held-out files of each language; saved as lens.json|png."""
    c = cfg.lens
    heldout = code_corpus("heldout", languages, path=root)
    texts = {
        l: [d for d in read_documents(heldout[l]) if isinstance(d, str)][: c.texts_per_language] for l in languages
    }
    lens = keyword_lens(
        model,
        texts,
        k=c.k,
        seq_len=c.seq_len,
        batch_size=c.batch_size,
        vocab_chunk=c.vocab_chunk,
    )
    lens.save(Path(cfg.out) / "lens")
    return lens


def reused(cfg: CodeNeuronsConfig, name: str, log):
    """`{out}/{name}.json` loaded (figures redrawn) when `reuse_results` and it exists, else None."""
    path = Path(cfg.out) / f"{name}.json"
    if not (cfg.reuse_results and path.is_file()):
        return None
    cls = PPLResult if name == "ppl" else KeywordLensResult
    log(f"reusing {path}")
    result = cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
    result.save(Path(cfg.out) / name)
    return result


def fmt(x, f="{:.3f}") -> str:
    return "–" if x is None or not np.isfinite(x) else f.format(x)


def verdict(ppl) -> tuple[str, dict]:
    """One paragraph on whether deactivating k's neurons hurts k most, and the numbers behind it."""
    dom = ppl.diagonal_dominance("delta_nll")
    n, rows, cols = dom["languages"], dom["row_dominant"], dom["col_dominant"]
    word = "Yes" if rows == n else "Mostly" if rows >= 0.75 * n else "Partly" if rows >= 0.5 * n else "No"
    exceptions = []
    for k, v in dom["per_language"].items():
        if not v["row_dominant"]:
            i = ppl.rows.index(k)
            top = max((float(ppl.delta_nll[i, j]), c) for j, c in enumerate(ppl.columns) if c != k)
            exceptions.append(f"{k} (ΔNLL[{k},{k}] = {v['own']:.3f} < ΔNLL[{k},{top[1]}] = {top[0]:.3f})")
    text = (
        f"{word}: deactivating language k's neurons raises k's held-out NLL more than any other language's for "
        f"{rows}/{n} languages (row maximum); k's NLL rises most under its own deactivation for {cols}/{n} "
        f"(column maximum). Median ΔNLL[k,k] / mean_j≠k ΔNLL[k,j] = {fmt(dom['median_ratio_mean'], '{:.1f}')}."
    )
    if exceptions:
        text += " Rows where another language suffers more: " + "; ".join(exceptions) + "."
    return text, dom


def masks_section(cfg, stats, neurons, languages) -> list[str]:
    lape_m, fixed = neurons.lape, neurons.fixed_count
    spec_l, spec_f = specificity(stats, lape_m), specificity(stats, fixed)
    bands, share_l = layer_bands(lape_m)
    _, share_f = layer_bands(fixed)
    meta = lape_m.meta
    lines = [
        "## Language-specific neurons",
        "",
        f"**LAPE** (identify.py defaults: top_rate {cfg.identify.top_rate}, filter/bar {cfg.identify.filter_rate}/"
        f"{cfg.identify.activation_bar_ratio}): {meta['num_selected']} neurons selected "
        f"(round({cfg.identify.top_rate}·L·F)), {meta['num_multi_language']} of them in more than one language; "
        f"τ = {meta['tau']:.4f}. **Fixed count** (Kargaran et al.'s `custom_activation`): the "
        f"{cfg.identify.num_per_language} lowest-entropy candidates of each language, "
        f"{fixed.unique_count()} distinct neurons"
        + (
            f"; fewer candidates than asked: {fixed.meta['short_languages']}"
            if fixed.meta.get("short_languages")
            else ""
        )
        + ".",
        "",
        (
            "Specificity: p_own = mean activation probability (a > 0) of a language's neurons on its own tokens, "
            "p_other = their mean over the other languages; ratio = p_own / p_other. Layer bands: share of the "
            "language's neurons in the bottom / middle / top third of the layers."
        ),
        "",
        (
            "| language | train tokens | LAPE neurons | LAPE p_own | LAPE p_other | LAPE ratio | LAPE "
            f"{' / '.join(bands)} | fixed p_own | fixed p_other | fixed ratio | fixed {' / '.join(bands)} |"
        ),
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for k, lang in enumerate(languages):
        sl, sf = spec_l[lang], spec_f[lang]
        lines.append(
            f"| {lang} | {int(stats.tokens[k]):,} | {sl['neurons']} | {fmt(sl['p_own'])} | {fmt(sl['p_other_mean'])} | "
            f"{fmt(sl['ratio'], '{:.1f}')} | {' / '.join(fmt(x, '{:.2f}') for x in share_l[k])} | {fmt(sf['p_own'])} | "
            f"{fmt(sf['p_other_mean'])} | {fmt(sf['ratio'], '{:.1f}')} | "
            f"{' / '.join(fmt(x, '{:.2f}') for x in share_f[k])} |"
        )
    lines += [
        "",
        "![LAPE neurons per layer](masks_lape.png) ![fixed-count neurons per layer](masks_fixed.png)",
        "",
        "### Overlap between languages (Jaccard of the neuron sets)",
        "",
        "| fixed count | " + " | ".join(languages) + " |",
        "|---|" + "---:|" * len(languages),
    ]
    jac = fixed.jaccard()
    for i, lang in enumerate(languages):
        lines.append(f"| {lang} | " + " | ".join(fmt(jac[i, j], "{:.2f}") for j in range(len(languages))) + " |")
    off = jac[~np.eye(len(languages), dtype=bool)]
    pairs = sorted(
        (
            (jac[i, j], languages[i], languages[j])
            for i in range(len(languages))
            for j in range(i + 1, len(languages))
            if np.isfinite(jac[i, j])
        ),
        reverse=True,
    )[:3]
    lines += [
        "",
        f"Mean off-diagonal Jaccard (fixed count): {np.nanmean(off):.3f}; most similar pairs: "
        + ", ".join(f"{a}–{b} {v:.2f}" for v, a, b in pairs)
        + ".",
        "",
        "![overlaps](overlap.png)",
        "",
        "### The most specific neuron of each language (fixed count)",
        "",
        "| language | neuron (layer, index) | LAPE entropy | p on its language | highest p elsewhere |",
        "|---|---|---:|---:|---|",
    ]
    for lang in languages:
        top = top_neurons(stats, fixed, lang, n=1)
        if not top:
            lines.append(f"| {lang} | – | – | – | – |")
            continue
        t = top[0]
        other = max(
            ((p, l) for l, p in t["p"].items() if l != lang),
            default=(float("nan"), "–"),
        )
        lines.append(
            f"| {lang} | ({t['layer']}, {t['neuron']}) | {t['entropy']:.3f} | {t['p'][lang]:.3f} | "
            f"{other[1]} {other[0]:.3f} |"
        )
    return lines + [""]


def rows_text(cfg) -> str:
    p = cfg.ppl
    if p.texts_per_language is not None:
        return (
            f"one row per held-out file: {p.chars_per_text} characters of whole lines from the middle of each of "
            f"the first {p.texts_per_language} files (past imports and headers)"
        )
    return f"the held-out stream in {p.mode} mode, rows of {p.seq_len} tokens"


def ppl_section(cfg, ppl) -> list[str]:
    text, dom = verdict(ppl)
    none = ppl.rows.index("none")
    lines = [
        "## Deactivation perplexity (held-out split)",
        "",
        (
            f"Rows: the language whose {cfg.ppl.masks.replace('_', '-')} neurons are set to {cfg.ppl.edit_value:g} in "
            f"every layer; columns: evaluated language; {rows_text(cfg)}; {int(ppl.tokens.sum()):,} scored tokens in "
            f"{int(ppl.sequences.sum())} rows ({', '.join(f'{c} {int(n)}' for c, n in zip(ppl.columns, ppl.tokens))})."
        ),
        "",
        "Baseline PPL (no edit): " + ", ".join(f"{c} {p:.2f}" for c, p in zip(ppl.columns, ppl.ppl[none])) + ". "
        "Code is far more predictable than prose, so the relative change ΔNLL = log(PPL / PPL_none) is the "
        "comparable measure; ΔPPL is in `ppl.json`.",
        "",
        "### ΔNLL = log(PPL / PPL_none)",
        "",
        ppl.table("delta_nll", "{:.3f}"),
        "",
        "![ΔPPL and ΔNLL heat maps](ppl.png)",
        "",
        text,
        "",
        "| k | ΔNLL[k,k] | mean j≠k | max j≠k | own / mean |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, v in dom["per_language"].items():
        lines.append(
            f"| {k} | {v['own']:.3f} | {v['mean_other']:.3f} | {v['max_other']:.3f} | "
            f"{fmt(v['ratio_mean'], '{:.1f}')} |"
        )
    return lines + [""]


def shown(token: str) -> str:
    """A decoded token for a markdown table: spaces as ␣ (" The" and "The" are different tokens)."""
    return token.replace(" ", "␣").replace("\n", "⏎").replace("`", "'")


def english_text(lens) -> str:
    """Do English words surface among the top-k tokens before the code's own keywords do (Kargaran et al.)?"""
    L, k = lens.shares.shape[1], lens.meta["k"]
    e = lens.keyword_languages.index("english")
    code = [p for p, l in enumerate(lens.languages) if l != "english" and l in lens.keyword_languages]
    # the upper middle: after the lens starts to decode words, before the last two layers
    start = min(L // 2 + 1, L - 1)
    upper = slice(start, max(L - 2, start + 1))
    eng = [float(np.mean(lens.shares[p, upper, e])) for p in code]
    own = [float(np.mean(lens.shares[p, upper, lens.keyword_languages.index(lens.languages[p])])) for p in code]
    ahead = [lens.languages[p] for p, a, b in zip(code, eng, own) if a > b]
    last_eng = float(np.mean(lens.shares[code, L - 1, e]))
    last_own = float(np.mean([lens.shares[p, L - 1, lens.keyword_languages.index(lens.languages[p])] for p in code]))
    return (
        f"English words among the top-{k} tokens while reading code, layers {upper.start}–{upper.stop - 1} (mean "
        f"over the {len(code)} code languages): **{np.mean(eng):.3f}**, against **{np.mean(own):.3f}** for the code's "
        f"own keywords; English is ahead for {len(ahead)}/{len(code)} languages ({', '.join(ahead) or 'none'}). In "
        f"the last layer: English {last_eng:.3f}, own keywords {last_own:.3f}; English words in the code itself: "
        f"{float(np.mean(lens.text_shares[code, e])):.3f}. (The English table shares `and`, `in`, `is`, `if`, `for` "
        "with Python; the exclusive columns above leave such words out.)"
    )


def lens_section(lens) -> list[str]:
    L = lens.shares.shape[1]
    show = sorted({0, L // 4, L // 2, 3 * L // 4, L - 2, L - 1})
    own, excl = lens.own("shares"), lens.own("exclusive")
    peaks = lens.peak_layers("exclusive")
    lines = [
        "## Logit lens: keywords among the top-k decoded tokens",
        "",
        (
            f"Every layer's residual stream after the final norm, unembedded, top-{lens.meta['k']} tokens at every "
            f"position of windows of {lens.meta['seq_len'] - 1} tokens from the middle of held-out files "
            f"({', '.join(f'{l} {int(n)}' for l, n in zip(lens.languages, lens.positions))} positions), matched "
            "against small keyword tables (`jlang.analysis.code_keywords`). Own = keywords of the text's language "
            "(tables overlap: `if`, `for`, `return` are Python, C and Rust); exclusive = keywords of that language "
            "only. The last row is the share among the text's own tokens."
        ),
        "",
        "| layer | " + " | ".join(f"{l} own / excl." for l in lens.languages) + " |",
        "|---:|" + "---:|" * len(lens.languages),
    ]
    for l in show:
        lines.append(
            f"| {l} | "
            + " | ".join(
                f"{fmt(own[l, p], '{:.2f}')} / {fmt(excl[l, p], '{:.2f}')}" for p in range(len(lens.languages))
            )
            + " |"
        )
    text_own = [
        lens.text_shares[p, lens.keyword_languages.index(l)] if l in lens.keyword_languages else np.nan
        for p, l in enumerate(lens.languages)
    ]
    lines.append("| text | " + " | ".join(fmt(x, "{:.2f}") for x in text_own) + " |")
    lines += [
        "",
        "Layer where the exclusive own-keyword share peaks: " + ", ".join(f"{l} {p}" for l, p in peaks.items()) + ".",
    ]
    if "english" in lens.keyword_languages:
        lines += ["", english_text(lens)]
    lines += [
        "",
        f"Most frequent keyword tokens in the top-k, in layer {max(0, L - 5)} (upper middle) and the last layer:",
        "",
    ]
    for lang in lens.languages:
        mid, last = (
            lens.top_keywords[lang][max(0, L - 5)],
            lens.top_keywords[lang][L - 1],
        )
        lines.append(
            f"- {lang}: layer {max(0, L - 5)}: "
            + ", ".join(f"`{shown(t)}` {n}" for t, n in mid[:4])
            + f"; layer {L - 1}: "
            + ", ".join(f"`{shown(t)}` {n}" for t, n in last[:4])
        )
    return lines + [
        "",
        "![keyword shares per layer](lens.png)",
        "",
        "![own-language keyword share](lens_own.png)",
        "",
    ]


def findings(neurons, ppl, lens) -> list[str]:
    """Three sentences with the run's main numbers, for the top of the report."""
    masks = neurons.fixed_count
    langs = list(masks.languages)
    jac = masks.jaccard()
    code = [i for i, l in enumerate(langs) if l != "english"]
    pairs = [jac[i, j] for i in code for j in code if i < j]
    lines = ["## Findings", ""]
    if "english" in langs and pairs:
        e = langs.index("english")
        lines.append(
            f"- **Neurons.** English's {int(masks['english'].sum())} fixed-count neurons hardly meet the code "
            f"languages' (Jaccard ≤ {np.nanmax(jac[e, code]):.2f}); the code languages share many among themselves "
            f"(mean Jaccard {np.nanmean(pairs):.2f}, up to {np.nanmax(pairs):.2f})."
        )
    if ppl is not None:
        dom = ppl.diagonal_dominance("delta_nll")
        per = dom["per_language"]
        best = sorted(per, key=lambda k: -per[k]["ratio_mean"])[:2]
        lines.append(
            f"- **Deactivation.** Switching off language k's neurons hurts k more than any other language for "
            f"{dom['row_dominant']}/{dom['languages']} languages; median ΔNLL[k,k] / mean ΔNLL[k,j≠k] = "
            f"{dom['median_ratio_mean']:.1f} (most specific: "
            + ", ".join(f"{k} {per[k]['own']:.3f} nats, {per[k]['ratio_mean']:.1f}×" for k in best)
            + ")."
        )
    if lens is not None and "english" in lens.keyword_languages:
        lines.append("- **Logit lens.** " + english_text(lens).split(" (The English table")[0])
    return lines + [""]


def report(
    cfg,
    model,
    manifest,
    languages,
    missing,
    stats,
    how,
    neurons,
    ppl,
    lens,
    timings,
    earlier,
) -> str:
    counts = manifest["counts"]
    lines = [
        f"# Programming-language neurons on `{model.name}`",
        "",
        (
            f"Model `{model.name}` ({model.family}, {model.num_layers} layers × {model.num_neurons} neurons). Method: "
            "Kargaran et al. 2025 (cisnlp/code-specific-neurons): LAPE over programming languages plus English, its "
            "fixed-count variant, deactivation perplexity and a keyword logit lens."
        ),
        "",
        (
            f"Corpus: `{manifest['name']}` built from {len(manifest['sources_used'])} installed packages/crates with "
            "open licences (`manifest.json` lists each with its version and licence; the text itself is never "
            f"redistributed). Statistics: {how}; LAPE packing, windows of {cfg.stats.seq_len} tokens, at most "
            f"{cfg.stats.max_tokens_per_language or 'all'} tokens per language."
        ),
        "",
        "| language | train files | held-out files | top sources |",
        "|---|---:|---:|---|",
        *[
            f"| {l} | {counts[l]['train_documents']} | {counts[l]['heldout_documents']} | "
            + ", ".join(f"{s} {n}" for s, n in list(counts[l]["top_sources"].items())[:4])
            + " |"
            for l in languages
        ],
        "",
    ]
    if missing:
        lines += [
            "Left out (no files on this machine): "
            + "; ".join(f"{l} — {d.get('hint', d['reason'])}" for l, d in missing.items())
            + ".",
            "",
        ]
    lines += findings(neurons, ppl, lens)
    lines += masks_section(cfg, stats, neurons, languages)
    if ppl is not None:
        lines += ppl_section(cfg, ppl)
    if lens is not None:
        lines += lens_section(lens)
    lines += [
        "## Wall time",
        "",
        "This run: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f"; total {sum(timings.values()):.0f} s.",
    ]
    if earlier:
        lines += [
            "",
            "Reused results, from their own run: " + ", ".join(f"{k} {v:.0f} s" for k, v in earlier.items()) + ".",
        ]
    lines += [""]
    return "\n".join(lines)


def headline(ppl, neurons) -> dict:
    """The few numbers worth quoting, also written to summary.json."""
    out = {
        "lape_neurons": int(neurons.lape.unique_count()),
        "fixed_count_neurons": {l: int(neurons.fixed_count[l].sum()) for l in neurons.fixed_count.languages},
    }
    if ppl is not None:
        dom = ppl.diagonal_dominance("delta_nll")
        out.update(
            row_dominant=dom["row_dominant"],
            deactivated_languages=dom["languages"],
            median_own_over_mean_other=dom["median_ratio_mean"],
            own_delta_nll={k: v["own"] for k, v in dom["per_language"].items()},
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="e.g. configs/code_neurons.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. ppl.enabled=false",
    )
    args = parser.parse_args(argv)
    cfg: CodeNeuronsConfig = config_lib.load_config(args.config, CodeNeuronsConfig, args.set)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config_lib.to_dict(cfg))), sort_keys=False))
    log = lambda msg: print(f"[code_neurons] {msg}", flush=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    root, manifest, languages, missing = resolve_code_corpus(cfg, log)
    timings["corpus"] = time.perf_counter() - t

    t = time.perf_counter()
    model = jlang.load_model(cfg.model.source, dtype=cfg.model.dtype)
    timings["load model"] = time.perf_counter() - t

    t = time.perf_counter()
    fingerprint = hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()[:16]
    train = code_corpus("train", languages, path=root)
    stats, how = statistics(cfg, model, train, languages, fingerprint, log)
    timings["statistics"] = time.perf_counter() - t

    t = time.perf_counter()
    c = cfg.identify
    neurons = identify_code_neurons(
        stats,
        top_rate=c.top_rate,
        filter_rate=c.filter_rate,
        activation_bar_ratio=c.activation_bar_ratio,
        num_per_language=c.num_per_language,
    )
    neurons.lape.save(out / "masks_lape.npz")
    neurons.fixed_count.save(out / "masks_fixed.npz")
    neurons.lape.plot_heatmap(out / "masks_lape.png", title=f"{model.name}: LAPE neurons per layer")
    neurons.fixed_count.plot_heatmap(
        out / "masks_fixed.png",
        title=f"fixed count ({c.num_per_language} per language) per layer",
    )
    save_heatmaps(
        out / "overlap.png",
        [
            dict(
                matrix=m.jaccard(),
                rows=languages,
                cols=languages,
                vmin=0.0,
                vmax=1.0,
                title=f"{name}: Jaccard overlap",
                cbar_label="Jaccard",
                fmt="{:.2f}",
            )
            for name, m in (("LAPE", neurons.lape), ("fixed count", neurons.fixed_count))
        ],
        ncols=2,
        panel_size=(0.6 * len(languages) + 2.5, 0.5 * len(languages) + 2),
    )
    timings["identify"] = time.perf_counter() - t
    log(neurons.fixed_count.summary_table())

    previous = (
        json.loads((out / "summary.json").read_text()).get("timings", {}) if (out / "summary.json").is_file() else {}
    )
    earlier = {"statistics": previous["statistics"]} if how.startswith("reused") and "statistics" in previous else {}
    ppl = lens = None
    if cfg.ppl.enabled:
        ppl = reused(cfg, "ppl", log)
        if ppl is None:
            t = time.perf_counter()
            ppl = deactivation_ppl(cfg, model, neurons, root, languages)
            timings["PPL matrix"] = time.perf_counter() - t
            log(f"PPL matrix in {timings['PPL matrix']:.0f} s\n{ppl.table('delta_nll', '{:.3f}')}\n{verdict(ppl)[0]}")
        elif "PPL matrix" in previous:
            earlier["PPL matrix"] = previous["PPL matrix"]
    if cfg.lens.enabled:
        lens = reused(cfg, "lens", log)
        if lens is None:
            t = time.perf_counter()
            lens = code_lens(cfg, model, root, languages)
            timings["keyword lens"] = time.perf_counter() - t
        elif "keyword lens" in previous:
            earlier["keyword lens"] = previous["keyword lens"]

    summary = headline(ppl, neurons)
    summary.update(
        model=model.name,
        languages=languages,
        left_out=list(missing),
        timings={**timings, **earlier},
        tokens={l: int(n) for l, n in zip(stats.languages, stats.tokens)},
    )
    write_json(out / "summary.json", summary)
    (out / "report.md").write_text(
        report(cfg, model, manifest, languages, missing, stats, how, neurons, ppl, lens, timings, earlier),
        encoding="utf-8",
    )
    log(f"wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
