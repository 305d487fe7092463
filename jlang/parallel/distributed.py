"""Several JAX processes (TPU pod slices, multi-GPU nodes, clusters): one call before any device is touched.

Every `jlang` entry point runs unchanged on N processes: each process calls
`initialize_from_args(args)` first, the mesh spans every process's devices
(`default_mesh`), and every process ends with the same result, which only
process 0 writes (`is_primary`). Batches reach the devices in one of two ways:

* **sharded rows** (corpus passes: `stats`, `ppl`): the grain pipeline gives
  each process its own rows (`make_batches(process_index=..., process_count=...)`
  with `data_shard(mesh)`: processes that share a model-parallel slice feed the
  same rows); `Model.place_batch` assembles them into one global batch, the
  jitted step reduces over it (or `local_rows` takes back this process's rows of
  its output), and host-side partial results are combined with `sum_over_shards`
  / `gather_shards`;
* **whole batches** (prompt lists built on the host: `generate`, `steer`, `lss`,
  `lens`): every process holds the same rows, `place_whole_batch` splits each
  batch over the devices, and `jlang.parallel.to_host` gathers the output, so the
  batches are exactly those of a single-process run.

Where the process layout comes from, first match wins:

1. flags: `--coordinator HOST:PORT --num-processes N --process-id I`;
2. environment: `JAX_COORDINATOR_ADDRESS` (JAX's own variable) with
   `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (jlang reads these two with the
   same prefix; `JAX_LOCAL_DEVICE_IDS` is read by JAX itself);
3. `--distributed` / `JLANG_DISTRIBUTED=1`: let JAX detect the cluster (Cloud
   TPU pod slices, GKE, SLURM, Open MPI), which needs no addresses at all.

With none of these, the run is a single process and nothing is initialised.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jlang.parallel.mesh import batch_sharding, make_mesh, to_host

__all__ = [
    "DistributedError",
    "DistributedSpec",
    "add_arguments",
    "any_process",
    "barrier",
    "data_shard",
    "default_mesh",
    "for_processes",
    "gather_shards",
    "initialize",
    "initialize_from_args",
    "is_primary",
    "local_batch_rows",
    "local_rows",
    "place_whole_batch",
    "spec_from",
    "sum_over_shards",
]

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_AUTO = "JLANG_DISTRIBUTED"


class DistributedError(ValueError):
    """The multi-process layout is incomplete or inconsistent; the message says which flag to fix."""


@dataclass(frozen=True)
class DistributedSpec:
    """How to call `jax.distributed.initialize`.

    Attributes:
      coordinator: "host:port" of process 0's coordination service (None with `auto`).
      num_processes: N.
      process_id: this process, in [0, N).
      auto: let JAX detect the cluster (TPU pod slice, SLURM, Open MPI, GKE).
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False

    def __post_init__(self) -> None:
        if self.auto:
            return
        missing = [
            flag
            for flag, v in (
                ("--coordinator", self.coordinator),
                ("--num-processes", self.num_processes),
                ("--process-id", self.process_id),
            )
            if v is None
        ]
        if missing:
            raise DistributedError(
                f"multi-process run needs --coordinator, --num-processes and --process-id (or {ENV_COORDINATOR}, "
                f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); missing {', '.join(missing)}. On a TPU pod slice or "
                "under SLURM pass --distributed instead, to let JAX detect the cluster"
            )
        host, _, port = str(self.coordinator).rpartition(":")
        if not host or not port.isdigit():
            raise DistributedError(f"--coordinator must be HOST:PORT (e.g. 10.0.0.2:1234), got {self.coordinator!r}")
        if self.num_processes < 1:
            raise DistributedError(f"--num-processes must be >= 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise DistributedError(
                f"--process-id must be in [0, {self.num_processes}) for --num-processes {self.num_processes}, "
                f"got {self.process_id}"
            )


def add_arguments(parser: argparse.ArgumentParser, *, suppress_defaults: bool = False) -> None:
    """Add `--coordinator`, `--num-processes`, `--process-id`, `--distributed` to a parser.

    `suppress_defaults=True` is for sub-command parsers when the top-level parser
    has the same flags: argparse would otherwise overwrite a top-level value with
    the sub-parser's default None.
    """
    default = argparse.SUPPRESS if suppress_defaults else None
    g = parser.add_argument_group("multi-process (jax.distributed)")
    g.add_argument(
        "--coordinator",
        default=default,
        metavar="HOST:PORT",
        help=f"address of process 0's coordinator (env {ENV_COORDINATOR})",
    )
    g.add_argument(
        "--num-processes", type=int, default=default, metavar="N", help=f"number of processes (env {ENV_NUM_PROCESSES})"
    )
    g.add_argument(
        "--process-id",
        type=int,
        default=default,
        metavar="I",
        help=f"this process's index, 0..N-1 (env {ENV_PROCESS_ID})",
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        default=argparse.SUPPRESS if suppress_defaults else False,
        help=f"detect the cluster (TPU pod slice, SLURM, Open MPI, GKE) (env {ENV_AUTO}=1)",
    )


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name} must be an integer, got {raw!r}") from None


