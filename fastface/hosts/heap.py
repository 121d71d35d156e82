"""Hand the heap memory freed by a FastFace job back to the operating system (Linux, glibc).

Why: a FastFace job's peak is larger than the host's own (DCG's extra rows, the face branch's
(rows, heads, L, T) maps, the recorded previews). On CPU those tensors live in glibc's heap, and
glibc keeps freed heap pages for reuse instead of returning them: after a few peak jobs a long-lived
server's resident memory sits a few hundred MB higher and stays there (the Forge Neo soak: +350 MB at
the first interrupted DCG job, none of it live objects; with glibc told to return blocks ≥ 64 KiB the
step was gone). `malloc_trim(0)` returns the free pages of every arena at the end of the job.

It only frees what nothing uses: no tensor, cache or pixel changes. Called once per FastFace job, after
its patches are undone (never per step). Elsewhere (Windows, macOS, musl without `malloc_trim`) it
does nothing; it never raises.
"""
from __future__ import annotations

import ctypes
import functools
import sys


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """libc's `int malloc_trim(size_t pad)`, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim   # the C library the process already uses
    except (OSError, AttributeError):          # musl and other C libraries without it
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_heap() -> bool:
    """Give the heap's free pages back to the OS; True when libc was asked (it may find none)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    try:
        trim(0)
    except Exception:   # pragma: no cover - a foreign ctypes failure: memory stays as it was
        return False
    return True
