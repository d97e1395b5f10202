"""flows.cli_start: ``resync dub`` sets one allocator arena before its imports start threads, so the
stage threads it starts later reuse freed frames (tasks.malloc), and keeps numpy's arrays off huge
pages; other commands keep glibc's and numpy's defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


HUGE_PAGE_ADVICE = """
import subprocess, sys
sys.argv = ["resync", sys.argv[1]]
import flows.cli  # noqa: F401
import numpy
print(numpy._core.multiarray._get_madvise_hugepage())
"""


def huge_page_advice(command: str, **env: str) -> str:
    """Whether numpy advises huge pages in a fresh process started as ``resync COMMAND``."""
    return subprocess.run([sys.executable, "-c", HUGE_PAGE_ADVICE, command], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, check=True, env={**os.environ, **env}).stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="numpy advises huge pages on Linux only")
def test_resync_dub_keeps_numpys_arrays_off_huge_pages_unless_asked() -> None:
    assert huge_page_advice("dub") == "False"
    assert huge_page_advice("dub", RESYNC_NUMPY_HUGE_PAGES="true") == "True"
    assert huge_page_advice("catalog") == "True"        # other commands keep numpy's default


def test_numpy_huge_pages_switches_an_imported_numpy_too(monkeypatch) -> None:
    import numpy

    from tasks.malloc import numpy_huge_pages
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")     # recorded, so the variable it sets is put back after
    before = numpy._core.multiarray._get_madvise_hugepage()
    try:
        assert numpy_huge_pages(False) and not numpy._core.multiarray._get_madvise_hugepage()
        assert numpy_huge_pages(True) and numpy._core.multiarray._get_madvise_hugepage()
    finally:
        numpy._core.multiarray._set_madvise_hugepage(before)


def test_only_frame_streaming_commands_are_prepared() -> None:
    assert not prepare_process(["resync"]) and not prepare_process(["resync", "catalog", "ingest"])
