"""PLND (Zhao et al. 2024, DAMO-NLP-SG/multilingual_analysis) on the default model and corpus, with a deactivation
PPL matrix.

    python experiments/plnd.py configs/plnd_default.yaml [--set plnd.mode=paper ...]

Steps (each writes under `config.out`):

1. `plnd.npz|png`, `masks.npz`, `original/`: PLND in `plnd.mode` on the train split
   (`jlang.methods.plnd.plnd`): per-document, per-layer top-k of FFN neurons and of
   Q/K and V/O attention dimensions, intersected over each language's documents,
   minus the units every language keeps. With `compare_modes`, the other mode too
   (`plnd_{mode}.npz`) and the overlap of the two FFN sets.
2. `ppl.json|png`: held-out perplexity with each language's PLND units zeroed as
   the released `test_mistral_gsm.py` does (FFN up/down, Q rows, K/V rows with the
   GQA-correct index), scored with `jlang.models.scoring.Scorer` and aggregated by
   `jlang.evals.perplexity` (`aggregate_nll`, `PPLResult`); `ppl_ffn.json|png`:
   the FFN neurons alone, with `jlang.evals.perplexity.ppl_matrix`.
3. `report.md`: counts per layer and language, figures, the PPL tables.

Paths are relative to the working directory (run from the repository root).
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
from tqdm.auto import tqdm

import jlang
from jlang import config as config_lib
from jlang import edits as edit_lib
from jlang.data.pipeline import make_batches, tokenize_corpus
from jlang.data.sources import resolve_corpus
from jlang.evals.perplexity import PPLResult, aggregate_nll, ppl_matrix
from jlang.io.report import write_json
from jlang.methods.plnd import plnd, plnd_edits
from jlang.models.decoder import AttnEdits
from jlang.models.scoring import Scorer, rows_from_batches
from jlang.parallel import make_mesh


@dataclasses.dataclass(frozen=True)
class CorpusSection:
    source: str = "default"  # "default" or a directory of {lang}.txt files with train/ and heldout/ splits
    languages: tuple[str, ...] = (
        "en",
        "zh",
        "fr",
        "es",
        "ru",
        "ja",
        "de",
        "ar",
        "ko",
        "id",
        "vi",
        "hi",
    )
    split: Literal["train", "heldout"] = "train"
    add_bos: bool = True


@dataclasses.dataclass(frozen=True)
class PLNDSection:
    mode: Literal["code", "paper"] = "code"
    compare_modes: bool = True  # also run the other mode (FFN only: the attention scores are the same) and compare
    documents_per_language: int = 16
    doc_mode: Literal["pad", "pack"] = "pack"
    seq_len: int = 64
    batch_size: int = 8
    top_ffn: int = 300
    top_attn: int = 250
    seed: int = 112
    shared_languages: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class PPLSection:
    enabled: bool = True
    languages: tuple[str, ...] | None = (
        "en",
        "zh",
        "fr",
        "ru",
        "ja",
        "ar",
    )  # None: every PLND language
    split: Literal["train", "heldout"] = "heldout"
    parts: tuple[Literal["ffn", "q", "k", "v", "o"], ...] = ("ffn", "q", "k", "v")
    ffn_only: bool = True
    batch_size: int = 16
    seq_len: int = 64
    max_tokens_per_language: int | None = 200
    vocab_chunk: int = 16384


@dataclasses.dataclass(frozen=True)
class PLNDExperimentConfig:
    """`experiments/plnd.py`: PLND neurons of the default model, and what deactivating them does to perplexity."""

    out: str = "runs/plnd_default"
    model: config_lib.ModelSection = dataclasses.field(default_factory=config_lib.ModelSection)
    mesh: config_lib.MeshSection = dataclasses.field(default_factory=config_lib.MeshSection)
    corpus: CorpusSection = CorpusSection()
    plnd: PLNDSection = PLNDSection()
    ppl: PPLSection = PPLSection()


# ----------------------------------------------------------------------------- steps


def run_mode(model, cfg: PLNDExperimentConfig, mode: str, parts=("ffn", "qk", "vo")):
    c = cfg.plnd
    corpus = resolve_corpus(cfg.corpus.source, cfg.corpus.languages, cfg.corpus.split)
    return plnd(
        model,
        corpus,
        languages=list(cfg.corpus.languages),
        documents_per_language=c.documents_per_language,
        top_ffn=c.top_ffn,
        top_attn=c.top_attn,
        mode=mode,
        parts=parts,
        doc_mode=c.doc_mode,
        seq_len=c.seq_len,
        batch_size=c.batch_size,
        seed=c.seed,
        shared_languages=c.shared_languages,
        add_bos=cfg.corpus.add_bos,
    )


def ppl_with_edits(
    model,
    corpus,
    languages,
    edits: dict,
    *,
    batch_size,
    seq_len,
    max_tokens,
    vocab_chunk,
    meta,
):
    """`PPLResult` of arbitrary `Edits` per row (FFN + attention), from `jlang.evals`' own pieces.

    `jlang.evals.perplexity.ppl_matrix` builds neuron-only edits from `NeuronMasks`; PLND's edits
    also scale attention dimensions, so its rows and columns are scored here with the same
    `Scorer` and aggregated with the same `aggregate_nll` (LAPE / NJUNLP conventions).
    """
    t0 = time.perf_counter()
    tok = tokenize_corpus(corpus, model.tokenizer, languages=languages, progress=False)
    rows = rows_from_batches(
        make_batches(
            tok,
            batch_size=batch_size,
            seq_len=seq_len,
            mode="pad",
            max_tokens=max_tokens,
            process_index=0,
            process_count=1,
        )
    )
    counts = rows.scored_counts()
    scorer = Scorer(model, vocab_chunk=vocab_chunk)
    names = list(edits)
    nll = np.zeros((len(names), len(languages)))
    nll_token = np.zeros_like(nll)
    bar = tqdm(
        total=len(names) * scorer.num_batches(rows, batch_size),
        desc="ppl (PLND edits)",
        unit="batch",
    )
    agg = None
    for i, name in enumerate(names):
        agg = aggregate_nll(
            scorer.row_sums(rows, edits[name], batch_size=batch_size, progress=bar), counts, rows.group, len(languages)
        )
        nll[i], nll_token[i] = agg["nll"], agg["nll_token"]
    bar.close()
    meta = dict(
        meta,
        mode="pad",
        seq_len=seq_len,
        batch_size=batch_size,
        max_tokens=max_tokens,
        vocab_chunk=vocab_chunk,
        seconds={"score": time.perf_counter() - t0},
    )
    return PPLResult(
        rows=names,
        columns=list(languages),
        nll=nll,
        nll_token=nll_token,
        tokens=agg["tokens"],
        sequences=agg["rows"],
        meta=meta,
    )


def none_edits(model):
    """The identity with the same pytree as PLND edits (neurons + attention), so "none" reuses their compilation."""
    c = model.config
    return dataclasses.replace(
        edit_lib.identity(model),
        attn=AttnEdits.ones(c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim),
    )


# ----------------------------------------------------------------------------- report


def md_table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---" + "|---:" * (len(header) - 1) + "|",
        *["| " + " | ".join(str(x) for x in r) + " |" for r in rows],
    ]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else float("nan")


def ppl_section(title: str, ppl, what: str, png: str) -> list[str]:
    none = ppl.rows.index("none")
    dom = ppl.diagonal_dominance("delta_nll")
    return [
        f"### {title}",
        "",
        what,
        "",
        "Baseline PPL (no edit): " + ", ".join(f"{c} {p:.1f}" for c, p in zip(ppl.columns, ppl.ppl[none])) + ".",
        "",
        "ΔNLL = log(PPL / PPL_none) (rows: deactivated language; columns: evaluated language):",
        "",
        ppl.table("delta_nll", "{:.3f}"),
        "",
        "ΔPPL = PPL − PPL_none:",
        "",
        ppl.table("delta_ppl", "{:.2f}"),
        "",
        (
            f"Diagonal: ΔNLL[k,k] is the largest of its row for **{dom['row_dominant']}/{dom['languages']}** languages "
            f"and of its column for **{dom['col_dominant']}/{dom['languages']}**; median ΔNLL[k,k] / mean_j≠k "
            f"ΔNLL[k,j] = **{dom['median_ratio_mean']:.2f}**."
        ),
        "",
        f"![{title}]({png})",
        "",
    ]


def report(cfg, model, result, other, ppl, ppl_ffn, timings) -> str:
    s = result.summary()
    c = model.config
    p = cfg.plnd
    langs = result.languages
    lines = [
        f"# PLND on `{model.name}`",
        "",
        (
            f"Zhao et al. 2024 (`DAMO-NLP-SG/multilingual_analysis`), **{result.meta['mode']} mode** "
            f"(`jlang.methods.plnd`, docs/plnd.md). Model {model.family}: {c.num_layers} layers x {c.d_ff} FFN "
            f"neurons, {c.num_heads} query heads / {c.num_kv_heads} kv head(s) x head_dim {c.head_dim} = "
            f"{c.num_heads * c.head_dim} attention dimensions per layer."
        ),
        "",
        f"Documents: {p.documents_per_language} per language x {len(langs)} languages = {int(result.documents.sum())}, "
        f"from the {cfg.corpus.split} split of the `{cfg.corpus.source}` corpus, "
        + (
            f"each a window of {p.seq_len} tokens of documents concatenated in `random.Random({p.seed})` order "
            "(doc_mode pack)"
            if p.doc_mode == "pack"
            else f"sampled with `random.Random({p.seed}).sample` as the released code, truncated to {p.seq_len} tokens"
        )
        + f". Per document and layer: top {p.top_ffn} of {c.d_ff} FFN neurons, top {p.top_attn} of "
        f"{c.num_heads * c.head_dim} Q/K and of V/O dimensions; activated = in the top-k of every document of the "
        f"language; language-specific = activated minus the units activated by all of "
        f"{', '.join(s['removed_shared_by'])} (FFN {s['shared']['ffn']}, Q/K {s['shared']['qk']}, V/O "
        f"{s['shared']['vo']} units removed).",
        "",
        "## Units per language",
        "",
    ]
    lines += md_table(
        ["lang", "FFN activated", "FFN specific", "Q/K activated", "Q/K specific", "V/O activated", "V/O specific"],
        [
            [
                l,
                *(
                    s["per_language"][l][f"{part}_{w}"]
                    for part in ("ffn", "qk", "vo")
                    for w in ("activated", "specific")
                ),
            ]
            for l in langs
        ],
    )
    lines += [
        "",
        "![PLND units per layer and language](plnd.png)",
        "",
        "## Language-specific FFN neurons per layer",
        "",
    ]
    ffn_layers = result.layer_counts("ffn")
    lines += md_table(
        ["layer", *langs],
        [[l, *ffn_layers[:, l].tolist()] for l in range(result.num_layers)],
    )
    for part, name in (("qk", "Q/K"), ("vo", "V/O")):
        per = result.layer_counts(part)
        busiest = [
            f"{l} {int(per[k].sum())} (top layer {int(per[k].argmax())}: {int(per[k].max())})"
            for k, l in enumerate(langs)
        ]
        lines += [
            "",
            f"Language-specific {name} dimensions (total, busiest layer): " + "; ".join(busiest) + ".",
        ]
    if other is not None:
        a, b = result.specific("ffn"), other.specific("ffn")
        m1, m2 = result.meta["mode"], other.meta["mode"]
        lines += [
            "",
            f"## `{m1}` vs `{m2}` mode",
            "",
            (
                f"The modes differ only in the FFN score (code: Σ_t |W_up x|; paper: Σ_t |a·up|·‖W_down‖), so "
                f"`{m2}` mode was run on the FFN alone (same documents, same top-k). Language-specific FFN "
                "neurons:"
            ),
            "",
        ]
        lines += md_table(
            ["lang", m1, m2, "both", "Jaccard"],
            [
                [l, int(a[k].sum()), int(b[k].sum()), int((a[k] & b[k]).sum()), f"{jaccard(a[k], b[k]):.3f}"]
                for k, l in enumerate(langs)
            ],
        )
        la, lb = a.sum(axis=(0, 2)), b.sum(axis=(0, 2))
        lines += ["", "Summed over languages, per layer:", ""]
        lines += md_table(
            ["layer", m1, m2],
            [[l, int(la[l]), int(lb[l])] for l in range(result.num_layers)],
        )
        lines += ["", f"![{other.meta['mode']} mode](plnd_{other.meta['mode']}.png)"]
    if ppl is not None:
        lines += [
            "",
            "## Deactivation perplexity (held-out split)",
            "",
            (
                f"One held-out message per row (pad mode, at most {cfg.ppl.max_tokens_per_language} scored tokens per "
                f"language, {int(ppl.tokens.sum()):,} in all); PPL = exp(mean over messages of the per-message mean "
                "NLL). ΔNLL compares languages better than ΔPPL, whose baselines differ."
            ),
            "",
        ]
        lines += ppl_section(
            "FFN + attention (as released)",
            ppl,
            f"Row k: language k's specific units zeroed in every layer: {', '.join(cfg.ppl.parts)} "
            "(K/V rows with the GQA-correct index `(h // group)·D + j`).",
            "ppl.png",
        )
        if ppl_ffn is not None:
            lines += ppl_section(
                "FFN neurons only",
                ppl_ffn,
                "Row k: language k's specific FFN neurons set to 0 (`jlang.evals.perplexity.ppl_matrix`).",
                "ppl_ffn.png",
            )
    lines += [
        "## Wall time",
        "",
        ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".",
        "",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. plnd.mode=paper",
    )
    args = parser.parse_args(argv)
    cfg: PLNDExperimentConfig = config_lib.load_config(args.config, PLNDExperimentConfig, args.set)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config_lib.to_dict(cfg))), sort_keys=False))
    log = lambda msg: print(f"[plnd] {msg}", flush=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.model) if (cfg.mesh.data or cfg.mesh.model) else None
    model = jlang.load_model(cfg.model.source, dtype=cfg.model.dtype, mesh=mesh)
    timings["load model"] = time.perf_counter() - t

    t = time.perf_counter()
    result = run_mode(model, cfg, cfg.plnd.mode)
    timings[f"PLND ({cfg.plnd.mode})"] = time.perf_counter() - t
    result.save(out / "plnd.npz")
    result.ffn.save(out / "masks.npz")
    result.plot_heatmap(out / "plnd.png")
    result.to_original_text(out / "original")
    write_json(out / "summary.json", result.summary())
    log(
        f"PLND ({cfg.plnd.mode}) in {timings[f'PLND ({cfg.plnd.mode})']:.0f} s: "
        + ", ".join(
            f"{l} {v['ffn_specific']}/{v['qk_specific']}/{v['vo_specific']}"
            for l, v in result.summary()["per_language"].items()
        )
    )

    other = None
    if cfg.plnd.compare_modes:
        mode = "paper" if cfg.plnd.mode == "code" else "code"
        t = time.perf_counter()
        other = run_mode(model, cfg, mode, parts=("ffn",))  # the modes differ only in the FFN score
        timings[f"PLND ({mode})"] = time.perf_counter() - t
        other.save(out / f"plnd_{mode}.npz")
        other.plot_heatmap(out / f"plnd_{mode}.png")

    ppl = ppl_ffn = None
    if cfg.ppl.enabled:
        c = cfg.ppl
        languages = list(c.languages or result.languages)
        corpus = resolve_corpus(cfg.corpus.source, languages, c.split)
        t = time.perf_counter()
        edits = {
            "none": none_edits(model),
            **{l: plnd_edits(result, l, parts=c.parts, model=model) for l in languages},
        }
        ppl = ppl_with_edits(
            model,
            corpus,
            languages,
            edits,
            batch_size=c.batch_size,
            seq_len=c.seq_len,
            max_tokens=c.max_tokens_per_language,
            vocab_chunk=c.vocab_chunk,
            meta={"model": model.name, "masks": f"plnd-{result.meta['mode']}", "parts": list(c.parts), "gqa": "fixed"},
        )
        ppl.save(out / "ppl")
        timings["PPL (FFN + attention)"] = time.perf_counter() - t
        log(f"PPL (FFN + attention) in {timings['PPL (FFN + attention)']:.0f} s\n{ppl.table('delta_nll', '{:.3f}')}")
        if c.ffn_only:
            t = time.perf_counter()
            ppl_ffn = ppl_matrix(
                model,
                result.ffn,
                corpus,
                languages=languages,
                batch_size=c.batch_size,
                seq_len=c.seq_len,
                mode="pad",
                max_tokens=c.max_tokens_per_language,
                vocab_chunk=c.vocab_chunk,
            )
            ppl_ffn.save(out / "ppl_ffn")
            timings["PPL (FFN only)"] = time.perf_counter() - t
            log(f"PPL (FFN only) in {timings['PPL (FFN only)']:.0f} s\n{ppl_ffn.table('delta_nll', '{:.3f}')}")

    (out / "report.md").write_text(report(cfg, model, result, other, ppl, ppl_ffn, timings), encoding="utf-8")
    log(f"wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
