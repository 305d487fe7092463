"""`jlang plnd`: PLND language-specific neurons (Zhao et al. 2024) from the command line.

    jlang plnd --model default --corpus default --documents 16 --top-ffn 300 --top-attn 250 --out runs/plnd
    jlang plnd ... --mode paper          # FFN scored by the norm of the neuron's output (the paper's formula)
    jlang plnd ... --mesh 2,4            # rows over 2 devices, heads and neurons over 4

Writes `{out}/plnd.npz` (per-language top-k counts: everything else derives from it),
`masks.npz` (the language-specific FFN neurons as `NeuronMasks`, for `jlang ppl`,
`jlang show`, the PyTorch bridge), `summary.json`, `plnd.png` (units per layer x
language) and `original/{lang}.txt` (the released 5-line `str(dict)` format).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from jlang.cli.common import MODEL_HELP, add_model_args, load_corpus, load_model, show_progress
from jlang.config import CorpusSection
from jlang.io.report import write_json
from jlang.methods.plnd import PARTS, plnd


def cmd_plnd(args: argparse.Namespace) -> int:
    languages = list(args.languages or CorpusSection.languages)
    model = load_model(args)
    result = plnd(
        model,
        load_corpus(args, languages),
        languages=languages,
        documents_per_language=args.documents,
        top_ffn=args.top_ffn,
        top_attn=args.top_attn,
        mode=args.mode,
        parts=args.parts,
        doc_mode=args.doc_mode,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
        shared_languages=args.shared_languages,
        progress=show_progress(args),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [result.save(out / "plnd.npz")]
    if "ffn" in result.parts:
        written.append(result.ffn.save(out / "masks.npz"))
    summary = result.summary()
    written += [
        write_json(out / "summary.json", summary),
        result.plot_heatmap(out / "plnd.png"),
    ]
    if result.parts == PARTS:
        result.to_original_text(out / "original")
        written.append(out / "original")
    names = {"ffn": "FFN", "qk": "Q/K", "vo": "V/O"}
    shared = ", ".join(f"{names[p]} {n}" for p, n in summary["shared"].items())
    print(
        f"PLND ({args.mode} mode) on {model.name}: top-{args.top_ffn} FFN / top-{args.top_attn} attention per "
        f"document and layer; units shared by {', '.join(summary['removed_shared_by']) or 'no language'} removed "
        f"({shared})"
    )
    cols = [(p, w) for p in result.parts for w in ("activated", "specific")]
    print(f"{'lang':<6}{'docs':>6}" + "".join(f"{names[p] + ' ' + w[:4]:>10}" for p, w in cols))
    for lang, row in summary["per_language"].items():
        print(f"{lang:<6}{row['documents']:>6}" + "".join(f"{row[f'{p}_{w}']:>10}" for p, w in cols))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def add_plnd_parser(sub) -> None:
    p = sub.add_parser(
        "plnd",
        help="PLND language-specific neurons: FFN neurons and attention dimensions (Zhao et al. 2024)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="default", help=MODEL_HELP)
    p.add_argument(
        "--corpus",
        default="default",
        help='"default" or a directory of {lang}.txt / {lang}.jsonl files',
    )
    p.add_argument("--split", default="train", choices=["train", "heldout"], help="corpus split")
    p.add_argument(
        "--languages",
        nargs="+",
        default=None,
        help="languages (default: the 12 default languages)",
    )
    p.add_argument(
        "--documents",
        type=int,
        default=100,
        help="documents sampled per language (released: 1000)",
    )
    p.add_argument(
        "--top-ffn",
        type=int,
        required=True,
        help="FFN neurons kept per document and layer (released: 2000)",
    )
    p.add_argument(
        "--top-attn",
        type=int,
        required=True,
        help="Q/K and V/O dimensions kept per document and layer, of heads x head_dim (released: 1000)",
    )
    p.add_argument(
        "--mode",
        default="code",
        choices=["code", "paper"],
        help="code: the released scores (FFN = sum |W_up x|); paper: FFN = norm of the neuron's output",
    )
    p.add_argument(
        "--parts",
        nargs="+",
        default=["ffn", "qk", "vo"],
        choices=["ffn", "qk", "vo"],
        help="what to score: FFN neurons, Q/K dims, V/O dims (FFN alone costs about one forward)",
    )
    p.add_argument(
        "--doc-mode",
        default="pad",
        choices=["pad", "pack"],
        help="pad: one corpus document per row (released); pack: windows of --seq-len tokens as documents",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=256,
        help="longest document (pad) or window size (pack), tokens",
    )
    p.add_argument("--batch-size", type=int, default=8, help="documents per forward")
    p.add_argument(
        "--seed",
        type=int,
        default=112,
        help="document sample seed (released: random.seed(112))",
    )
    p.add_argument(
        "--shared-languages",
        nargs="+",
        default=None,
        help="remove units activated by all of these languages (default: all languages)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_args(p)
    p.set_defaults(func=cmd_plnd)


COMMANDS: list[Callable] = [add_plnd_parser]
