"""glibc's allocator, tuned for a process that streams large frames.

By default glibc serves every allocation above 32 MB-ish (its dynamic mmap threshold) from fresh
``mmap`` pages and returns them on free, so each chunk of 1080p frames (tens of MB), and each full-frame
copy, costs page faults on every use: 9-11 s of kernel time in a 10-s 1080p dub on this machine.
Raising the mmap and trim thresholds keeps those blocks in the heap for the next chunk to reuse
(the dub of vlog_woman_vertical_10s: 26.2 -> 22.8 s, peak RSS 2.9 -> 2.6 GB). Peak memory stays
bounded: the pipeline holds a fixed number of chunks.

The thresholds only govern the main arena, though. A thread other than the main one gets an arena
of its own, made of heaps of at most 64 MB, and serves a block that does not fit one from fresh
``mmap`` pages whatever the threshold. The stages are such threads (decoding, tracking, the
generator), so their frames and activations were still faulted in page by page: 0.9 million minor
faults in a 20-s 1080p dub. ``stream_frames_in_one_arena`` gives the whole process the main arena,
so every thread reuses freed blocks. Small allocations keep their per-thread cache (tcache), so
threads seldom wait on the arena's lock. It must run while the process has one thread: a library
thread that has allocated already owns an arena, and later threads are handed the existing arenas
in turn (glibc's ``reused_arena``). Set in the ``dub`` command, after numpy and pyarrow had started
theirs, 300 heaps of 64 MB were still mapped and unmapped in that dub; set first thing
(``flows.cli_start``), none, and the dub took 1.3-3 CPU-s and 0.6-1.5 s less than with the late
setting (three alternating runs).

What it costs: byte-identical outputs. x264 reads some memory it never wrote; fresh ``mmap`` pages
are zeros, reused heap holds earlier data, so the first few dozen frames of a 1080p dub can differ
by a grey level or two between runs of the same dub although the frames handed to the encoder are
identical (hashed, frame by frame, 2026-12-06). glibc's M_PERTURB (every allocation filled with a
fixed byte) makes the encodes identical, at 19% of that dub's time (35.4 -> 42.2 s), so it is not
set; compare dubs by their decoded frames against a tolerance, not by their files' hashes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
log = logging.getLogger(__name__)


def reuse_large_allocations(megabytes: int) -> bool:
    """Keep allocations up to ``megabytes`` in the heap for reuse (0: glibc's defaults). Returns
    whether it took effect (False on a C library without ``mallopt``, such as musl or macOS)."""
    if megabytes <= 0:
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    size = megabytes << 20
    ok = bool(mallopt(M_MMAP_THRESHOLD, size)) and bool(mallopt(M_TRIM_THRESHOLD, 4 * size))
    if not ok:
        log.debug("mallopt refused thresholds of %d MB", megabytes)
    return ok


def stream_frames_in_one_arena(megabytes: int) -> bool:
    """``reuse_large_allocations`` for every thread of this process: one arena for all. Call it
    first thing in a process that streams frames (``flows.cli_start``), before any thread starts.
    Returns whether it took effect; with ``megabytes`` 0 glibc's defaults are kept."""
    mallopt = _mallopt()
    if megabytes <= 0 or mallopt is None or not bool(mallopt(M_ARENA_MAX, 1)):
        return False
    return reuse_large_allocations(megabytes)


def numpy_huge_pages(enabled: bool) -> bool:
    """Whether numpy advises transparent huge pages (``madvise(MADV_HUGEPAGE)``) for its large
    arrays; numpy does by default on Linux. A huge page is zeroed whole, 2 MB, at its first touch,
    and on this VM first touches are what a fresh dub process pays most for (``clear_page`` under
    ``do_huge_pmd_anonymous_page`` in ``perf``): without the advice a 20-s 1080p dub spent 2.1 s
    in the kernel instead of 4.1 s. Set before numpy is imported (its environment variable) or after
    (its switch). Returns whether numpy will follow ``enabled``."""
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = "1" if enabled else "0"
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return True
    switch = getattr(getattr(getattr(numpy, "_core", None), "multiarray", None), "_set_madvise_hugepage", None)
    if switch is None:
        return False
    switch(enabled)
    return True


@functools.cache
def _mallopt():
    """glibc's ``mallopt``, or None on a C library without it (looked up once: ``find_library``
    runs ``ldconfig``)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
