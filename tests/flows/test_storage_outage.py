"""The S3 endpoint goes away in the middle of a run (DESIGN section 6: reliability), for real.

Between the run and the moto server sits a TCP forwarder of the test's own (tests/tcp_proxy.py);
cutting it refuses new connections and resets open ones, as when the endpoint's host goes down.
About 8 s of outage while a dubbing actor is at work, then the endpoint is back. The run may ride
it out (retries with backoff) or end with ``storage_error`` rows or a failed shard (exit 3 or 1);
either way what is left a rerun finishes (one that rode it out leaves nothing to plan), and then: every item has exactly one success, nothing is
duplicated, every failure is a ``storage_error``, every published output is whole and named by a
success, and every older manifest version still reads as it was committed.

The test process reads the tables straight from moto (not through the proxy), so what it checks
is never itself cut off.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from catalogs.delta import DeltaTables
from catalogs.ingest import CatalogIngest
from catalogs.manifest import DubManifest
from catalogs.plan import plan_items
from catalogs.schemas import DUBS_TABLE, REQUESTS_TABLE, VIDEOS_TABLE
from catalogs.settings import Settings
from catalogs.storage import Storage
from infra.dev.ray_cluster import session_members
from tests.conftest import REPO, run_ffmpeg
from tests.flows.test_orchestration import processes
from tests.tcp_proxy import CuttableProxy

pytestmark = [pytest.mark.media, pytest.mark.s3]

LANGS = {"fr": "french1.wav", "de": "german1.wav"}
OUTAGE_S = 8.0


@pytest.fixture
def proxy(s3_endpoint: str):
    p = CuttableProxy(urlparse(s3_endpoint).port)
    yield p
    p.stop()


def run_nightly(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "nightly", "--json"], env=env, cwd=REPO,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def finish(run: subprocess.Popen, timeout: float = 200) -> tuple[str, str]:
    """The run's output once it ends; a run that hangs fails the test, and it and everything it
    started (its session: the embedded Ray cluster) are killed by pid."""
    try:
        return run.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not end within {timeout} s")
    finally:
        for pid in session_members(run.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def summary_of(stdout: str) -> dict | None:
    start = stdout.find("{")
    return json.loads(stdout[start:]) if start >= 0 else None


# How the run meets the outage: with the default retries (it should ride 8 s out), and with retry
# budgets shorter than the outage and no shard retries (it must give up cleanly, then a rerun finishes).
BUDGETS = {"default retries": {},
           "short retries": {"RESYNC_S3_RETRIES": "1", "RESYNC_S3_RETRY_TIMEOUT_S": "2", "RESYNC_SHARD_RETRIES": "0"}}


@pytest.mark.parametrize("budget", BUDGETS)
def test_a_storage_outage_mid_run_loses_duplicates_and_half_writes_nothing(
        budget: str, shared_data: Path, s3_endpoint: str, s3_bucket: str, proxy: CuttableProxy, tmp_path: Path,
        ffmpeg: str):
    started = time.monotonic()
    media, root = f"s3://{s3_bucket}/media", f"s3://{s3_bucket}/root"
    direct = Settings(root=root, allowed_roots=[media], s3_endpoint_url=s3_endpoint)   # the test's own view
    storage = Storage(direct)
    run_ffmpeg("-i", str(shared_data / "videos" / "speaker_map_5s.mp4"), "-t", "2", "-c:v", "libx264", "-preset",
               "veryfast", "-c:a", "aac", str(tmp_path / "map.mp4"))
    storage.put_file(tmp_path / "map.mp4", f"{media}/map.mp4")
    for lang, name in LANGS.items():
        run_ffmpeg("-i", str(shared_data / "audio" / name), "-t", "2", str(tmp_path / f"{lang}.wav"))
        storage.put_file(tmp_path / f"{lang}.wav", f"{media}/{lang}.wav")
    (tmp_path / "videos.csv").write_text(f"video_id,uri,speaker_id\nmap,{media}/map.mp4,man\n")
    (tmp_path / "requests.csv").write_text("video_id,language,audio_uri\n"
                                           + "".join(f"map,{lang},{media}/{lang}.wav\n" for lang in LANGS))
    assert not CatalogIngest(storage).run(str(tmp_path / "videos.csv"), str(tmp_path / "requests.csv")).rejects
    tables = DeltaTables(storage)
    committed = {name: {v: tables.read(name, version=v).to_pylist() for v in range(tables.open(name).version() + 1)}
                 for name in (VIDEOS_TABLE, REQUESTS_TABLE)}

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "RESYNC_ROOT": root, "RESYNC_S3_ENDPOINT_URL": proxy.endpoint, "RESYNC_ALLOWED_ROOTS": json.dumps([media]),
           "RESYNC_FEATURE_CACHE_DIR": str(tmp_path / "cache"), "RESYNC_QA_METRICS": "false",
           "RESYNC_SHARD_SIZE": "1",       # two shards in flight, two commits: the outage falls between them
           **BUDGETS[budget]}
    env.pop("PREFECT_API_URL", None)
    run = run_nightly(env)
    try:
        # the cut comes as the first shard commits: the second is in flight, its item starting on
        # the dubbing actor (reading its media), then publishing its output and committing
        deadline, first_commit = time.monotonic() + 150, False
        while not first_commit and run.poll() is None and time.monotonic() < deadline:
            first_commit = tables.exists(DUBS_TABLE) and tables.read(DUBS_TABLE, columns=["input_key"]).num_rows > 0
            time.sleep(0.3)
        assert first_commit and run.poll() is None, "the run ended, or did not commit within 150 s, before the cut"
        cut_at = time.monotonic() - started
        reset = proxy.cut()
        time.sleep(OUTAGE_S)
        proxy.restore()
    finally:
        stdout, stderr = finish(run)
    first = summary_of(stdout)
    print(f"first run: cut at {cut_at:.1f} s, rc={run.returncode}, {reset} connections reset, summary={first}\n{stderr[-3000:]}")
    assert run.returncode in (0, 1, 3), stderr[-6000:]
    if run.returncode == 3:           # completed, some items failed: only because of the outage
        assert set(first["failures"]) == {"storage_error"}, first
    if run.returncode == 1:           # could not complete: it says why, and it was the storage
        assert "storage_error" in " ".join(stderr.split()), stderr[-4000:]

    # what the outage left undone, a rerun (no outage) finishes, redoing nothing that succeeded
    before = DubManifest(tables).succeeded_keys()
    if budget == "short retries":
        assert run.returncode in (1, 3), "retries shorter than the outage rode it out"
    if run.returncode == 0:        # rode it out: nothing is left for a rerun (a plan is one cheap read)
        assert len(before) == len(LANGS) and plan_items(tables, direct.render_config) == []
    else:
        rerun = run_nightly({**env, "RESYNC_SHARD_RETRIES": "2"})
        stdout, stderr = finish(rerun)
        assert rerun.returncode == 0, stderr[-6000:]
        second = summary_of(stdout)
        assert second["planned"] == len(LANGS) - len(before) == second["succeeded"]

    # nothing lost, nothing duplicated, every failure a storage_error
    rows = DubManifest(tables).rows().to_pylist()
    print("\n".join(f"  {r['language']} attempt {r['attempt']}: {r['status']} {r['error_class'] or ''} {(r['error'] or '')[:160]}"
                    for r in rows))
    ok = [r for r in rows if r["status"] == "succeeded"]
    assert sorted(r["language"] for r in ok) == sorted(LANGS) and len({r["input_key"] for r in ok}) == len(LANGS)
    assert {r["error_class"] for r in rows if r["status"] == "failed"} <= {"storage_error"}
    attempts = [(r["input_key"], r["attempt"]) for r in rows]
    assert len(attempts) == len(set(attempts)), "an attempt was committed twice"

    # every published output is whole (its bytes hash to its row's) and named by a success
    outputs = sorted(storage.fs_for(root).find(f"{root}/outputs"))
    assert outputs == sorted(r["output_uri"].removeprefix("s3://") for r in ok), outputs
    for r in ok:
        assert storage.sha256(r["output_uri"]) == r["output_sha256"]

    # time travel: every version of every table reads, and the catalog's read as committed
    dt = tables.open(DUBS_TABLE)
    seen: list[tuple] = []
    for v in range(dt.version() + 1):
        at = {(r["input_key"], r["attempt"]) for r in tables.read(DUBS_TABLE, columns=["input_key", "attempt"], version=v).to_pylist()}
        assert set(seen) <= at, f"version {v} lost rows of an older version"
        seen = sorted(at)
    for name, versions in committed.items():
        for v, old in versions.items():
            assert tables.read(name, version=v).to_pylist() == old
    print(f"storage outage test ({budget}): {time.monotonic() - started:.1f} s")


@pytest.mark.parametrize("budget", ["default retries", "no retries"])
def test_an_ingest_cut_in_its_middle_lands_everything_or_nothing(
        budget: str, shared_data: Path, s3_endpoint: str, s3_bucket: str, tmp_path: Path, monkeypatch):
    """The media's endpoint goes away halfway through an ingest's requests (counted by a first,
    uncut ingest of the same listing). With its retries the ingest rides an 8 s outage out; with
    none it exits 1 naming storage_error, having committed nothing and blamed no row; then the
    same ingest lands every row. The catalog's committed versions read as they were."""
    from typer.testing import CliRunner

    from flows.cli import app

    media = f"s3://{s3_bucket}/media"
    direct = Storage(Settings(root=str(tmp_path / "x"), allowed_roots=[media], s3_endpoint_url=s3_endpoint))
    for name in ("speaker_map_5s.mp4", "speaker_glasses_5s.mp4"):
        direct.put_file(shared_data / "videos" / name, f"{media}/{name}")
    for name in LANGS.values():
        direct.put_file(shared_data / "audio" / name, f"{media}/{name}")
    videos, requests = tmp_path / "videos.csv", tmp_path / "requests.csv"
    videos.write_text(f"video_id,uri,speaker_id\nmap,{media}/speaker_map_5s.mp4,man\n"
                      f"glasses,{media}/speaker_glasses_5s.mp4,woman\n")
    requests.write_text("video_id,language,audio_uri\n" + "".join(
        f"{v},{lang},{media}/{name}\n" for v in ("map", "glasses") for lang, name in LANGS.items()))
    monkeypatch.setenv("RESYNC_PROBE_WORKERS", "1")          # one request at a time: the cut falls between two
    if budget == "no retries":
        monkeypatch.setenv("RESYNC_S3_RETRIES", "0")
    runner = CliRunner()

    def ingest(root: Path, endpoint: str, listings: list[str]):
        return runner.invoke(app, ["catalog", "ingest", "--root", str(root), *listings, "--allow-root", media,
                                   "--s3-endpoint-url", endpoint])

    full = ["--videos", str(videos), "--requests", str(requests)]
    counter = CuttableProxy(urlparse(s3_endpoint).port)
    try:
        assert ingest(tmp_path / "count", counter.endpoint, full).exit_code == 0
        total = counter.connections()
    finally:
        counter.stop()
    assert total >= 8, f"an ingest of 2 videos and 4 requests made only {total} connections"

    root = tmp_path / "root"
    tables = DeltaTables(Storage(Settings(root=str(root))))
    # history first: one video and its requests, from an ingest without an outage
    (tmp_path / "one.csv").write_text(videos.read_text().splitlines()[0] + "\n" + videos.read_text().splitlines()[1] + "\n")
    assert ingest(root, s3_endpoint, ["--videos", str(tmp_path / "one.csv")]).exit_code == 0
    committed = {name: {v: tables.read(name, version=v).to_pylist() for v in range(tables.open(name).version() + 1)}
                 for name in (VIDEOS_TABLE, REQUESTS_TABLE)}

    proxy = CuttableProxy(urlparse(s3_endpoint).port, cut_after=total // 2)
    try:
        restore = None
        if budget == "default retries":
            import threading

            def later() -> None:
                proxy.wait_for_cut(120)
                time.sleep(OUTAGE_S)
                proxy.restore()
            restore = threading.Thread(target=later)
            restore.start()
        r = ingest(root, proxy.endpoint, full)
        if restore is not None:
            restore.join(timeout=60)
        else:
            proxy.wait_for_cut(1)         # it did cut: the ingest met the outage
    finally:
        proxy.stop()
    output = " ".join(r.output.split())
    print(f"ingest cut after {total // 2} of {total} connections ({budget}): exit {r.exit_code}: {output[-300:]}")
    if budget == "no retries":
        assert r.exit_code == 1, r.output
    assert r.exit_code in (0, 1), r.output
    if r.exit_code == 1:             # nothing committed, no row blamed, and the same ingest then lands it all
        assert "storage_error" in output, output
        for name, versions in committed.items():
            assert tables.open(name).version() == max(versions), f"{name} got a commit from the failed ingest"
        assert tables.read("catalog/rejects").num_rows == 0
        r = ingest(root, s3_endpoint, full)
        assert r.exit_code == 0, r.output
    assert sorted(tables.read(VIDEOS_TABLE, columns=["video_id"]).column("video_id").to_pylist()) == ["glasses", "map"]
    assert tables.read(REQUESTS_TABLE).num_rows == 2 * len(LANGS) and tables.read("catalog/rejects").num_rows == 0
    for name, versions in committed.items():
        for v, old in versions.items():
            assert tables.read(name, version=v).to_pylist() == old