def spec_from(args: Any = None, environ: Mapping[str, str] | None = None) -> DistributedSpec | None:
    """The layout asked for by flags (on `args`) or the environment; None for a single process.

    A flag overrides its environment variable. `--num-processes 1` alone is a single process.
    """
    environ = os.environ if environ is None else environ
    coordinator = getattr(args, "coordinator", None) or environ.get(ENV_COORDINATOR) or None
    num = getattr(args, "num_processes", None)
    num = _env_int(environ, ENV_NUM_PROCESSES) if num is None else num
    pid = getattr(args, "process_id", None)
    pid = _env_int(environ, ENV_PROCESS_ID) if pid is None else pid
    auto = bool(getattr(args, "distributed", False)) or environ.get(ENV_AUTO, "").lower() in ("1", "true", "yes")
    if coordinator is None and pid is None and num in (None, 1):
        return DistributedSpec(auto=True) if auto else None
    if auto and coordinator is None:
        return DistributedSpec(num_processes=num, process_id=pid, auto=True)
    return DistributedSpec(coordinator, num, pid)


def initialize(spec: DistributedSpec | None) -> bool:
    """Call `jax.distributed.initialize` for `spec` (None: do nothing). True if this is a multi-process run.

    A second call once JAX is initialised is a no-op (JAX keeps the process layout). It must run
    before anything touches a JAX device; otherwise JAX's error is turned into one that says so.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    if spec is None:
        return False
    kwargs: dict[str, Any] = {}
    if spec.coordinator is not None:
        kwargs["coordinator_address"] = spec.coordinator
    if spec.num_processes is not None:
        kwargs["num_processes"] = spec.num_processes
    if spec.process_id is not None:
        kwargs["process_id"] = spec.process_id
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        if "before" in str(e).lower():
            raise DistributedError(
                f"jax.distributed.initialize must run before any JAX computation or device query ({e}); call "
                "jlang.parallel.distributed.initialize_from_args first thing in the program"
            ) from None
        raise
    except ValueError as e:  # auto-detection found no cluster, or JAX rejected the layout
        raise DistributedError(f"could not set up jax.distributed: {e}") from None
    return jax.process_count() > 1


def initialize_from_args(args: Any = None, environ: Mapping[str, str] | None = None) -> bool:
    """The one call every entry point makes first: `initialize(spec_from(args, environ))`."""
    return initialize(spec_from(args, environ))


def is_primary() -> bool:
    """True on the process that writes results (process 0); True on a single process."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches `name` (a no-op on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def broadcast_text(text: str, name: str, max_bytes: int = 1024) -> str:
    """Process 0's `text` on every process (a collective: every process calls it; a no-op on one process).

    `name` labels the collective in errors; `text` must encode to at most `max_bytes` UTF-8 bytes.
    """
    if jax.process_count() == 1:
        return text
    data = text.encode()
    if len(data) > max_bytes:
        raise DistributedError(f"{name}: {len(data)} bytes to broadcast, more than {max_bytes}")
    buffer = np.zeros(max_bytes + 4, np.uint8)
    buffer[:4] = np.frombuffer(np.uint32(len(data)).tobytes(), np.uint8)
    buffer[4 : 4 + len(data)] = np.frombuffer(data, np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    size = int(np.frombuffer(got[:4].tobytes(), np.uint32)[0])
    return got[4 : 4 + size].tobytes().decode()


def any_process(flag: bool) -> bool:
    """True if `flag` is true on any process: every process takes the same branch (no collective deadlock)."""
    if jax.process_count() == 1:
        return bool(flag)

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).any())


def default_mesh(data: int | None = None, model: int | None = None):
    """The `(data, model)` mesh for a run: None (one device) on a single process with no sizes given,
    else a mesh over every process's devices (unset sizes inferred: all devices on `data`).

    Several processes need a global mesh: without one each process would count only its own rows.
    """

    if jax.process_count() == 1 and data is None and model is None:
        return None
    mesh = make_mesh(data, model)
    data_shard(mesh)  # refuse a layout whose batch rows cannot be split between processes, before loading
    return mesh


def data_shard(mesh) -> tuple[int, int]:
    """`(index, count)` of this process's share of the batch rows under `mesh` (`(0, 1)` on one process).

    Rows are split over the `data` axis. A process feeds the rows of the `data` slices its devices
    sit on; when `model` spans several processes (a 70B model over 8 chips of 4-chip hosts), those
    processes share their slices and must feed the same rows, so they form one shard. Pass the
    result to `make_batches(process_index=..., process_count=...)`.
    """
    if mesh is None or jax.process_count() == 1:
        return 0, 1
    owners = np.vectorize(lambda d: d.process_index)(mesh.devices).reshape(mesh.shape["data"], -1)
    rows_of = {p: frozenset(np.nonzero((owners == p).any(axis=1))[0].tolist()) for p in range(jax.process_count())}
    idle = [p for p, rows in rows_of.items() if not rows]
    if idle:
        raise DistributedError(f"processes {idle} have no device in the mesh; build the mesh over all devices")
    groups = sorted(set(rows_of.values()), key=min)
    if sum(len(g) for g in groups) != mesh.shape["data"]:
        raise DistributedError(
            f"mesh data={mesh.shape['data']} x model={mesh.shape['model']} gives processes overlapping but different "
            "data slices, so no process knows which rows to feed; use sizes where model fits within a host or spans "
            "whole hosts"
        )
    return groups.index(rows_of[jax.process_index()]), len(groups)


