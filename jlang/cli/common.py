"""What the `jlang` commands share: the model arguments, the mesh, and loading inputs from parsed arguments.

Every command that loads a model takes `--dtype` and `--mesh` from `add_model_args`, and
gets its model from `load_model(args)`: on the run's mesh (`run_mesh`), with progress
bars only where `show_progress(args)` says so. Command modules import this module and
no other command module.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from jlang import models
from jlang.data.sources import Corpus, read_documents, resolve_corpus
from jlang.masks import NeuronMasks
from jlang.parallel import distributed
from jlang.stats.container import ActivationStats

DEFAULT_MASKS = "runs/lape_default/masks.npz"
DEFAULT_STATS = "runs/lape_default/stats.npz"
MODEL_HELP = '"default", "smollm2", a Hub id org/name[@revision], an HF directory, a .gguf or a jlang checkpoint'
MESH_HELP = (
    "device mesh sizes, e.g. 2,4; an empty size is inferred from the device count (,8: model 8, data the rest) "
    "(default: one device; all devices on data with several processes)"
)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """`--dtype` and `--mesh`, for every command that loads a model with `load_model`."""
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    p.add_argument("--mesh", default=None, metavar="DATA,MODEL", help=MESH_HELP)


def parse_mesh(spec: str | None) -> tuple[int | None, int | None]:
    """`DATA,MODEL` -> `(data, model)` sizes; an empty side is None, inferred from the devices (`,4`: all / 4 on data).

    Raises:
      ValueError: not two comma-separated sides, a side that is not an integer, or a size below 1.
    """
    if not spec:
        return None, None
    parts = spec.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        data, model = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise ValueError(f"--mesh wants DATA,MODEL (two integers, either may be empty), got {spec!r}") from None
    if any(x is not None and x < 1 for x in (data, model)):
        raise ValueError(f"--mesh sizes must be positive, got {spec!r}")
    return data, model


def run_mesh(spec: str | None):
    """The run's mesh for `--mesh SPEC`: None on one process with no sizes, else a mesh over every process's devices.

    Several processes always get a global mesh: without one each process would compute on its own rows only.
    """
    return distributed.default_mesh(*parse_mesh(spec))


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars: unless `--no-progress` (where the command has it), and only on process 0."""
    return not getattr(args, "no_progress", False) and distributed.is_primary()


def load_model(args: argparse.Namespace):
    """`--model` with `--dtype`, on the run's mesh (`--mesh`)."""
    distributed.initialize_from_args(args)  # the mesh spans every process; a no-op once `jlang.cli.main` did it
    mesh = run_mesh(args.mesh)
    return models.load_model(args.model, dtype=args.dtype, mesh=mesh, progress=show_progress(args))


def load_masks(path: str | None) -> NeuronMasks | None:
    """The masks .npz at `path`, or None without one."""
    return NeuronMasks.load(path) if path else None


def load_model_and_masks(args: argparse.Namespace):
    """`(model, masks)` from `--model` and `--masks` (None without); the masks first, to fail before the model."""
    distributed.initialize_from_args(args)
    masks = load_masks(args.masks)
    return load_model(args), masks


def load_stats(path: str | Path) -> ActivationStats:
    """An ActivationStats .npz, or the directory holding its `stats.npz`."""
    p = Path(path)
    return ActivationStats.load(p / "stats.npz" if p.is_dir() else p)


def load_corpus(args: argparse.Namespace, languages: Iterable[str], split: str | None = None) -> Corpus:
    """`--corpus` ("default" or a directory) for `languages`, split `split` (default `--split`)."""
    return resolve_corpus(args.corpus, list(languages), split or args.split)


def corpus_texts(corpus: Corpus, languages: Iterable[str], limit: int | None = None) -> dict[str, list[str]]:
    """The plain-text documents of each language (at most `limit`), as prompts or inputs."""
    return {l: [d for d in read_documents(corpus[l]) if isinstance(d, str)][:limit] for l in languages}
