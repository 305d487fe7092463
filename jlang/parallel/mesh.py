"""Device meshes and the logical-axis rules that place parameters and batches on them.

One table (`AXIS_RULES`, MaxText's `logical_axis_rules`) maps the logical axes
of parameters and activations to the two mesh axes `data` and `model`: changing
the parallelism is a mesh change, not a code change. Neurons (`mlp`), attention
heads and the vocabulary shard over `model`; batches shard over `data`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("data", "model")

AXIS_RULES: dict[str, str | None] = {
    "batch": "data",
    "vocab": "model",
    "heads": "model",
    "kv_heads": "model",
    "mlp": "model",
    "embed": None,
    "layers": None,
    "head_dim": None,
    "seq": None,
}


def make_mesh(data: int | None = None, model: int | None = None, devices: Sequence | None = None) -> Mesh:
    """A `(data, model)` mesh over `devices` (default: all devices of all processes).

    Unset sizes are inferred: with neither given, every device goes to `data`.
    """
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if data is None and model is None:
        data, model = n, 1
    elif data is None:
        data = n // model
    elif model is None:
        model = n // data
    if data * model != n:
        raise ValueError(f"mesh data={data} x model={model} needs {data * model} devices, there are {n}")
    return jax.make_mesh((data, model), AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def logical_to_spec(shape: Sequence[int], logical_axes: Sequence[str | None], mesh: Mesh) -> PartitionSpec:
    """The PartitionSpec for an array with these logical axes.

    An axis whose size does not divide by its mesh axis stays replicated (e.g. 2
    kv heads on a 4-way `model` axis): correct everywhere, if not the fastest.
    """
    spec = []
    for size, axis in zip(shape, logical_axes):
        mesh_axis = AXIS_RULES.get(axis) if axis else None
        if mesh_axis is not None and size % mesh.shape[mesh_axis] == 0:
            spec.append(mesh_axis)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def named_sharding(shape: Sequence[int], logical_axes: Sequence[str | None], mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(shape, logical_axes, mesh))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batch-major arrays `[batch, ...]`: rows over `data`."""
    return NamedSharding(mesh, PartitionSpec("data", *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def pad_batch_to(n: int, mesh: Mesh | None) -> int:
    """The smallest batch size >= n that the mesh's `data` axis divides."""
    if mesh is None:
        return n
    d = mesh.shape["data"]
    return int(math.ceil(n / d) * d)


def to_host(x) -> np.ndarray:
    """A (possibly sharded, possibly multi-process) array as one host NumPy array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
