"""What ``resync`` does before it imports anything else.

A command that streams frames through stage threads (``dub``, ``track``) runs best with one glibc
arena for the whole process (``tasks.malloc``). That setting only holds if it is made while this
process has a single thread: numpy (OpenBLAS), pyarrow and others start threads when imported, a
thread that allocates gets an arena of its own, and later threads are then handed those arenas in
turn, with their 64-MB heaps mapped and unmapped around every large block (300 heaps in one 20-s
1080p dub). So ``flows.cli`` calls ``prepare_process`` first, and this module imports only the
settings (pydantic) and ``tasks.malloc`` (ctypes).
"""

from __future__ import annotations

from typing import Sequence

from pydantic import ValidationError

from catalogs.settings import Settings
from tasks.malloc import numpy_huge_pages, stream_frames_in_one_arena

FRAME_COMMANDS = ("dub", "track")


def prepare_process(argv: Sequence[str]) -> bool:
    """For a frame-streaming command (``argv[1]``), one allocator arena with large blocks kept for
    reuse (``Settings.malloc_reuse_mb``), and numpy's arrays on ordinary pages unless
    ``Settings.numpy_huge_pages``. Returns whether the arena took effect. Settings that do not
    validate are left for the command to report."""
    if len(argv) < 2 or argv[1] not in FRAME_COMMANDS:
        return False
    try:
        settings = Settings()
    except ValidationError:
        return False
    numpy_huge_pages(settings.numpy_huge_pages)
    return stream_frames_in_one_arena(settings.malloc_reuse_mb)
