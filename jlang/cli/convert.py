"""`jlang convert SOURCE OUT`: a checkpoint (Hub id, HF directory, GGUF, packaged name) -> a jlang checkpoint.

    jlang convert meta-llama/Llama-2-7b-hf runs/llama2-7b --dtype bfloat16
    jlang convert org/model gs://bucket/jlang/model --mesh 1,8 --distributed   # on every host of a pod slice

Host memory stays bounded: each process reads from the safetensors files only the
slices its own devices hold (`jlang.models.convert`) and writes only those shards
(orbax), so a 70B conversion on a pod slice never gathers the model on one host.
Later loads restore the checkpoint directly (`jlang.load_model(OUT)`), sharded as asked.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from jlang.cli.common import MODEL_HELP, add_model_args, load_model
from jlang.io.checkpoint import as_epath
from jlang.parallel import distributed


def cmd_convert(args: argparse.Namespace) -> int:
    out = as_epath(args.out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new path or remove it first")
    model = load_model(args)
    written = model.save(out)
    if distributed.is_primary():
        print(f"wrote {written} ({model.name} from {model.source}: {model.num_params:,} parameters, {model.dtype})")
    return 0


def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint into a jlang (orbax) checkpoint, slice by slice")
    p.add_argument("model", metavar="SOURCE", help=MODEL_HELP)
    p.add_argument("out", metavar="OUT", help="the checkpoint directory to write (any etils.epath path, gs:// too)")
    add_model_args(p)
    p.add_argument("--no-progress", action="store_true")
    distributed.add_arguments(p, suppress_defaults=True)
    p.set_defaults(func=cmd_convert)


COMMANDS: list[Callable] = [add_convert_parser]
