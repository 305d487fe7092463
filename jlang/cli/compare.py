"""`jlang compare`: base vs aligned checkpoint on the same tokens (`jlang.analysis.compare`).

    jlang compare --base default --aligned runs/align/final --corpus default \\
        --aligned-languages fr de --out runs/compare

writes `{out}/report.md`, `compare.json`, `types.png`, `overlap.png`, `delta_p.png`,
`stages.png` (+ `spontaneous.png` with `--aligned-languages`), and the statistics,
masks and perplexities of both checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

from jlang.analysis.compare.report import spontaneous_verdict
from jlang.analysis.compare.run import CompareConfig, run_compare
from jlang.cli.common import show_progress
from jlang.config import load_config
from jlang.parallel import distributed

__all__ = ["COMMANDS", "add_compare_parser", "cmd_compare", "config_from_args"]


def _lam(text: str):
    return text if text == "auto" else float(text)


def config_from_args(args: argparse.Namespace):
    """The `CompareConfig` the command line describes (from `--config` YAML when given, then the options)."""
    cfg = load_config(args.config, CompareConfig, args.set or []) if args.config else CompareConfig()
    given = {
        "base": args.base,
        "aligned": args.aligned,
        "corpus": args.corpus,
        "split": args.split,
        "languages": tuple(args.languages) if args.languages else None,
        "aligned_languages": tuple(args.aligned_languages) if args.aligned_languages else None,
        "out": args.out,
        "dtype": args.dtype,
        "mode": args.mode,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "max_tokens_per_language": args.max_tokens_per_language,
        "top_rate": args.top_rate,
        "lam": args.lam,
        "curve": args.curve,
        "stages": args.stages,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})
    if args.max_tokens_per_language is not None and args.max_tokens_per_language <= 0:
        cfg = dataclasses.replace(cfg, max_tokens_per_language=None)  # 0 = no cap
    if args.no_reuse:
        cfg = dataclasses.replace(cfg, reuse=False)
    ppl = cfg.ppl
    if args.split is not None or args.ppl_split is not None:
        ppl = dataclasses.replace(ppl, split=args.ppl_split or args.split)
    if args.no_ppl:
        ppl = dataclasses.replace(ppl, enabled=False)
    if args.ppl_max_tokens is not None:
        ppl = dataclasses.replace(
            ppl,
            max_tokens_per_language=args.ppl_max_tokens if args.ppl_max_tokens > 0 else None,
        )
    if args.ppl_seq_len is not None:
        ppl = dataclasses.replace(ppl, seq_len=args.ppl_seq_len)
    if args.vocab_chunk is not None:
        ppl = dataclasses.replace(ppl, vocab_chunk=args.vocab_chunk)
    return dataclasses.replace(cfg, ppl=ppl)


def cmd_compare(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    result, paths = run_compare(cfg, progress=show_progress(args))
    if not distributed.is_primary():  # several processes: process 0 reports (and alone wrote the files)
        return 0
    h = result.headline()
    print(
        "types base -> aligned: "
        + ", ".join(f"{t} {h['types_base'][t]} -> {h['types_aligned'][t]}" for t in h["types_base"])
    )
    print(
        f"mean Jaccard of each language's neurons, base vs aligned: {h['mean_own_jaccard']:.3f}; "
        f"mean |Δp| {h['mean_abs_dp']:.5f}"
    )
    print(
        f"stages start at layers {[0, *h['stage_boundaries_base']]} (base), "
        f"{[0, *h['stage_boundaries_aligned']]} (aligned)"
    )
    if result.spontaneous is not None:
        print(spontaneous_verdict(result.spontaneous))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _add_models_and_corpus(p: argparse.ArgumentParser) -> None:
    """The two checkpoints, the tokens they run on, and where the results go."""
    p.add_argument(
        "--base",
        default=None,
        help='the model before alignment (default "default"): a packaged name, an HF '
        "directory, a .gguf or a jlang checkpoint",
    )
    p.add_argument("--aligned", default=None, help="the model after alignment (required unless in --config)")
    p.add_argument("--corpus", default=None, help='"default" (packaged corpus) or a directory of {lang}.txt files')
    p.add_argument(
        "--split",
        default=None,
        choices=["train", "heldout"],
        help="corpus split for the statistics and perplexity (default train: jlang finetune trains on the held-out "
        "parallel messages)",
    )
    p.add_argument("--languages", nargs="+", default=None, help="languages to compare (default: every corpus language)")
    p.add_argument(
        "--aligned-languages",
        nargs="+",
        default=None,
        help="languages used in alignment: adds the spontaneous-alignment section",
    )
    p.add_argument("--out", default=None, help="output directory (default runs/compare)")


def _add_statistics(p: argparse.ArgumentParser) -> None:
    """How the activation statistics of both checkpoints are collected."""
    p.add_argument(
        "--max-tokens-per-language",
        type=int,
        default=None,
        help="token cap per language for the statistics (default 4000; 0 = no cap)",
    )
    p.add_argument(
        "--mode", default=None, choices=["pack", "pad"], help="pack windows (LAPE) or one text per row (default pack)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="rows per batch (default 8)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per row (default 128)")


def _add_neurons_and_stages(p: argparse.ArgumentParser) -> None:
    """The ternary identification of each checkpoint's neurons, and the cut of the layers into stages."""
    p.add_argument("--top-rate", type=float, default=None, help="ternary: share of neurons selected (default 0.01)")
    p.add_argument("--lam", type=_lam, default=None, help='ternary λ, or "auto" for AutoSweep (default)')
    p.add_argument(
        "--curve",
        default=None,
        choices=["both", "divergence", "language_share"],
        help="per-layer curve(s) cut into stages (default both)",
    )
    p.add_argument("--stages", type=int, default=None, help="number of stages (default 4)")


def _add_perplexity(p: argparse.ArgumentParser) -> None:
    """The perplexity of both checkpoints."""
    p.add_argument(
        "--ppl-split",
        default=None,
        choices=["train", "heldout"],
        help="corpus split of the perplexity (default: --split)",
    )
    p.add_argument("--no-ppl", action="store_true", help="skip the perplexity of both checkpoints")
    p.add_argument(
        "--ppl-max-tokens", type=int, default=None, help="perplexity token cap per language (default 1000; 0 = none)"
    )
    p.add_argument("--ppl-seq-len", type=int, default=None, help="perplexity: longest sentence in tokens (default 64)")
    p.add_argument(
        "--vocab-chunk", type=int, default=None, help="vocabulary chunk of the chunked log-softmax (default 16384)"
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The dtype, reuse of earlier results, progress, and the YAML config the options override."""
    # Not `add_model_args`: default None keeps the --config's dtype, and compare takes no --mesh.
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="parameter dtype (default float32)")
    p.add_argument("--no-reuse", action="store_true", help="recompute statistics even if {out} holds matching ones")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--config", default=None, help="a YAML CompareConfig; command-line options override it")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a --config key, e.g. --set ppl.batch_size=8",
    )


def add_compare_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="base vs aligned checkpoint: neuron types, overlaps, Δ activation probability, layer stages",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for add in (_add_models_and_corpus, _add_statistics, _add_neurons_and_stages, _add_perplexity, _add_run_options):
        add(p)
    p.set_defaults(func=cmd_compare)


COMMANDS: list[Callable] = [add_compare_parser]
