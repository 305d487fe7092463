"""`jlang finetune` and `jlang export-hf`: alignment fine-tuning from a YAML config, and Hugging Face export.

    jlang finetune configs/align_default.yaml                      # fine-tune; writes {out}/checkpoint
    jlang finetune CONFIG --set train.steps=100 --set trainable=neurons --set masks=runs/lape_default/masks.npz \\
        --set mask_languages=[fr]                                  # PLND-style: only French neurons train
    jlang finetune CONFIG --resume                                 # continue after SIGTERM / preemption
    jlang export-hf runs/align_default/checkpoint --out runs/align_default/hf   # any jlang model -> HF directory

A checkpoint is saved every `train.checkpoint_every` steps and when SIGTERM or
SIGINT arrives; the process then exits with code 128 + signal number, and the
same command with `--resume` continues to exactly the parameters of an
uninterrupted run. Several processes (`--coordinator ... --num-processes N
--process-id I`, or `--distributed`) shard the batch rows; process 0 writes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from jlang.cli.common import add_model_args, load_model, show_progress
from jlang.io.checkpoint import RunInterrupted
from jlang.models.export import DEFAULT_MAX_SHARD_SIZE, save_hf
from jlang.parallel import distributed
from jlang.train.config import load_finetune_config
from jlang.train.sft import finetune


def cmd_finetune(args: argparse.Namespace) -> int:
    distributed.initialize_from_args(args)  # a no-op when jlang.cli.app already did it
    cfg = load_finetune_config(args.config, args.set or [])
    try:
        final = finetune(cfg, progress=show_progress(args), resume=args.resume)
    except RunInterrupted as e:
        if distributed.is_primary():
            print(f"jlang: {e}", file=sys.stderr)
        return e.exit_code
    if distributed.is_primary():
        out = Path(cfg.out)
        summary = out / "summary.md"
        if summary.is_file():
            print(summary.read_text(encoding="utf-8"))
        written = [final, out / "loss.json", out / "loss.png"] + ([out / "hf"] if cfg.export_hf else [])
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def add_finetune_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="supervised alignment fine-tuning from a YAML config (all weights or chosen neurons)",
    )
    p.add_argument("config", help="e.g. configs/align_default.yaml")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override, e.g. --set train.steps=100 (repeatable)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint of an interrupted run",
    )
    p.add_argument("--no-progress", action="store_true", help="no start line and no progress bar")
    distributed.add_arguments(p, suppress_defaults=True)
    p.set_defaults(func=cmd_finetune)


def cmd_export_hf(args: argparse.Namespace) -> int:
    distributed.initialize_from_args(args)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    model = load_model(args)  # on the run's mesh: each process reads and holds only its shards
    save_hf(model, out, max_shard_size=args.max_shard_size)
    if distributed.is_primary():
        print(f"wrote {out} ({model.family}, {model.num_params:,} parameters, {model.dtype})")
    return 0


def add_export_hf_parser(sub) -> None:
    p = sub.add_parser(
        "export-hf",
        help="write a model as a Hugging Face directory (safetensors + config + tokenizer)",
    )
    p.add_argument(
        "model",
        help='a jlang checkpoint (e.g. runs/align_default/checkpoint), "default", a .gguf, ...',
    )
    p.add_argument("--out", required=True, help="the directory to write")
    add_model_args(p)
    p.add_argument(
        "--max-shard-size",
        default=DEFAULT_MAX_SHARD_SIZE,
        help=f"largest safetensors file, e.g. 5GB, 500MB, 2GiB (default {DEFAULT_MAX_SHARD_SIZE}); several files "
        "get a model.safetensors.index.json",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.add_argument("--no-progress", action="store_true")
    distributed.add_arguments(p, suppress_defaults=True)
    p.set_defaults(func=cmd_export_hf)


COMMANDS: list[Callable] = [add_finetune_parser, add_export_hf_parser]
