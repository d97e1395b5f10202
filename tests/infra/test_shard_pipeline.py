"""``process_shard`` as a pipeline, on a real embedded Ray cluster with real actor pools.

The actors are small stand-ins for ours (same methods: ``track``, ``dub``, ``warm``) that sleep
instead of working and log what they do, with wall-clock times, to a file: so the order of
tracking and dubbing across processes is what the test reads, and the shard's own logic (both
pools in one loop, failures, deadline, commit) is what runs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pytest
import ray

from catalogs.delta import DeltaTables
from catalogs.manifest import DubManifest
from catalogs.plan import PlannedItem, Shard
from catalogs.registry import ModelRecord, ModelRegistry
from catalogs.schemas import VIDEOS, VIDEOS_TABLE
from catalogs.settings import Settings
from catalogs.storage import Storage
from infra.ray_pools import ActorPool, Pools, connect, shutdown
from infra.shards import process_shard
from tasks.dub_item import ItemJob, TrackOutcome, row


def log_event(path: str, **event) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({**event, "t": time.time()}) + "\n")


class FakeTracker:
    """Tracks a video in ``seconds[video_uri]`` seconds (default 0.1); a uri with "bad" has no face."""

    def __init__(self, events: str, seconds: dict[str, float]) -> None:
        self.events, self.seconds = events, seconds

    def track(self, video_uri: str, video_sha256: str) -> TrackOutcome:
        log_event(self.events, what="track-start", video=video_uri)
        time.sleep(self.seconds.get(video_uri, 0.1))
        log_event(self.events, what="track-end", video=video_uri)
        if "bad" in video_uri:
            return TrackOutcome(video_sha256, None, 0.1, error_class="no_face", error="no face in the video")
        return TrackOutcome(video_sha256, f"mem://{video_sha256}", self.seconds.get(video_uri, 0.1))

    def pid(self) -> int:
        return os.getpid()


class FakeDubber:
    """Dubs an item in 0.3 s; language "xx" kills the actor, "zz" hangs."""

    def __init__(self, events: str) -> None:
        self.events = events

    def warm(self, model_uri: str, frame_sizes: list[tuple[int, int]] | None = None) -> float:
        log_event(self.events, what="warm", model=model_uri, frame_sizes=frame_sizes)
        return 0.0

    def pid(self) -> int:
        return os.getpid()

    def dub(self, job: ItemJob) -> dict:
        log_event(self.events, what="dub-start", video=job.item.video_uri, language=job.item.language)
        if job.item.language == "xx":
            os._exit(1)
        time.sleep(60 if job.item.language == "zz" else 0.3)
        log_event(self.events, what="dub-end", video=job.item.video_uri, language=job.item.language)
        return row(job, "succeeded", output_sha256="0" * 64, stage_seconds={"total_s": 0.3},
                   qa={"video_seconds": 1.0})


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    connect(Settings(ray_num_cpus=2, ray_temp_dir=str(tmp_path_factory.mktemp("ray"))))
    yield
    shutdown()


@pytest.fixture
def shard_settings(tmp_path: Path, ray_cluster) -> Settings:
    settings = Settings(root=str(tmp_path / "root"), allowed_roots=[str(tmp_path)], item_retries=0)
    ModelRegistry(DeltaTables(Storage(settings))).register(ModelRecord("base", "bundle", "v1", "mem://model-v1"))
    return settings


def fake_pools(events: Path, track_seconds: dict[str, float] | None = None) -> Pools:
    """One fake actor per pool, started (their imports take seconds here) before a shard's deadline runs."""
    opts = {"num_cpus": 0.1, "max_restarts": 0, "max_task_retries": 0}
    tracker = ray.remote(FakeTracker).options(**opts)
    dubber = ray.remote(FakeDubber).options(**opts)
    pools = Pools(ActorPool(lambda: tracker.remote(str(events), track_seconds or {}), 1),
                  ActorPool(lambda: dubber.remote(str(events)), 1))
    pools.tracking.pids(), pools.dubbing.pids()
    return pools


def shard(*items: tuple[str, str], model: str = "v1", shard_id: str = "shard-0") -> Shard:
    return Shard(shard_id, tuple(PlannedItem(video, lang, f"key-{video}-{lang}", 1, "spk", video, f"{lang}.wav",
                                              model, None, video_sha256=f"sha-{video}") for video, lang in items))


def catalog_videos(settings: Settings, sizes: dict[str, tuple[int, int]]) -> None:
    """Rows of the catalog's videos table for these video ids (what ingest would have probed)."""
    tables = DeltaTables(Storage(settings))
    tables.ensure(VIDEOS_TABLE)
    rows = [{"video_id": v, "uri": v, "width": w, "height": h, "sha256": f"sha-{v}"} for v, (w, h) in sizes.items()]
    tables.append(VIDEOS_TABLE, pa.Table.from_pylist(rows, schema=VIDEOS), {"resync_op": "test"})


