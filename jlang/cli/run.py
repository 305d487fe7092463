"""`jlang run CONFIG`: the whole LAPE chain from a YAML config (statistics, masks, heat map, summary)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from jlang.config import RunConfig, load_config
from jlang.methods.chain import run_lape
from jlang.parallel import distributed


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, RunConfig, args.set or [])
    result = run_lape(cfg, progress=distributed.is_primary())
    if not distributed.is_primary():
        return 0
    print(Path(result["summary"]).read_text())
    print("wrote " + ", ".join(result[k] for k in ("stats", "masks", "heatmap", "summary")))
    return 0


def add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="the whole chain from a YAML config: statistics, masks, heat map, summary")
    p.add_argument("config", help="e.g. configs/lape_default.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set stats.batch_size=4")
    p.set_defaults(func=cmd_run)


COMMANDS: list[Callable] = [add_run_parser]
