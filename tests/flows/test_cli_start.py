"""flows.cli_start: ``resync dub`` sets one allocator arena before its imports start threads, so the
stage threads it starts later reuse freed frames (tasks.malloc); other commands keep glibc's defaults."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flows.cli_start import prepare_process

ROOT = Path(__file__).resolve().parents[2]
MB = 80

# Imports the CLI as the `resync` executable does, with the given command; then three threads one
# after another each allocate, write and free an 80-MB block four times. Prints the most page faults
# any thread took in a round after its first.
CHILD = textwrap.dedent(f"""
    import ctypes, resource, sys, threading
    sys.argv = ["resync", sys.argv[1]]
    import flows.cli  # noqa: F401
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    faults = []
    def stage():
        for round in range(4):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            block = libc.malloc({MB} << 20)
            ctypes.memset(block, 1, {MB} << 20)
            libc.free(block)
            if round:
                faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    for _ in range(3):
        t = threading.Thread(target=stage)
        t.start(); t.join()
    print(max(faults))
""")


def later_round_faults(command: str) -> int:
    return int(subprocess.run([sys.executable, "-c", CHILD, command], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator and per-thread fault counts")
def test_resync_dub_threads_reuse_freed_blocks_and_other_commands_keep_the_defaults() -> None:
    pages = (MB << 20) // 4096
    assert later_round_faults("dub") < pages // 20
    assert later_round_faults("catalog") > pages // 2


def test_only_frame_streaming_commands_are_prepared() -> None:
    assert not prepare_process(["resync"]) and not prepare_process(["resync", "catalog", "ingest"])
