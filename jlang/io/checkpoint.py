"""Runs that survive being killed: the orbax run store, run fingerprints, and stopping on a signal.

A LAPE pass over 100M tokens per language, a fine-tuning run or an SAE run takes
hours, and preemptible TPUs and shared GPU queues end jobs with SIGTERM. Every
resumable loop in jlang (statistics, fine-tuning, SAE training) keeps its state
in one `OrbaxRun`: an orbax `CheckpointManager` whose checkpoints hold named
items (accumulators, parameters, optimiser state, grain iterators) and a JSON
run record. The record carries the run's *fingerprint*, everything that makes
two runs the same run; resuming with another run's checkpoint is refused by
`check_fingerprint`, naming each entry that differs.

On a signal the handler of `stop_requested` only sets a flag; the loop saves a
checkpoint at the next step boundary (every process agrees on the boundary) and
raises `RunInterrupted`, whose `exit_code` is 128 + the signal number. Orbax
writes a checkpoint under a temporary name and commits it by renaming, so a run
killed mid-save resumes from the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grain
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jlang.parallel import distributed


class ResumeError(ValueError):
    """A checkpoint cannot be used for this run (another run's, unreadable, or present without --resume)."""


class RunInterrupted(Exception):
    """The run stopped on a signal after saving a checkpoint; rerun the same command with resume."""

    def __init__(self, signum: int, done: int, total: int, directory: str, *, unit: str = "batches"):
        self.signum, self.done, self.total, self.directory = signum, done, total, directory
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        super().__init__(
            f"interrupted by {name} after {done} of {total} {unit}; checkpoint saved in {directory}. "
            "Run the same command with --resume to continue where it stopped"
        )

    @property
    def exit_code(self) -> int:
        """128 + signal number, the shell's convention for a process ended by that signal."""
        return 128 + int(self.signum)


# ----------------------------------------------------------------------------- signals


@dataclass
class StopFlag:
    """Set by the signal handler; read by the loop at step boundaries."""

    signum: int | None = None

    def is_set(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_requested(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[StopFlag]:
    """Within the block, the first of `signals` sets the yielded flag instead of ending the process.

    A second signal runs the previous handler (Ctrl-C twice aborts at once, without a checkpoint).
    Handlers can only be installed from the main thread; elsewhere the flag is never set.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum, frame):
        if flag.is_set():
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)
            return
        flag.signum = signum

    for s in signals:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- the run store


class IteratorSnapshot(grain.DatasetIterator):
    """A grain iterator frozen at a recorded state: what grain's orbax handler saves and restores.

    A pipelined loop has drawn one batch more than it has folded when it checkpoints, so it
    saves the state it recorded right after drawing the last folded batch, not the live iterator's.
    """

    def __init__(self, state: dict | None = None):
        super().__init__()
        self._state = state

    def __next__(self):
        raise StopIteration

    def get_state(self) -> dict:
        return self._state

    def set_state(self, state: dict) -> None:
        self._state = state


def as_epath(directory: str | os.PathLike) -> epath.Path:
    """An etils path (orbax's), absolute when local; `gs://...` stays as it is."""
    text = os.fspath(directory)
    return epath.Path(text if "://" in text else os.path.abspath(os.path.expanduser(text)))


def is_local(path: str | os.PathLike) -> bool:
    """Whether `path` is on this machine's file system (not `gs://...` or another remote scheme)."""
    return "://" not in os.fspath(path)


class OrbaxRun:
    """The orbax `CheckpointManager` of one resumable run (created lazily: nothing is written before a save).

    What every resumable loop shares (statistics, fine-tuning, SAE training): the newest committed
    step, a JSON run record read on its own (to refuse another run's checkpoint cheaply), named
    items saved and restored together, and errors that say which checkpoint to delete. Every process
    must make the same calls (orbax saves collectively); the directory must be shared by all processes
    (a network file system or `gs://`).
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
        self.directory = as_epath(directory)
        self.max_to_keep = max_to_keep
        self._manager: ocp.CheckpointManager | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r})"

    def _mgr(self) -> ocp.CheckpointManager:
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, enable_async_checkpointing=False)
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def latest_step(self) -> int | None:
        """The newest committed checkpoint's step, or None if there is none."""
        if not self.directory.exists():
            return None
        return self._mgr().latest_step()

    def save_items(self, step: int, record: Mapping, **items) -> None:
        """Checkpoint `step`: orbax `args` per name (e.g. `StandardSave(params)`) and the JSON `record`."""
        self._mgr().save(step, args=ocp.args.Composite(**items, run=ocp.args.JsonSave(dict(record))), force=True)
        self._mgr().wait_until_finished()

    def read_record(self, step: int) -> dict:
        """The run record of checkpoint `step`."""
        try:
            return dict(self._mgr().restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))["run"])
        except Exception as e:  # any failure means the checkpoint is unusable; say which
            raise ResumeError(
                f"checkpoint {self.directory}/{step} cannot be read ({type(e).__name__}: {e}); delete "
                f"{self.directory} to start over"
            ) from None

    def restore_items(self, step: int, **items) -> dict:
        """The named items of checkpoint `step` (orbax restore `args` per name)."""
        try:
            return dict(self._mgr().restore(step, args=ocp.args.Composite(**items)))
        except Exception as e:  # any failure means the checkpoint is unusable; say which
            raise ResumeError(
                f"checkpoint {self.directory}/{step} cannot be restored ({type(e).__name__}: {e}); delete "
                f"{self.directory} to start over"
            ) from None

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def remove(self) -> None:
        """Delete the checkpoints (process 0, after every process is done with them)."""
        self.close()
        distributed.barrier("jlang-checkpoint-remove")
        if distributed.is_primary() and self.directory.exists():
            self.directory.rmtree()
        distributed.barrier("jlang-checkpoint-removed")


def check_no_stale_checkpoint(directory: str | os.PathLike, resume: bool, *, unit: str = "batches") -> int | None:
    """Fail fast when a checkpoint exists but `resume` is off (never clobber a half-done run silently).

    Returns the newest checkpoint's step (None if there is none). Cheap: no model is loaded.
    """
    store = OrbaxRun(directory)
    try:
        step = store.latest_step()
    finally:
        store.close()
    if step is not None and not resume:
        raise stale_checkpoint(store.directory, step, unit=unit)
    return step


def stale_checkpoint(
    directory: Any, step: int, *, unit: str = "batches", run: str = "an interrupted run", resume: str = "--resume"
) -> ResumeError:
    """The error for a checkpoint found where a new run was asked for (`resume`: how to ask for resuming)."""
    return ResumeError(
        f"{directory} holds a checkpoint of {run} ({step} {unit} done); pass {resume} to "
        f"continue it, or delete {directory} to start over"
    )


# ----------------------------------------------------------------------------- fingerprints


def check_fingerprint(
    saved: Mapping, current: Mapping, where: str, *, informative: frozenset[str] = frozenset()
) -> None:
    """Raise `ResumeError` unless checkpoint fingerprint `saved` is this run's `current` one.

    Both carry a `"format"` entry (the kind of run: statistics, fine-tuning, SAE); `informative`
    entries describe the run but may change on resume (paths move). The error names every
    entry that differs.
    """
    if saved.get("format") != current.get("format"):
        raise ResumeError(
            f"{where} does not hold a checkpoint of this kind of run (format {saved.get('format')!r}, expected "
            f"{current.get('format')!r}); delete it or checkpoint elsewhere"
        )
    keys = sorted((set(saved) | set(current)) - set(informative) - {"format"})
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise ResumeError(
            f"{where} holds a checkpoint of a different run ({'; '.join(diffs)}); resume with the same settings, "
            f"or delete {where} (or checkpoint elsewhere) to start a new run"
        )


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """`{"train": {"steps": 3}}` -> `{"train.steps": 3}` (so a refused resume names the exact key)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def array_digest(*arrays: np.ndarray, header: str = "") -> str:
    """A BLAKE2b digest of `header` and arrays (dtypes, shapes, bytes): a changed corpus or mask changes it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(header.encode())
    for arr in arrays:
        a = np.ascontiguousarray(arr)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()
