"""`jlang info MODEL`: what a model is (family, shapes, parameters, where it was loaded from), and optionally
its greedy continuations of a few prompts."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from jlang.cli.common import MODEL_HELP, add_model_args, load_model
from jlang.models.generate import greedy


def cmd_info(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model = load_model(args)
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
        for prompt, cont in zip(args.prompt, greedy(model, args.prompt, max_new_tokens=args.max_new_tokens)):
            print(f"\n> {prompt}\n{prompt}{cont}")
    return 0


def add_info_parser(sub) -> None:
    p = sub.add_parser("info", help="describe a model (and optionally continue prompts greedily)")
    p.add_argument("model", help=MODEL_HELP)
    add_model_args(p)
    p.add_argument("--prompt", action="append", help="a prompt to continue greedily (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.set_defaults(func=cmd_info)


COMMANDS: list[Callable] = [add_info_parser]
