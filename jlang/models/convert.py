"""Hugging Face tensors -> jlang parameters, streamed one tensor at a time.

Everything that can be checked without reading weights is checked first, so a
bad checkpoint fails in a second with a message that names the tensor: missing
and unexpected tensors, and shapes. Then each tensor is read, transposed to
Flax's `[in, out]`, cast to the target dtype and written into its slot of the
stacked `[layers, ...]` host buffer; each finished buffer is placed on the
devices (sharded when a mesh is given) and freed before the next is built, so
peak host memory stays near one copy of the model in the target dtype.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jlang import parallel
from jlang.models.decoder import LOGICAL_AXES, param_shapes
from jlang.models.families import FAMILIES, ModelConfig
from jlang.models.sources import CheckpointError, CheckpointSource

# Tensors that checkpoints may carry and jlang derives itself.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")

# jlang params stored as Flax kernels `[in, out]`: HF `Linear.weight` is `[out, in]`.
TRANSPOSED = {"lm_head", "layers.q", "layers.k", "layers.v", "layers.o", "layers.gate", "layers.up", "layers.down"}


def hf_names(cfg: ModelConfig, name: str) -> list[str]:
    """HF tensor names that make up jlang parameter `name` (one per layer for stacked ones)."""
    template = FAMILIES[cfg.family].names[name]
    if name.startswith("layers."):
        return [template.format(i=i) for i in range(cfg.num_layers)]
    return [template]


def hf_shape(name: str, jlang_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape one HF tensor of jlang parameter `name` has on disk."""
    shape = jlang_shape[1:] if name.startswith("layers.") else jlang_shape
    return tuple(reversed(shape)) if name in TRANSPOSED else tuple(shape)


def check_tensors(cfg: ModelConfig, available: dict[str, tuple[int, ...]], where: str) -> None:
    """Raise `CheckpointError` naming every missing, unexpected or misshapen tensor."""
    expected: dict[str, tuple[int, ...]] = {}
    for name, shape in param_shapes(cfg).items():
        for hf in hf_names(cfg, name):
            expected[hf] = hf_shape(name, shape)
    tied_head = FAMILIES[cfg.family].names["lm_head"] if cfg.tie_embeddings else None
    missing = sorted(set(expected) - set(available))
    extra = sorted(n for n in set(available) - set(expected) if n != tied_head and not _IGNORED.match(n))
    wrong = [
        f"{n}: expected {expected[n]}, found {available[n]}"
        for n in sorted(expected)
        if n in available and tuple(available[n]) != expected[n]
    ]
    problems = []
    if missing:
        problems.append(
            f"missing tensors ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        )
    if extra:
        problems.append(f"unexpected tensors ({len(extra)}): {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): {'; '.join(wrong[:8])}")
    if problems:
        raise CheckpointError(f"{where} does not match its config ({cfg.family}): " + " | ".join(problems))


def _read(source: CheckpointSource, hf: str, transpose: bool, dtype: np.dtype) -> np.ndarray:
    arr = np.asarray(source.read(hf))
    if not np.isfinite(arr).all():
        raise CheckpointError(f"{source.path}: tensor {hf} holds NaN or infinite values")
    return (arr.T if transpose else arr).astype(dtype, copy=False)


def stream_params(
    source: CheckpointSource,
    cfg: ModelConfig,
    *,
    dtype: str = "float32",
    mesh: Mesh | None = None,
    progress: bool = True,
) -> Iterator[tuple[str, jax.Array]]:
    """Yield `(jlang name, device array)` for every parameter, one at a time."""
    np_dtype = np.dtype(jnp.dtype(dtype))
    shapes = param_shapes(cfg)
    total = sum(len(hf_names(cfg, n)) for n in shapes)
    bar = tqdm(total=total, desc=f"loading {source.path.name}", unit="tensor", disable=not progress, leave=False)
    for name, shape in shapes.items():
        transpose = name in TRANSPOSED
        if name.startswith("layers."):
            host = np.empty(shape, np_dtype)
            for i, hf in enumerate(hf_names(cfg, name)):
                host[i] = _read(source, hf, transpose, np_dtype)
                bar.update()
        else:
            host = _read(source, hf_names(cfg, name)[0], transpose, np_dtype)
            bar.update()
        if mesh is not None:
            value = jax.device_put(host, parallel.named_sharding(shape, LOGICAL_AXES[name], mesh))
        else:
            value = jax.device_put(host)
        del host
        yield name, value
    bar.close()
