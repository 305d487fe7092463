"""Atomic file and directory writes: a killed run never leaves a half-written file that loads.

The pattern is the usual one: write next to the target under a temporary name,
flush and fsync, then `os.replace` it onto the target (atomic on POSIX and on
Windows for files on one volume). A crash before the rename leaves the old file,
or nothing, plus a stray `.tmp-*` entry that no loader opens.

A target may also be a URL of any `etils.epath` file system (`gs://bucket/run/stats.npz`):
the writer then writes a local temporary file and uploads it whole when it is complete
(an object store publishes an object in one step, so readers never see half of it).
Give such targets as strings or `epath.Path`s (`output_path`): `pathlib.Path` folds
`gs://` into `gs:/`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from etils import epath


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


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL (`gs://...`) rather than a path on this machine."""
    return "://" in os.fspath(path)


def output_path(path: str | os.PathLike) -> Path | epath.Path:
    """`path` as a `pathlib.Path`, or as an `etils.epath.Path` when it is a URL (which `Path` would mangle)."""
    return epath.Path(os.fspath(path)) if is_remote(path) else Path(path)


@contextlib.contextmanager
def _uploaded(target: epath.Path, *, directory: bool) -> Iterator[Path]:
    """A local temporary file (or directory) that is uploaded to `target` when the block ends without error."""
    with tempfile.TemporaryDirectory(prefix="jlang-upload-") as local:
        tmp = Path(local) / target.name
        if directory:
            tmp.mkdir()
        yield tmp
        target.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            if target.exists():
                target.rmtree()
            for file in tmp.rglob("*"):
                if file.is_file():
                    dest = target / file.relative_to(tmp).as_posix()
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(file.read_bytes())
        else:
            with open(tmp, "rb") as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; on success move it onto `path` atomically.

    The caller writes the temporary path completely (any writer that takes a path
    or an open file works). On an exception the temporary file is removed and the
    target is left untouched. A URL target is written locally and uploaded whole.
    """
    if is_remote(path):
        with _uploaded(epath.Path(os.fspath(path)), directory=False) as tmp:
            yield tmp
        return
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
    directory, absent, or the complete new one. A URL target is written locally and
    uploaded when complete (there, the old directory is removed just before).
    """
    if is_remote(path):
        with _uploaded(epath.Path(os.fspath(path)), directory=True) as tmp:
            yield tmp
        return
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
