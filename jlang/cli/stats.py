"""`jlang stats`: the statistics pass from the command line, resumable and multi-process.

    jlang stats --model M --corpus DIR --out OUT                      # one process
    jlang stats ... --checkpoint-every 200                            # checkpoint every 200 batches
    jlang stats ... --resume                                          # continue after SIGTERM / preemption
    jlang stats ... --coordinator 10.0.0.2:1234 --num-processes 4 --process-id $I   # on each of 4 hosts
    jlang stats ... --distributed                                     # TPU pod slice: JAX finds the hosts

A checkpoint (orbax: exact accumulators + grain iterator state) is saved every
`--checkpoint-every` batches and when SIGTERM or SIGINT arrives; the process
then exits with code 128 + signal number. `--resume` continues and ends with
exactly the counts of an uninterrupted run. The result `OUT/stats.npz` is
written by process 0 only, atomically, and the checkpoint is deleted after it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from jlang.cli.common import add_model_args, load_corpus, load_model
from jlang.config import CorpusSection, StatsSection
from jlang.io.atomic import output_path
from jlang.io.checkpoint import RunInterrupted, check_no_stale_checkpoint
from jlang.parallel import distributed
from jlang.stats.collect import collect_stats, finish

DEFAULT_CHECKPOINT_EVERY = 100
CHECKPOINT_SUBDIR = "stats-checkpoint"


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """`--checkpoint-dir`, or `OUT/stats-checkpoint`."""
    return output_path(args.checkpoint_dir) if args.checkpoint_dir else output_path(args.out) / CHECKPOINT_SUBDIR


def cmd_stats(args: argparse.Namespace) -> int:
    """Check inputs (checkpoint state, corpus, mesh, model), run the pass, write `OUT/stats.npz` on process 0."""
    distributed.initialize_from_args(args)  # a no-op when jlang.cli.app already did it
    primary = distributed.is_primary()
    if args.checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    ckpt = checkpoint_dir(args)
    step = check_no_stale_checkpoint(ckpt, args.resume)  # fail before loading anything
    if primary and args.resume:
        print(
            f"resuming from {ckpt} ({step} batches done)"
            if step is not None
            else f"no checkpoint in {ckpt}; starting from the first batch"
        )
    corpus = load_corpus(args, args.languages)
    model = load_model(args)
    try:
        stats = collect_stats(
            model,
            corpus,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            mode=args.mode,
            max_tokens=args.max_tokens,
            checkpoint_dir=ckpt,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            progress=primary,
        )
    except RunInterrupted as e:
        if primary:
            print(f"jlang: {e}", file=sys.stderr)
        return e.exit_code
    path = finish(stats, output_path(args.out) / "stats.npz", ckpt)
    if path is not None:
        counts = ", ".join(f"{lang} {int(n):,}" for lang, n in zip(stats.languages, stats.tokens))
        print(f"wrote {path}: {counts} tokens")
    return 0


def add_stats_parser(sub) -> None:
    """Register `stats` on `jlang`'s sub-command parsers."""
    p = sub.add_parser("stats", help="activation statistics per language at mlp.act (resumable, multi-process)")
    p.add_argument("--model", default="default")
    p.add_argument("--corpus", default="default", help='"default" or a directory of {lang}.txt / {lang}.jsonl files')
    p.add_argument("--languages", nargs="+", default=list(CorpusSection.languages))
    p.add_argument("--split", default="train", choices=["train", "heldout"])
    p.add_argument(
        "--mode", default="pack", choices=["pack", "pad"], help="pack (LAPE) or pad sentence by sentence (FLORES)"
    )
    p.add_argument("--batch-size", type=int, default=StatsSection.batch_size, help="rows per batch on each process")
    p.add_argument("--seq-len", type=int, default=StatsSection.seq_len)
    p.add_argument("--max-tokens", type=int, default=None, help="cap per language")
    p.add_argument("--out", required=True, help="output directory (stats.npz)")
    add_model_args(p)
    g = p.add_argument_group("checkpoints")
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=DEFAULT_CHECKPOINT_EVERY,
        metavar="N",
        help="checkpoint every N batches (0: only on SIGTERM/SIGINT)",
    )
    g.add_argument("--checkpoint-dir", default=None, help=f"default: OUT/{CHECKPOINT_SUBDIR} (shared by all processes)")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint of an interrupted run")
    distributed.add_arguments(p, suppress_defaults=True)
    p.set_defaults(func=cmd_stats)


COMMANDS: list[Callable] = [add_stats_parser]