def for_processes(model):
    """`model`, placing each process's batch rows as its part of one global batch.

    On one process this is `model` itself. On several, `place_batch` assembles the
    global `[rows of all shards, ...]` array with `jax.make_array_from_process_local_data`
    (a plain `device_put` would take each process's rows for the whole batch). Each
    process must feed the rows of its `data_shard(model.mesh)`.
    """
    if jax.process_count() == 1:
        return model
    if model.mesh is None:
        raise DistributedError("a multi-process run needs the model on a mesh over all processes (default_mesh())")
    data_shard(model.mesh)

    mesh = model.mesh
    placed = copy.copy(model)

    def place_batch(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

    placed.place_batch = place_batch
    return placed


# ----------------------------------------------------------------------------- batches and their results


def place_whole_batch(model, x):
    """Put a `[batch, ...]` host array that every process holds in full (the same rows) on the devices.

    Rows are split over `data` as `Model.place_batch` splits them on one process; on several
    processes each device takes its rows of the whole batch (`Model.place_batch` would instead
    read `x` as this process's share and stack the shares). The output of a step on such a batch
    comes back whole with `jlang.parallel.to_host`.
    """
    if jax.process_count() == 1 or model.mesh is None:
        return model.place_batch(x)

    x = np.asarray(x)
    return jax.make_array_from_process_local_data(batch_sharding(model.mesh, x.ndim), x, x.shape)


def local_batch_rows(n: int, mesh) -> int:
    """The smallest row count >= n that this process can feed as its share of a global batch.

    Each shard spreads its rows over its `data` slices (`mesh.shape["data"] / shards` of them),
    so the count must divide by that; on one process this is `jlang.parallel.pad_batch_to`.
    """
    if mesh is None:
        return n
    _, shards = data_shard(mesh)
    slices = mesh.shape["data"] // shards
    return -(-n // slices) * slices


def local_row_index(mesh, global_rows: int) -> np.ndarray:
    """Global row of each row this process fed to `Model.place_batch`, in the order it fed them.

    `jax.make_array_from_process_local_data` maps a process's rows onto the row blocks its devices
    hold, in increasing order of the blocks: that order is read back from the sharding here.
    """
    blocks = batch_sharding(mesh, 1).addressable_devices_indices_map((global_rows,)).values()
    spans = sorted({(b[0].start or 0, global_rows if b[0].stop is None else b[0].stop) for b in blocks})
    return np.concatenate([np.arange(start, stop) for start, stop in spans])


def local_rows(x, mesh) -> np.ndarray:
    """This process's rows (as it fed them to `Model.place_batch`) of a batch-major step output, on the host."""

    full = to_host(x)
    if jax.process_count() == 1 or mesh is None:
        return full
    return full[local_row_index(mesh, full.shape[0])]


def _allgather(x: np.ndarray) -> np.ndarray:
    """`[processes, ...]`: `x` (the same shape on every process) from every process, bit for bit.

    The bytes are gathered, not the values: JAX without x64 would narrow int64 and float64 to 32 bits.
    """
    x = np.ascontiguousarray(x)
    raw = np.asarray(multihost_utils.process_allgather(x.reshape(-1).view(np.uint8)))
    return raw.view(x.dtype).reshape(len(raw), *x.shape)


def gather_shards(x, mesh) -> list[np.ndarray]:
    """Every data shard's host array `x`, on every process, in shard order (`data_shard(mesh)`).

    `x` may have a different length (axis 0) on each shard; its dtype and trailing shape must be
    the same everywhere. Processes of one shard hold the same `x`; one of them speaks for it.
    A collective: every process must call it. On one process (or one shard): `[x]`.
    """
    x = np.asarray(x)
    shard, shards = data_shard(mesh)
    if shards == 1 or jax.process_count() == 1:
        return [x]
    head = _allgather(np.array([shard, x.shape[0]], np.int64))  # [P, 2]
    size = max(int(head[:, 1].max()), 1)
    padded = np.zeros((size, *x.shape[1:]), x.dtype)
    padded[: len(x)] = x
    every = _allgather(padded)  # [P, size, ...]
    speaker = [int(np.flatnonzero(head[:, 0] == s)[0]) for s in range(shards)]
    return [every[p, : int(head[p, 1])] for p in speaker]


def sum_over_shards(x, mesh) -> np.ndarray:
    """`x` (a host array of partial results for this shard's rows) summed over the data shards.

    Exact for integers; floats are added in shard order, so every process gets the same bits.
    A collective: every process must call it.
    """
    parts = gather_shards(np.asarray(x)[None], mesh)
    total = parts[0][0].copy()
    for part in parts[1:]:
        total += part[0]
    return total
