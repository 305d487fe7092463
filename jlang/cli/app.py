"""The `jlang` command.

The registry of sub-commands: each command module lists its parser builders in
`COMMANDS` (each registers one sub-command, whose `func` runs it); `COMMAND_MODULES`
orders them as `jlang --help` lists them. `jlang SUBCOMMAND --help` documents its options.
"""

from __future__ import annotations

import argparse
import sys

import jlang
from jlang.cli import (
    analysis,
    code,
    compare,
    convert,
    corpus,
    evals,
    finetune,
    generate,
    info,
    masks,
    plnd,
    run,
    sae,
    stats,
    studies,
)
from jlang.models import CheckpointError, UnsupportedModelError
from jlang.parallel import distributed

COMMAND_MODULES = [
    info,
    convert,
    generate,
    corpus,
    stats,
    masks,
    run,
    evals,
    finetune,
    compare,
    studies,
    analysis,
    plnd,
    code,
    sae,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jlang", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"jlang {jlang.__version__}")
    distributed.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        for register in module.COMMANDS:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `jlang ARGV...` (default: the process's arguments); the exit code: 2 on a bad input, said on stderr."""
    args = build_parser().parse_args(argv)
    try:
        distributed.initialize_from_args(args)
        return args.func(args)
    except (CheckpointError, UnsupportedModelError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"jlang: error: {e}", file=sys.stderr)
        return 2