def events_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_videos_items_are_dubbed_while_the_next_video_is_still_tracked(shard_settings, tmp_path):
    events = tmp_path / "events.jsonl"
    catalog_videos(shard_settings, {"fast": (1920, 1080), "slow": (256, 256), "other": (640, 480)})
    pools = fake_pools(events, {"slow": 4.0})
    finished: list[tuple[str, str, float]] = []
    try:
        out = process_shard(shard_settings, pools, "run-1", shard(("fast", "de"), ("fast", "fr"), ("slow", "de"),
                                                                    ("slow", "fr")),
                            on_item=lambda r: finished.append((r["video_id"], r["language"], time.time())))
        mapped = pools.tracking.map("track", [("x", "sha-x"), ("bad", "sha-bad")], on_error=lambda i, e: None)
    finally:
        pools.tracking.kill()
        pools.dubbing.kill()
    assert (out.succeeded, out.failed) == (4, 0)
    log = events_of(events)
    assert [e["what"] for e in log if e["what"] in ("warm", "dub-start")][0] == "warm"
    assert next(e for e in log if e["what"] == "warm")["frame_sizes"] == [[256, 256], [1920, 1080]]  # the shard's videos
    slow_tracked = next(e["t"] for e in log if e["what"] == "track-end" and e["video"] == "slow")
    fast_dubbed = [e["t"] for e in log if e["what"] == "dub-end" and e["video"] == "fast"]
    assert len(fast_dubbed) == 2 and max(fast_dubbed) < slow_tracked          # the overlap, on the actors' clocks
    assert [t < slow_tracked for v, _, t in finished] == [True, True, False, False]   # ...and on_item's
    rows = DubManifest(DeltaTables(Storage(shard_settings))).rows().to_pylist()
    assert [(r["video_id"], r["language"]) for r in rows] == [("fast", "de"), ("fast", "fr"), ("slow", "de"),
                                                              ("slow", "fr")]     # job order, one commit
    stages = [list(dict(r["stage_seconds"])) for r in rows]
    assert all(s[:3] == ["track_s", "queue_s", "total_s"] for s in stages)
    assert dict(rows[2]["stage_seconds"])["track_s"] == 4.0
    assert [(m.artifact_uri, m.error_class) for m in mapped] == [("mem://sha-x", None), (None, "no_face")]   # map, in order


def test_failures_keep_their_classes_and_the_deadline_fails_the_unfinished(shard_settings, tmp_path):
    events = tmp_path / "events.jsonl"
    pools = fake_pools(events, {"hang": 60.0})
    settings = shard_settings.model_copy(update={"shard_timeout_s": 6.0})
    finished: list[dict] = []
    items = [("bad", "de"), ("ok", "de"), ("ok", "fr"), ("ok", "xx"), ("ok", "zz"), ("hang", "de")]
    try:
        unknown = process_shard(settings, pools, "run-0", shard(("ok", "de"), model="v9"))
        t = time.monotonic()
        process_shard(settings, pools, "run-1", shard(*items), on_item=finished.append)
        seconds = time.monotonic() - t
    finally:
        pools.tracking.kill()
        pools.dubbing.kill()
    assert 6.0 <= seconds < 15.0
    rows = {(r["video_id"], r["language"]): r
            for r in DubManifest(DeltaTables(Storage(settings))).rows().to_pylist() if r["run_id"] == "run-1"}
    assert list(rows) == items and len(finished) == len(items)          # every row in order, each one reported
    got = {k: (r["status"], r["error_class"]) for k, r in rows.items()}
    assert got == {("bad", "de"): ("failed", "no_face"), ("ok", "de"): ("succeeded", None),
                   ("ok", "fr"): ("succeeded", None), ("ok", "xx"): ("failed", "internal"),
                   ("ok", "zz"): ("failed", "internal"), ("hang", "de"): ("failed", "internal")}
    assert dict(rows["bad", "de"]["stage_seconds"]) == {"track_s": 0.1}
    assert rows["ok", "xx"]["error"].startswith("dubbing worker failed on this item (1 tries)")   # the dead actor
    assert rows["ok", "zz"]["error"] == "not finished within the shard timeout (6 s)"
    assert rows["hang", "de"]["error"] == "tracking failed: the shard ran past its timeout"
    assert (unknown.failed, unknown.failures) == (1, {"model_error": 1})   # unknown model, after its tracking
