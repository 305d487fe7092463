"""`jlang identify`, `jlang export`, `jlang show`: masks from statistics, in other formats, as a table and heat map."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from jlang import models
from jlang.cli.common import load_stats
from jlang.config import IdentifySection
from jlang.masks import NeuronMasks
from jlang.methods.chain import identify
from jlang.parallel import distributed
from jlang.stats.container import check_stats_fit_model

LAPE_LANGUAGES = ["en", "zh", "fr", "es", "vi", "id", "ja"]  # the languages of the masks published with LAPE


def cmd_identify(args: argparse.Namespace) -> int:
    stats = load_stats(args.stats)
    prompt_stats = load_stats(args.prompt_stats) if args.prompt_stats else None
    if args.model:
        check_stats_fit_model(stats, models.load_model(args.model, progress=False))
    lam = args.lam if args.lam == "auto" else float(args.lam)
    section = IdentifySection(
        method=args.method,
        top_rate=args.top_rate,
        filter_rate=args.filter_rate,
        activation_bar_ratio=args.activation_bar_ratio,
        lam=lam,
    )
    masks = identify(stats, section, prompt_stats)
    masks.save(args.out)  # written by process 0 only (jlang.io)
    if distributed.is_primary():
        print(masks.summary_table())
        print(f"wrote {args.out}")
    return 0


def add_identify_parser(sub) -> None:
    p = sub.add_parser("identify", help="language-specific neurons from statistics (LAPE or ternary)")
    p.add_argument("--stats", required=True, help="a stats.npz (or the directory holding it)")
    p.add_argument("--method", default="lape", choices=["lape", "ternary"])
    p.add_argument("--top-rate", type=float, default=0.01)
    p.add_argument("--filter-rate", type=float, default=0.95)
    p.add_argument("--activation-bar-ratio", type=float, default=0.95)
    p.add_argument("--lam", default="auto", help='ternary: lambda, or "auto" for AutoSweep')
    p.add_argument("--prompt-stats", default=None, help="ternary: prompt-only statistics to subtract")
    p.add_argument("--model", default=None, help="check that the statistics come from this model")
    p.add_argument("--out", required=True, help="masks .npz to write")
    distributed.add_arguments(p, suppress_defaults=True)
    p.set_defaults(func=cmd_identify)


def cmd_export(args: argparse.Namespace) -> int:
    masks = NeuronMasks.load(args.masks)
    if args.format == "lape-pt":
        masks.to_lape_pt(args.out)
    else:
        masks.save(args.out)
    print(f"wrote {args.out} ({args.format}, languages {' '.join(masks.languages)})")
    return 0


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write masks in another format")
    p.add_argument("masks", help="a masks .npz")
    p.add_argument("--format", required=True, choices=["lape-pt", "npz"], help="lape-pt: torch List[List[LongTensor]]")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)


def cmd_show(args: argparse.Namespace) -> int:
    path = Path(args.masks)
    masks = NeuronMasks.from_lape_pt(path, args.languages) if path.suffix in (".pt", ".pth") else NeuronMasks.load(path)
    print(masks.summary_table())
    png = Path(args.png) if args.png else path.with_suffix(".png")
    masks.plot_heatmap(png)
    print(f"heat map: {png}")
    return 0


def add_show_parser(sub) -> None:
    p = sub.add_parser("show", help="table and heat map of a mask file")
    p.add_argument("masks", help="a masks .npz (or a LAPE .pt/.pth with --languages)")
    p.add_argument("--languages", nargs="+", default=LAPE_LANGUAGES, help="for .pt masks")
    p.add_argument("--png", default=None, help="heat map path (default: beside the masks)")
    p.set_defaults(func=cmd_show)


COMMANDS: list[Callable] = [add_identify_parser, add_export_parser, add_show_parser]
