"""glibc's allocator, tuned for a process that streams large frames.

By default glibc serves every allocation above 32 MB-ish (its dynamic mmap threshold) from fresh
``mmap`` pages and returns them on free, so each 96 MB chunk of 1080p frames, and each full-frame
copy, costs page faults on every use: 9-11 s of kernel time in a 10-s 1080p dub on this machine.
Raising the mmap and trim thresholds keeps those blocks in the heap for the next chunk to reuse
(the dub of vlog_woman_vertical_10s: 26.2 -> 22.8 s, peak RSS 2.9 -> 2.6 GB). Peak memory stays
bounded: the pipeline holds a fixed number of chunks.

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
log = logging.getLogger(__name__)


def reuse_large_allocations(megabytes: int) -> bool:
    """Keep allocations up to ``megabytes`` in the heap for reuse (0: glibc's defaults). Returns
    whether it took effect (False on a C library without ``mallopt``, such as musl or macOS)."""
    if megabytes <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    size = megabytes << 20
    ok = bool(mallopt(M_MMAP_THRESHOLD, size)) and bool(mallopt(M_TRIM_THRESHOLD, 4 * size))
    if not ok:
        log.debug("mallopt refused thresholds of %d MB", megabytes)
    return ok
