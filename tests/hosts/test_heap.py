"""The end of a FastFace job hands glibc's freed heap pages back to the OS (`fastface.hosts.heap`):
a FastFace job's larger peak otherwise stays resident in a long-lived server (the Neo soak)."""
import ctypes
import pathlib
import platform
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from fastface.hosts import heap, webui
from fastface.hosts.common import PatchSet

from test_webui_glue import job_p


@pytest.fixture
def trims(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "release_freed_heap", lambda: calls.append(1) or True)
    return calls


def run_job(script_args):
    p = job_p()
    webui.process(p, script_args)
    webui.postprocess(p, None)
    assert not PatchSet.live
    return p


def test_each_fastface_job_ends_with_one_trim(trims):
    run_job({"enabled": True, "preset": "Realistic"})
    assert trims == [1]
    run_job({"enabled": True, "preset": "Stylistic"})
    assert trims == [1, 1]


def test_no_trim_when_fastface_is_off_or_refused(trims):
    run_job({"enabled": False, "preset": "Realistic"})           # disabled: as if not installed
    run_job({"enabled": True, "am_mode": "sharpen"})              # rejected settings: FastFace off
    assert trims == []


GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_freed_heap_pages_leave_the_resident_set():
    """200 MB of 64 KiB blocks (under glibc's mmap threshold: heap, not mmap) freed with the last one
    kept, so that free() cannot shrink the heap's top: they stay resident until the trim."""
    script = textwrap.dedent("""
        import ctypes
        from fastface.hosts import heap
        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
        blocks = [libc.malloc(65536) for _ in range(3200)]
        for b in blocks:
            ctypes.memset(b, 1, 65536)
        for b in blocks[:-1]:
            libc.free(b)
        before = rss()
        asked = heap.release_freed_heap()
        print(asked, before - rss())
    """)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pathlib.Path(heap.__file__).parents[2])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    asked, released_mb = out.stdout.split()
    assert asked == "True"
    assert float(released_mb) > 150, out.stdout


def test_nothing_happens_without_malloc_trim(monkeypatch):
    heap._malloc_trim.cache_clear()
    try:
        monkeypatch.setattr(sys, "platform", "win32")
        assert heap.release_freed_heap() is False
        heap._malloc_trim.cache_clear()
        monkeypatch.setattr(sys, "platform", "linux")
        monkeypatch.setattr(ctypes, "CDLL", lambda name: SimpleNamespace())   # a libc without it (musl)
        assert heap.release_freed_heap() is False
    finally:
        monkeypatch.undo()
        heap._malloc_trim.cache_clear()
