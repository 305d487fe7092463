"""The `jlang` command.

Each sub-command is a small function over the library's public API, registered
in `_COMMANDS`; `jlang SUBCOMMAND --help` documents its options.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import jlang


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    p.add_argument(
        "--mesh", default=None, metavar="DATA,MODEL",
        help="device mesh sizes, e.g. 2,4 (default: one device)",
    )  # fmt: skip


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
        from jlang.generate import greedy

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


_COMMANDS: list[Callable] = [_info_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jlang", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"jlang {jlang.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _COMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (jlang.CheckpointError, jlang.UnsupportedModelError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"jlang: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
