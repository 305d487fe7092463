"""Hugging Face tensors -> jlang parameters, each process reading only the slices its devices hold.

Everything that can be checked without reading weights is checked first, so a
bad checkpoint fails in a second with a message that names the tensor: missing
and unexpected tensors, and shapes. Then parameter by parameter:

* the parameter's sharding (on a mesh, `LOGICAL_AXES` through `AXIS_RULES`; else
  one device) says which region of `[layers, ...]` each of this process's
  devices holds;
* region by region, the process reads only that region of each Hugging Face
  tensor (one per layer for stacked parameters; `CheckpointSource.read_region`,
  `safe_open(...).get_slice` for safetensors), in chunks of rows transposed into
  place (Flax's `[in, out]`) and cast to the target dtype (a bf16 file loaded as
  bf16 stays bf16), places the region on the devices that hold it and frees it;
* the placed regions become one global array (`jax.make_array_from_single_device_arrays`).

Fused tensors (BLOOM's `query_key_value`, Phi-3's `qkv_proj` and `gate_up_proj`;
`jlang.models.names.Part`) are read the same way: a region of `layers.q` is the
matching rows of the fused tensor (`fused_rows`: one block, or one run per head in
BLOOM's `[heads, 3, head_dim]` layout), so the host never holds more than one
layer's fused tensor either. `family_view` gives checkpoints that store a family
under another prefix (BLOOM without `transformer.`, Gemma 3's multimodal wrapper)
the canonical names and drops the tensors jlang does not load (a vision tower).

So a process holds its share of the model plus one region of one parameter at a
time, never a whole stacked parameter it does not need. GGUF is one file whose
tensors are dequantised whole (`jlang.models.gguf`): a single-host format.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jlang import parallel
from jlang.models.decoder import LOGICAL_AXES, param_shapes
from jlang.models.families import FAMILIES, Family, ModelConfig
from jlang.models.names import Part
from jlang.models.sources import CheckpointError, CheckpointSource

# Tensors that checkpoints may carry and jlang derives itself.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")

# jlang params stored as Flax kernels `[in, out]`: HF `Linear.weight` is `[out, in]`.
TRANSPOSED = {
    "lm_head",
    "project_in",
    "project_out",
    "layers.q",
    "layers.k",
    "layers.v",
    "layers.o",
    "layers.gate",
    "layers.up",
    "layers.down",
}


def hf_names(cfg: ModelConfig, name: str) -> list[str]:
    """HF tensor names that make up jlang parameter `name` (one per layer for stacked ones; for a
    `Part`, the fused tensors it is read from)."""
    template = FAMILIES[cfg.family].names[name]
    if isinstance(template, Part):
        template = template.tensor
    if name.startswith("layers."):
        return [template.format(i=i) for i in range(cfg.num_layers)]
    return [template]


def hf_shape(name: str, jlang_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape one HF tensor of jlang parameter `name` has on disk (for a `Part`: the part's shape)."""
    shape = jlang_shape[1:] if name.startswith("layers.") else jlang_shape
    return tuple(reversed(shape)) if name in TRANSPOSED else tuple(shape)


def fused_parts(cfg: ModelConfig, name: str) -> list[str]:
    """The jlang parameters stored in the same fused tensor as `name`, in their order there ([name] if unfused)."""
    names = FAMILIES[cfg.family].names
    part = names[name]
    if not isinstance(part, Part):
        return [name]
    siblings = [n for n in cfg.param_names() if isinstance(names[n], Part) and names[n].tensor == part.tensor]
    return sorted(siblings, key=lambda n: names[n].index)


