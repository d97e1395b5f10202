"""glibc's allocator, tuned for a process that streams large frames.

By default glibc serves every allocation above 32 MB-ish (its dynamic mmap threshold) from fresh
``mmap`` pages and returns them on free, so each 96 MB chunk of 1080p frames, and each full-frame
copy, costs page faults on every use: 9-11 s of kernel time in a 10-s 1080p dub on this machine.
Raising the mmap and trim thresholds keeps those blocks in the heap for the next chunk to reuse
(the dub of vlog_woman_vertical_10s: 26.2 -> 22.8 s, peak RSS 2.9 -> 2.6 GB). Peak memory stays
bounded: the pipeline holds a fixed number of chunks.

The thresholds only govern the main arena, though. A thread other than the main one gets an arena
of its own, made of heaps of at most 64 MB, and serves a block that does not fit one from fresh
``mmap`` pages whatever the threshold. The stages are such threads (decoding, tracking, the
generator), so their frames and activations were still faulted in page by page: 0.9 million minor
faults in a 20-s 1080p dub. One arena for the process (``M_ARENA_MAX`` 1, set before the first
stage thread allocates, hence also at the start of tracking) lets every thread reuse freed blocks:
the decoding thread's faults fell from 158,000 to 1,000, and that dub took 2.5-3.5 CPU-s and
0.5-2 s less (three alternating runs). Small allocations keep their per-thread cache (tcache), so
threads seldom wait on the arena's lock.

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
import logging

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
log = logging.getLogger(__name__)


def reuse_large_allocations(megabytes: int) -> bool:
    """Keep allocations up to ``megabytes`` in the heap for reuse, in one arena for all threads (0:
    glibc's defaults). Returns whether it took effect (False on a C library without ``mallopt``, such
    as musl or macOS). Call it before the threads that allocate frames start."""
    if megabytes <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    size = megabytes << 20
    ok = (bool(mallopt(M_MMAP_THRESHOLD, size)) and bool(mallopt(M_TRIM_THRESHOLD, 4 * size))
          and bool(mallopt(M_ARENA_MAX, 1)))
    if not ok:
        log.debug("mallopt refused thresholds of %d MB", megabytes)
    return ok
