"""Several processes commit shards to one manifest at once, on local disk and on the S3 endpoint:
nothing lost or doubled, every commit its own version."""

from __future__ import annotations

import multiprocessing as mp

from catalogs.delta import DeltaTables
from catalogs.manifest import DubManifest
from catalogs.schemas import DUBS_TABLE
from catalogs.settings import Settings
from catalogs.storage import Storage

WRITERS, SHARDS, ROWS = 4, 5, 20


def writer(settings: Settings, w: int, out) -> None:
    m = DubManifest(DeltaTables(Storage(settings)))
    versions = []
    for s in range(SHARDS):
        run, shard = f"run-w{w}", f"shard-{s}"
        items = [dict(run_id=run, shard_id=shard, video_id=f"w{w}-s{s}-v{i}", language="fr", attempt=1,
                      input_key=f"k{w}-{s}-{i}", status="succeeded") for i in range(ROWS)]
        versions.append(m.commit_shard(run, shard, items))
    out.put((w, versions))


def test_four_processes_commit_at_once(settings: Settings):
    tables = DeltaTables(Storage(settings))
    tables.ensure(DUBS_TABLE)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=writer, args=(settings, w, q)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    results = dict(q.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    all_versions = [v for vs in results.values() for v in vs]
    for vs in results.values():
        assert vs == sorted(vs) and len(set(vs)) == len(vs)  # each writer's versions strictly increase
    assert len(set(all_versions)) == WRITERS * SHARDS        # no two commits share a version
    rows = tables.read(DUBS_TABLE).to_pandas()
    assert len(rows) == WRITERS * SHARDS * ROWS
    assert not rows.duplicated(["video_id", "language"]).any()
    assert set(rows["video_id"]) == {f"w{w}-s{s}-v{i}" for w in range(WRITERS) for s in range(SHARDS) for i in range(ROWS)}
    assert tables.open(DUBS_TABLE).version() == max(all_versions)