def fused_rows(cfg: ModelConfig, name: str, first: int, last: int) -> list[tuple[int, int, int]]:
    """Rows `[first, last)` of parameter `name` (HF layout, first axis) as runs `(fused_start, fused_stop,
    start)` of rows of the tensor that holds it: contiguous for blocks, one run per head for BLOOM's
    `[heads, 3, head_dim]` rows."""
    part = FAMILIES[cfg.family].names[name]
    if not isinstance(part, Part):
        return [(first, last, first)]
    parts = fused_parts(cfg, name)
    shapes = param_shapes(cfg)
    if part.layout == "blocks":
        offset = sum(hf_shape(n, shapes[n])[0] for n in parts[: parts.index(name)])
        return [(offset + first, offset + last, first)]
    d, n = cfg.head_dim, len(parts)
    runs = []
    for h in range(first // d, math.ceil(last / d)):
        a, b = max(first, h * d), min(last, (h + 1) * d)
        base = h * n * d + part.index * d - h * d
        runs.append((base + a, base + b, a))
    return runs


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape on disk, for every tensor `cfg` reads (fused tensors as a whole)."""
    expected: dict[str, tuple[int, ...]] = {}
    shapes = param_shapes(cfg)
    for name, shape in shapes.items():
        part_shape = hf_shape(name, shape)
        for hf in hf_names(cfg, name):
            if hf in expected:  # another part of a fused tensor: the parts stack on the first axis
                expected[hf] = (expected[hf][0] + part_shape[0], *part_shape[1:])
            else:
                expected[hf] = part_shape
    return expected


def check_tensors(cfg: ModelConfig, available: dict[str, tuple[int, ...]], where: str) -> None:
    """Raise `CheckpointError` naming every missing, unexpected or misshapen tensor."""
    expected = expected_tensors(cfg)
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


def _to_file(name: str, renames: tuple[tuple[str, str], ...]) -> str:
    for canonical, stored in renames:
        if name.startswith(canonical):
            return stored + name[len(canonical) :]
    return name


def _to_canonical(name: str, renames: tuple[tuple[str, str], ...]) -> str:
    for canonical, stored in renames:
        if name.startswith(stored):
            return canonical + name[len(stored) :]
    return name


class FamilyView:
    """A checkpoint source seen with its family's canonical tensor names (`Family.aliases`), without the
    tensors the family does not load (`Family.ignored`: Gemma 3's vision tower). Reads pass through."""

    def __init__(self, source: CheckpointSource, family: Family):
        self._source = source
        self.path: Path = source.path
        stored = source.tensor_shapes()
        renames: tuple[tuple[str, str], ...] = ()
        for alternative in family.aliases:
            if _to_file(family.names["embed"], alternative) in stored:
                renames = alternative
                break
        ignored = re.compile(family.ignored) if family.ignored else None
        self._file_name: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in stored.items():
            if ignored is not None and ignored.match(name):
                continue
            canonical = _to_canonical(name, renames)
            self._file_name[canonical] = name
            self._shapes[canonical] = shape

    @property
    def config(self):
        return self._source.config

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def read(self, name: str) -> np.ndarray:
        return self._source.read(self._file_name[name])

    def read_region(self, name: str, index: tuple[slice, ...], *, again: bool = False) -> np.ndarray:
        return self._source.read_region(self._file_name[name], index, again=again)

    def tokenizer(self):
        return self._source.tokenizer()


def family_view(source: CheckpointSource, cfg: ModelConfig) -> CheckpointSource:
    """`source` with canonical names for `cfg`'s family (the source itself when the family has no aliases)."""
    family = FAMILIES[cfg.family]
    return FamilyView(source, family) if family.aliases or family.ignored else source


# A region of an array: (start, stop) per axis (hashable, unlike slices before Python 3.12).
Region = tuple[tuple[int, int], ...]


def _region(index: tuple[slice, ...], shape: tuple[int, ...]) -> Region:
    """`index` (from a sharding; `slice(None)` for whole axes) as explicit bounds."""
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


# Bytes of a file region read at once: transposing a whole embedding at once would hold it twice.
CHUNK_BYTES = 16 << 20


def fill_block(
    dest: np.ndarray,
    source: CheckpointSource,
    hf: str,
    region: Region,
    transpose: bool,
    *,
    again: bool = False,
    rows: Callable[[int, int], list[tuple[int, int, int]]] | None = None,
) -> None:
    """Write region `region` (jlang layout) of tensor `hf` into `dest`, cast to `dest`'s dtype.

    The file's region (`region` reversed when `transpose`: HF stores `[out, in]`) is read in chunks of
    rows of at most `CHUNK_BYTES`, each transposed into place, so the host never holds the region twice.
    `again`: more regions of this tensor will be read after this one. `rows(first, last)`: where the
    region's rows lie in a fused tensor (`fused_rows`), as `(file_start, file_stop, row)` runs.
    """
    file_region = tuple(reversed(region)) if transpose else region
    (first, last), rest = file_region[0], file_region[1:]
    row_bytes = max(1, int(np.prod([b - a for a, b in rest], dtype=np.int64))) * dest.itemsize
    step = max(1, CHUNK_BYTES // row_bytes)
    runs = rows(first, last) if rows is not None else [(first, last, first)]
    for r, (run_start, run_stop, row) in enumerate(runs):
        for start in range(run_start, run_stop, step):
            stop = min(start + step, run_stop)
            index = (slice(start, stop), *(slice(a, b) for a, b in rest))
            more = again or stop < run_stop or r < len(runs) - 1
            chunk = np.asarray(source.read_region(hf, index, again=more))
            if not np.isfinite(chunk).all():
                raise CheckpointError(f"{source.path}: tensor {hf} holds NaN or infinite values")
            at = row - first + start - run_start
            if transpose:
                dest[..., at : at + stop - start] = chunk.T
            else:
                dest[at : at + stop - start] = chunk


def aligned_empty(shape: list[int], dtype: np.dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts on an `alignment`-byte boundary.

    XLA's CPU client adopts such a host buffer as a device buffer without copying it
    (`jax.device_put`), so a model loaded onto a CPU device is never in memory twice.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def read_param_region(
    source: CheckpointSource, cfg: ModelConfig, name: str, region: Region, dtype: np.dtype, *, again: bool = False
) -> np.ndarray:
    """Region `region` of jlang parameter `name` (all its layers' slices for a stacked one), as one host array.

    `again`: other regions of this parameter follow (the source may keep whole tensors meanwhile)."""
    transpose = name in TRANSPOSED
    out = aligned_empty([b - a for a, b in region], dtype)
    fused = isinstance(FAMILIES[cfg.family].names[name], Part)
    rows = (lambda a, b: fused_rows(cfg, name, a, b)) if fused else None
    if not name.startswith("layers."):
        fill_block(out, source, hf_names(cfg, name)[0], region, transpose, again=again, rows=rows)
        return out
    (first, last), rest = region[0], region[1:]
    for j, hf in enumerate(hf_names(cfg, name)[first:last]):
        fill_block(out[j], source, hf, rest, transpose, again=again or fused, rows=rows)
    return out


def load_param(
    source: CheckpointSource, cfg: ModelConfig, name: str, sharding: jax.sharding.Sharding | None, dtype: np.dtype
) -> jax.Array:
    """jlang parameter `name` as a global array with `sharding`, from this process's slices of the checkpoint.

    One device region at a time: read, placed on the devices that hold it, freed. So the host holds at
    most one region of one parameter beyond what the devices hold (on a CPU device the placed buffer is
    the device's memory, without a copy). `sharding=None`: the whole parameter on the default device,
    uncommitted, so that jit may move it (a committed array on one process's device cannot meet a
    computation on another process's devices: "cross-host device transfers").
    """
    shape = param_shapes(cfg)[name]
    if sharding is None:
        return jax.device_put(read_param_region(source, cfg, name, tuple((0, n) for n in shape), dtype))
    device_indices = sharding.addressable_devices_indices_map(shape)
    devices_of: dict[Region, list[jax.Device]] = {}
    for device, index in device_indices.items():
        devices_of.setdefault(_region(index, shape), []).append(device)
    shards = {}
    for i, (region, devices) in enumerate(devices_of.items()):
        host = read_param_region(source, cfg, name, region, dtype, again=i < len(devices_of) - 1)
        first = shards[devices[0]] = jax.device_put(host, devices[0])
        for device in devices[1:]:  # replicas: copies of the first, never the same host memory twice
            shards[device] = jax.device_put(first, device)
        del host
    return jax.make_array_from_single_device_arrays(shape, sharding, [shards[d] for d in device_indices])


def stream_params(
    source: CheckpointSource,
    cfg: ModelConfig,
    *,
    dtype: str = "float32",
    mesh: Mesh | None = None,
    progress: bool = True,
) -> Iterator[tuple[str, jax.Array]]:
    """Yield `(jlang name, global array)` for every parameter, one at a time (sharded when a mesh is given)."""
    np_dtype = np.dtype(jnp.dtype(dtype))
    shapes = param_shapes(cfg)
    bar = tqdm(total=len(shapes), desc=f"loading {source.path.name}", unit="param", disable=not progress, leave=False)
    for name, shape in shapes.items():
        sharding = parallel.named_sharding(shape, LOGICAL_AXES[name], mesh) if mesh is not None else None
        yield name, load_param(source, cfg, name, sharding, np_dtype)
        bar.update()
    bar.close()
