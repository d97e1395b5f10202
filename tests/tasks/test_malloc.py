"""tasks.malloc: with one arena set at the start, a stage thread reuses the memory of the frames it
freed instead of faulting in fresh pages."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK_MB = 80          # above glibc's 64-MB per-thread heap, like a chunk of 1080p frames
PAGES = (BLOCK_MB << 20) // 4096


def later_round_faults(setup: str, arg: str, threads: int = 1) -> str:
    """Run ``setup`` (Python, may read ``sys.argv[1] == arg``) in a fresh process, then ``threads``
    threads one after another each allocate, write and free a ``BLOCK_MB`` block four times, as
    FFmpeg and torch allocate (numpy asks for huge pages); returns what the child printed: the most
    page faults a thread took in a round after its first (the first must fault), or its own word."""
    child = textwrap.dedent(setup) + textwrap.dedent(f"""
        import ctypes, resource, threading
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        faults = []
        def stage():
            for round in range(4):
                before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
                block = libc.malloc({BLOCK_MB} << 20)
                ctypes.memset(block, 1, {BLOCK_MB} << 20)
                libc.free(block)
                if round:
                    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
        for _ in range({threads}):
            t = threading.Thread(target=stage)
            t.start(); t.join()
        print(max(faults))
    """)
    return subprocess.run([sys.executable, "-c", child, arg], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]


TUNE = """
    import sys
    from tasks.malloc import stream_frames_in_one_arena
    if sys.argv[1] == "tuned" and not stream_frames_in_one_arena(256):
        print("unsupported"); sys.exit(0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux: glibc's allocator and per-thread "
                    "page-fault counts (RUSAGE_THREAD)")
def test_a_stage_thread_reuses_a_freed_chunk_instead_of_faulting_in_new_pages() -> None:
    tuned = later_round_faults(TUNE, "tuned")
    if tuned == "unsupported":
        pytest.skip("this C library has no mallopt: glibc is not installed here")
    assert int(later_round_faults(TUNE, "default")) > PAGES // 2      # glibc's defaults: fresh pages every round
    assert int(tuned) < PAGES // 20                                   # tuned: the freed block is reused
