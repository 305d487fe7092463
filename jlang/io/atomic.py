"""Atomic file and directory writes: a killed run never leaves a half-written file that loads.

The pattern is the usual one: write next to the target under a temporary name,
flush and fsync, then `os.replace` it onto the target (atomic on POSIX and on
Windows for files on one volume). A crash before the rename leaves the old file,
or nothing, plus a stray `.tmp-*` entry that no loader opens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def writes_results() -> bool:
    """False on the processes other than process 0 of a multi-process JAX run (`jax.distributed`).

    Every process of such a run holds the same results, and the result writers (`write_npz`,
    `torchfile.save`) write them once, on process 0: N processes writing one shared path would
    race, and N copies on N local disks are not what anyone asked for. JAX is not imported here:
    a program that has not imported it is a single process.
    """
    jax = sys.modules.get("jax")
    if jax is None or not jax.distributed.is_initialized():
        return True
    return jax.process_index() == 0


def _fsync_dir(directory: Path) -> None:
    """Persist a rename on POSIX; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask_mode(full: int) -> int:
    """`full` (0o666 files, 0o777 dirs) less the process umask: what open()/mkdir() would give.
    mkstemp/mkdtemp create 0600/0700 entries, which would hide results from other users."""
    umask = os.umask(0)
    os.umask(umask)
    return full & ~umask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; on success move it onto `path` atomically.

    The caller writes the temporary path completely (any writer that takes a path
    or an open file works). On an exception the temporary file is removed and the
    target is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, _umask_mode(0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces the directory `path`.

    An existing target is first renamed aside and deleted only after the new
    directory is in place, so at every instant `path` is either the complete old
    directory, absent, or the complete new one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, _umask_mode(0o777))
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if target.exists():
            if not target.is_dir():
                raise FileExistsError(f"{target} exists and is not a directory; remove it or save elsewhere")
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
