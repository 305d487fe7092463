"""The `jlang` command.

Each sub-command is a small function over the library's public API, registered
in `_COMMANDS`; `jlang SUBCOMMAND --help` documents its options.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jlang
from jlang.cli.evals import EVAL_COMMANDS
from jlang.cli.generate import _generate_parser
from jlang.cli.stats import _stats_parser
from jlang.parallel import distributed


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    p.add_argument(
        "--mesh",
        default=None,
        metavar="DATA,MODEL",
        help="device mesh sizes, e.g. 2,4 (default: one device; all devices on data with several processes)",
    )


def _mesh(spec: str | None):
    if not spec:
        return None
    from jlang.parallel import make_mesh

    try:
        data, model = (int(x) for x in spec.split(","))
    except ValueError:
        raise SystemExit(f"jlang: --mesh wants DATA,MODEL (two integers), got {spec!r}") from None
    return make_mesh(data=data, model=model)


def cmd_info(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model = jlang.load_model(args.model, dtype=args.dtype, mesh=_mesh(args.mesh))
    load_s = time.perf_counter() - start
    c = model.config
    rows = [
        ("model", model.name),
        ("family", model.family),
        ("layers", c.num_layers),
        ("neurons per layer", c.d_ff),
        ("parameters", f"{model.num_params:,}"),
        ("dtype", model.dtype),
        ("d_model / heads / kv heads / head_dim", f"{c.d_model} / {c.num_heads} / {c.num_kv_heads} / {c.head_dim}"),
        ("vocabulary", f"{c.vocab_size:,}"),
        ("sliding-window layers", f"{sum(c.local_layers)} of {c.num_layers} (window {c.sliding_window})"),
        ("loaded from", model.source),
        ("load time", f"{load_s:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.prompt:
        from jlang.models.generate import greedy

        for prompt, cont in zip(args.prompt, greedy(model, args.prompt, max_new_tokens=args.max_new_tokens)):
            print(f"\n> {prompt}\n{prompt}{cont}")
    return 0


def _info_parser(sub) -> None:
    p = sub.add_parser("info", help="describe a model (and optionally continue prompts greedily)")
    p.add_argument("model", help='"default", "smollm2", a Hugging Face directory, a .gguf file or a jlang checkpoint')
    _add_model_args(p)
    p.add_argument("--prompt", action="append", help="a prompt to continue greedily (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.set_defaults(func=cmd_info)


def cmd_corpus_build(args: argparse.Namespace) -> int:
    from jlang.data.corpora import gettext as gc

    out = args.out or gc.default_corpus_dir()
    if args.out is None:
        path = gc.ensure_default_corpus(out)
        manifest = json.loads((path / "manifest.json").read_text())
    else:
        manifest = gc.build_gettext_corpus(out, languages=args.languages or gc.DEFAULT_LANGUAGES)
    print(gc.format_summary(manifest))
    if args.tokens_for:
        model = jlang.load_model(args.tokens_for, progress=False)
        counts = gc.count_tokens(out, model.tokenizer)
        print(f"\ntokens per language ({model.name} tokenizer, train split):")
        for lang, n in counts.items():
            print(f"  {lang:<4} {n:>10,}")
    return 0


def _corpus_parser(sub) -> None:
    p = sub.add_parser("corpus", help="build the packaged multilingual corpus")
    csub = p.add_subparsers(dest="corpus_command", required=True, metavar="ACTION")
    b = csub.add_parser("build", help="extract human translations from installed gettext catalogs")
    b.add_argument("--out", default=None, help="output directory (default: jlang's cache, built once)")
    b.add_argument("--languages", nargs="+", default=None, help="language codes (default: the 12 default languages)")
    b.add_argument("--tokens-for", default=None, metavar="MODEL", help="also report tokens per language for MODEL")
    b.set_defaults(func=cmd_corpus_build)


def _load_stats(path: str):
    from jlang.stats import ActivationStats

    p = Path(path)
    return ActivationStats.load(p / "stats.npz" if p.is_dir() else p)


def cmd_identify(args: argparse.Namespace) -> int:
    from jlang.config import IdentifySection
    from jlang.methods.chain import identify
    from jlang.stats.container import check_stats_fit_model

    stats = _load_stats(args.stats)
    prompt_stats = _load_stats(args.prompt_stats) if args.prompt_stats else None
    if args.model:
        check_stats_fit_model(stats, jlang.load_model(args.model, progress=False))
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


def _identify_parser(sub) -> None:
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
    from jlang.masks import NeuronMasks

    masks = NeuronMasks.load(args.masks)
    if args.format == "lape-pt":
        masks.to_lape_pt(args.out)
    else:
        masks.save(args.out)
    print(f"wrote {args.out} ({args.format}, languages {' '.join(masks.languages)})")
    return 0


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write masks in another format")
    p.add_argument("masks", help="a masks .npz")
    p.add_argument("--format", required=True, choices=["lape-pt", "npz"], help="lape-pt: torch List[List[LongTensor]]")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)


def cmd_show(args: argparse.Namespace) -> int:
    from jlang.masks import NeuronMasks

    path = Path(args.masks)
    masks = NeuronMasks.from_lape_pt(path, args.languages) if path.suffix in (".pt", ".pth") else NeuronMasks.load(path)
    print(masks.summary_table())
    png = Path(args.png) if args.png else path.with_suffix(".png")
    masks.plot_heatmap(png)
    print(f"heat map: {png}")
    return 0


def _show_parser(sub) -> None:
    p = sub.add_parser("show", help="table and heat map of a mask file")
    p.add_argument("masks", help="a masks .npz (or a LAPE .pt/.pth with --languages)")
    p.add_argument("--languages", nargs="+", default=["en", "zh", "fr", "es", "vi", "id", "ja"], help="for .pt masks")
    p.add_argument("--png", default=None, help="heat map path (default: beside the masks)")
    p.set_defaults(func=cmd_show)


def cmd_run(args: argparse.Namespace) -> int:
    from jlang.config import RunConfig, load_config
    from jlang.methods.chain import run_lape

    cfg = load_config(args.config, RunConfig, args.set or [])
    result = run_lape(cfg, progress=distributed.is_primary())
    if not distributed.is_primary():
        return 0
    print(Path(result["summary"]).read_text())
    print("wrote " + ", ".join(result[k] for k in ("stats", "masks", "heatmap", "summary")))
    return 0


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="the whole chain from a YAML config: statistics, masks, heat map, summary")
    p.add_argument("config", help="e.g. configs/lape_default.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set stats.batch_size=4")
    p.set_defaults(func=cmd_run)


_COMMANDS: list[Callable] = [
    _info_parser,
    _generate_parser,
    _corpus_parser,
    _stats_parser,
    _identify_parser,
    _export_parser,
    _show_parser,
    _run_parser,
    *EVAL_COMMANDS,
]
# The method and study modules' sub-commands: each `jlang/<name>_cli.py` exports COMMANDS (parser builders).
_COMMAND_MODULES: list[str] = [
    "jlang.cli.finetune",
    "jlang.cli.compare",
    "jlang.cli.studies",
    "jlang.cli.analysis",
    "jlang.cli.plnd",
    "jlang.cli.code",
    "jlang.cli.sae",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jlang", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"jlang {jlang.__version__}")
    distributed.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _COMMANDS + [r for m in _COMMAND_MODULES for r in importlib.import_module(m).COMMANDS]:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        distributed.initialize_from_args(args)
        return args.func(args)
    except (jlang.CheckpointError, jlang.UnsupportedModelError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"jlang: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
