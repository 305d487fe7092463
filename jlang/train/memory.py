"""Host memory of a training run: its peak, and handing freed heap back to the OS between steps."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource
import sys


def peak_rss_gb() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 30) if sys.platform == "darwin" else peak / (1 << 20)


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand heap memory freed since the last call back to the OS (glibc `malloc_trim(0)`).

    Every step, XLA's CPU runtime allocates and frees the step's temporaries (gradients, activations,
    vocabulary chunks). glibc keeps freed chunks below its mmap threshold in per-thread arenas, where
    they fragment, so without trimming the resident memory of a run creeps up step after step while
    the live memory stays flat (docs/finetune.md has the measurements). A no-op without glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
