"""The batch loop every pass shares: host rows onto the model's devices, one batch ahead of the host.

A pass (statistics, PLND, scoring, SAE evaluation) draws host batches, places
them on the model's mesh, runs one jitted step per batch and folds each step's
small result into host totals. JAX dispatches asynchronously, so `pipelined`
dispatches batch i+1 before it folds batch i: the device computes the next batch
while the host folds the last one, and never waits for it.

`place_rows` is the placement every row-batch pass needs: rows padded so the
mesh's `data` axis divides them (padding rows count nothing), default positions,
ids checked against the vocabulary, and optionally columns trimmed to a
power-of-two bucket above the longest row (short documents do not pay the
`seq²` attention of the longest). `Throughput` is the progress bar's rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import jax
import numpy as np
from tqdm.auto import tqdm

from jlang.parallel.mesh import pad_batch_to

Batch = TypeVar("Batch")
Result = TypeVar("Result")

# The narrowest compiled width of a trimmed batch; wider ones are powers of two.
MIN_WIDTH = 16


def pipelined(
    batches: Iterable[Batch],
    dispatch: Callable[[Batch], Result],
    fold: Callable[[int, Batch, Result], None],
) -> int:
    """`fold(i, batch, dispatch(batch))` for every batch, dispatching batch i+1 before folding batch i.

    Returns the number of batches. `dispatch` must only enqueue device work (a jitted call);
    `fold` is where the host waits for a result (`np.asarray`, `jax.device_get`).
    """
    pending: tuple[int, Batch, Result] | None = None
    count = 0
    for i, batch in enumerate(batches):
        result = dispatch(batch)
        if pending is not None:
            fold(*pending)
        pending = (i, batch, result)
        count += 1
    if pending is not None:
        fold(*pending)
    return count


def bucket_width(length: int, cap: int) -> int:
    """The compiled width for a batch whose longest row has `length` tokens: a power of two >= 16, at most `cap`."""
    w = MIN_WIDTH
    while w < length:
        w *= 2
    return min(w, max(cap, 1))


def pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> Mapping[str, np.ndarray]:
    """Pad a batch to `rows` rows (so the mesh's data axis divides it) with rows that count nothing.

    Padding rows repeat the first row with `valid` all False (and keep any other key's values).
    """
    b = len(batch["ids"])
    if rows == b:
        return batch
    out = {k: np.concatenate([np.asarray(v), np.repeat(np.asarray(v)[:1], rows - b, axis=0)]) for k, v in batch.items()}
    out["valid"][b:] = False
    return out


def place_rows(model: Any, batch: Mapping[str, np.ndarray], *, trim: bool = False) -> dict[str, jax.Array]:
    """Host rows -> device arrays on `model`'s mesh (`model.place_batch`).

    Args:
      model: a `jlang.Model` (its `mesh`, `check_ids` and `place_batch` are used).
      batch: `ids` int `[batch, seq]`, `valid` bool `[batch, seq]`, `lang` int `[batch]`, and
        optionally `positions` int `[batch, seq]` (default `0..seq-1`).
      trim: cut the columns to `bucket_width` of the longest valid row (one process only: every
        process must agree on a batch's shape).
    Returns:
      `ids`, `positions` int32, `valid` bool `[batch', seq']` and `lang` int32 `[batch']`, placed.
    """
    batch = pad_rows(batch, pad_batch_to(len(batch["ids"]), model.mesh))
    ids, valid = model.check_ids(batch["ids"]), np.asarray(batch["valid"], bool)
    if trim and jax.process_count() == 1:
        longest = int(np.max(np.where(valid.any(axis=0), np.arange(1, ids.shape[1] + 1), 0), initial=1))
        width = bucket_width(longest, ids.shape[1])
        ids, valid = ids[:, :width], valid[:, :width]
    b, t = ids.shape
    positions = batch.get("positions")
    if positions is None:
        positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
    positions = np.ascontiguousarray(np.asarray(positions)[:, :t], np.int32)
    lang = np.asarray(batch["lang"], np.int32)
    return {
        k: model.place_batch(v) for k, v in (("ids", ids), ("positions", positions), ("valid", valid), ("lang", lang))
    }


class Throughput:
    """A tqdm bar of batches whose postfix is a rate of something else (tokens/s, documents/s)."""

    def __init__(self, total: int | None, desc: str, counted: str, *, enabled: bool = True, decimals: int = 0):
        self.bar = tqdm(total=total, desc=desc, unit="batch", disable=not enabled)
        self.counted, self.decimals = counted, decimals
        self.count = 0
        self.start = time.perf_counter()

    def update(self, counted: int, **postfix: Any) -> None:
        """One batch done, which counted `counted` more tokens (documents, ...)."""
        self.count += counted
        rate = self.count / max(time.perf_counter() - self.start, 1e-9)
        self.bar.update()
        self.bar.set_postfix(**postfix, **{f"{self.counted}_per_s": f"{rate:,.{self.decimals}f}"})

    def close(self) -> None:
        self.bar.close()
