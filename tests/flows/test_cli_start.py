"""flows.cli_start: ``resync dub`` sets one allocator arena before its imports start threads, so the
stage threads it starts later reuse freed frames (tasks.malloc); other commands keep glibc's defaults."""

from __future__ import annotations

import sys

import pytest

from flows.cli_start import prepare_process
from tests.tasks.test_malloc import PAGES, later_round_faults

# the CLI imported as the `resync` executable imports it, with the command given to the child
AS_EXECUTABLE = """
    import sys
    sys.argv = ["resync", sys.argv[1]]
    import flows.cli  # noqa: F401
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux: glibc's allocator and per-thread "
                    "page-fault counts (RUSAGE_THREAD)")
def test_resync_dub_threads_reuse_freed_blocks_and_other_commands_keep_the_defaults() -> None:
    assert int(later_round_faults(AS_EXECUTABLE, "dub", threads=3)) < PAGES // 20
    assert int(later_round_faults(AS_EXECUTABLE, "catalog", threads=3)) > PAGES // 2


def test_only_frame_streaming_commands_are_prepared() -> None:
    assert not prepare_process(["resync"]) and not prepare_process(["resync", "catalog", "ingest"])
