"""tasks.malloc: with one arena set at the start, a stage thread reuses the memory of the frames it freed instead of faulting in fresh pages."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A thread other than the main one allocates a chunk-sized block (above glibc's 64-MB per-thread
# heap), writes it and frees it, four times; prints the page faults of rounds 2-4 (the first must fault).
CHILD = textwrap.dedent("""
    import ctypes, resource, sys, threading
    from tasks.malloc import stream_frames_in_one_arena
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "tuned" and not stream_frames_in_one_arena(256):
        print("unsupported"); sys.exit(0)
    faults = []
    def stage():
        for _ in range(4):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            block = libc.malloc(80 << 20)      # as FFmpeg and torch allocate (numpy asks for huge pages)
            ctypes.memset(block, 1, 80 << 20)
            libc.free(block)
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    t = threading.Thread(target=stage)
    t.start(); t.join()
    print(max(faults[1:]))
""")


def later_round_faults(mode: str) -> str:
    return subprocess.run([sys.executable, "-c", CHILD, mode], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(__import__("resource"), "RUSAGE_THREAD"),
                    reason="per-thread page-fault counts are a Linux facility")
def test_a_stage_thread_reuses_a_freed_chunk_instead_of_faulting_in_new_pages() -> None:
    tuned = later_round_faults("tuned")
    if tuned == "unsupported":
        pytest.skip("this C library has no mallopt (not glibc)")
    pages = (80 << 20) // 4096
    assert int(later_round_faults("default")) > pages // 2      # glibc's defaults: fresh pages every round
    assert int(tuned) < pages // 20                             # tuned: the freed block is reused
