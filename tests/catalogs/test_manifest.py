"""Dub manifest: shard commits, idempotent retries, time travel, latest status, merge, schema evolution."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from catalogs.delta import DeltaTables
from catalogs.manifest import DubManifest, dub_rows
from catalogs.registry import ModelRecord, ModelRegistry
from catalogs.runs import RunLog
from catalogs.schemas import DUBS_TABLE
from catalogs.settings import Settings
from catalogs.storage import Storage


def rows(run_id: str, shard_id: str, items: list[tuple[str, str]], status: str = "succeeded", attempt: int = 1) -> list[dict]:
    return [dict(run_id=run_id, shard_id=shard_id, video_id=v, language=lang, attempt=attempt, input_key=f"k-{v}-{lang}",
                 status=status, error_class=None if status == "succeeded" else "decode_error",
                 error=None if status == "succeeded" else f"{v}: corrupt", stage_seconds={"track": 0.5, "render": 1.25},
                 qa={"av_offset": 0.0}) for v, lang in items]


@pytest.fixture
def manifest(settings) -> DubManifest:
    return DubManifest(DeltaTables(Storage(settings)))


def test_shard_commit_is_one_version_and_a_retry_is_a_noop(manifest: DubManifest):
    v1 = manifest.commit_shard("run-a", "shard-1", rows("run-a", "shard-1", [("v1", "fr"), ("v2", "fr")]))
    assert manifest.commit_shard("run-a", "shard-1", rows("run-a", "shard-1", [("v1", "fr"), ("v2", "fr")])) is None
    v2 = manifest.commit_shard("run-a", "shard-2", rows("run-a", "shard-2", [("v3", "de")], status="failed"))
    assert v2 == v1 + 1
    assert manifest.rows().num_rows == 3
    hist = manifest.tables.open(DUBS_TABLE).history()
    mine = [h for h in hist if h.get("resync_op") == "commit-shard"]
    assert sorted((h["run_id"], h["shard_id"]) for h in mine) == [("run-a", "shard-1"), ("run-a", "shard-2")]
    assert manifest.rows().to_pylist()[0]["stage_seconds"] in ([("track", 0.5), ("render", 1.25)], [("render", 1.25), ("track", 0.5)])
    with pytest.raises(ValueError):
        manifest.commit_shard("run-a", "shard-3", rows("run-a", "shard-x", [("v9", "fr")]))


def test_time_travel_latest_and_history(manifest: DubManifest):
    manifest.commit_shard("run-1", "s1", rows("run-1", "s1", [("v1", "fr"), ("v2", "fr")], status="failed"))
    v_run1 = manifest.tables.open(DUBS_TABLE).version()
    manifest.commit_shard("run-2", "s1", rows("run-2", "s1", [("v1", "fr")], attempt=2))
    assert manifest.version_of_run("run-1") == v_run1
    old = manifest.as_of_run("run-1").to_pandas()
    assert set(old["status"]) == {"failed"} and len(old) == 2
    assert manifest.rows(version=v_run1).num_rows == 2
    latest = manifest.latest().set_index(["video_id", "language"])
    assert latest.loc[("v1", "fr"), "status"] == "succeeded" and latest.loc[("v2", "fr"), "status"] == "failed"
    hist = manifest.history("v1", "fr")
    assert list(hist["status"]) == ["failed", "succeeded"] and list(hist["run_id"]) == ["run-1", "run-2"]
    with pytest.raises(KeyError):
        manifest.as_of_run("never-ran")


def test_merge_of_reprocessed_attempts_inserts_once_and_never_rewrites(manifest: DubManifest):
    manifest.commit_shard("run-1", "s1", rows("run-1", "s1", [("v1", "fr")], status="failed"))
    before = manifest.rows().to_pylist()
    retry = rows("run-r", "r1", [("v1", "fr")], attempt=2)
    v = manifest.upsert_attempts("run-r", retry)
    assert manifest.upsert_attempts("run-r", retry) == v  # the same attempt again: no new version
    after = manifest.rows().to_pandas().sort_values("attempt")
    assert list(after["attempt"]) == [1, 2] and list(after["status"]) == ["failed", "succeeded"]
    assert manifest.rows(version=v - 1).to_pylist() == before  # the failure is still there by time travel


def test_adding_a_column_keeps_old_versions_readable(manifest: DubManifest):
    tables = manifest.tables
    manifest.commit_shard("run-1", "s1", rows("run-1", "s1", [("v1", "fr")]))
    v_old = tables.open(DUBS_TABLE).version()
    extra = dub_rows(rows("run-2", "s1", [("v2", "fr")]))
    extra = extra.append_column("lipsync_score", pa.array([0.9]))
    tables.append(DUBS_TABLE, extra, {"run_id": "run-2", "shard_id": "s1"}, evolve_schema=True)
    new = tables.read(DUBS_TABLE)
    assert "lipsync_score" in new.column_names and new.num_rows == 2
    old = tables.read(DUBS_TABLE, version=v_old)
    assert "lipsync_score" not in old.column_names and old.num_rows == 1
    # writers that do not know the column still commit
    manifest.commit_shard("run-3", "s1", rows("run-3", "s1", [("v3", "fr")]))
    assert tables.read(DUBS_TABLE).num_rows == 3


def test_checkpoints_keep_the_log_short(tmp_path: Path):
    tables = DeltaTables(Storage(Settings(root=str(tmp_path), checkpoint_interval=5)))
    m = DubManifest(tables)
    for i in range(12):
        m.commit_shard("run", f"s{i}", rows("run", f"s{i}", [(f"v{i}", "fr")]))
    log = tmp_path / "manifests" / "dubs" / "_delta_log"
    assert (log / "_last_checkpoint").exists()
    assert len(list(log.glob("*.checkpoint.parquet"))) >= 2
    tables.maintain(DUBS_TABLE)
    assert tables.read(DUBS_TABLE).num_rows == 12
    assert len(tables.open(DUBS_TABLE).file_uris()) == 1  # compacted
    assert tables.read(DUBS_TABLE, version=3).num_rows == 3  # history intact


def test_runs_and_registry(settings):
    tables = DeltaTables(Storage(settings))
    runs = RunLog(tables)
    rid = runs.start("nightly", {"languages": ["fr"]})
    assert runs.get(rid)["status"] == "running"
    runs.finish(rid, "succeeded", planned=3, succeeded=2, failed=1)
    r = runs.get(rid)
    assert (r["status"], r["planned"], r["succeeded"], r["failed"]) == ("succeeded", 3, 2, 1) and r["ended_at"] >= r["started_at"]
    with pytest.raises(ValueError):
        runs.start("bogus", {})

    reg = ModelRegistry(tables)
    assert reg.versions_by_speaker() == ("untrained", {})
    reg.register(ModelRecord("base-1", "bundle", "v-base", "s3://m/base", metrics={"psnr": 25.0}))
    assert reg.register(ModelRecord("base-1", "bundle", "v-base", "s3://m/base")) is None  # same version: no-op
    reg.register(ModelRecord("spk-a-1", "bundle", "v-a1", "s3://m/a1", speaker_id="a", parent="v-base", training_data=["x"]))
    reg.register(ModelRecord("spk-a-2", "bundle", "v-a2", "s3://m/a2", speaker_id="a", parent="v-base"))
    assert reg.versions_by_speaker() == ("v-base", {"a": "v-a2"})
    assert reg.latest("a")["model_id"] == "spk-a-2" and reg.latest()["metrics"] == [("psnr", 25.0)]
