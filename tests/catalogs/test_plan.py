"""Shard planning: pending items only, deterministic shards, no media read, model changes re-plan."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from catalogs.delta import DeltaTables
from catalogs.ingest import CatalogIngest
from catalogs.manifest import DubManifest
from catalogs.plan import make_shards, plan_items
from catalogs.registry import ModelRecord, ModelRegistry
from catalogs.settings import Settings
from catalogs.storage import Storage
from tests.catalogs.test_ingest import write_csv


@pytest.fixture
def catalog(tmp_path: Path, shared_data: Path) -> DeltaTables:
    """Three videos x two languages, from copies of real media that the test may delete."""
    media = tmp_path / "media"
    media.mkdir()
    for name in ("speaker_map_5s.mp4", "speaker_glasses_5s.mp4", "address_man_10s.mp4"):
        shutil.copy(shared_data / "videos" / name, media / name)
    for name in ("french1.wav", "german1.wav"):
        shutil.copy(shared_data / "audio" / name, media / name)
    settings = Settings(root=str(tmp_path / "root"), allowed_roots=[str(media)])
    videos = write_csv(tmp_path / "v.csv", ["video_id", "uri", "speaker_id"], [
        ["map", str(media / "speaker_map_5s.mp4"), "man"],
        ["glasses", str(media / "speaker_glasses_5s.mp4"), "woman"],
        ["address", str(media / "address_man_10s.mp4"), "man"],
    ])
    requests = write_csv(tmp_path / "r.csv", ["video_id", "language", "audio_uri"],
                         [[v, lang, str(media / f"{a}.wav")] for v in ("map", "glasses", "address")
                          for lang, a in (("fr", "french1"), ("de", "german1"))])
    report = CatalogIngest(Storage(settings)).run(videos, requests)
    assert not report.rejects
    shutil.rmtree(media)  # planning must not need the media
    return DeltaTables(Storage(settings))


def test_plan_is_deterministic_and_skips_successes(catalog: DeltaTables):
    items = plan_items(catalog, "cpu")
    assert [(i.video_id, i.language) for i in items] == [
        ("address", "de"), ("address", "fr"), ("glasses", "de"), ("glasses", "fr"), ("map", "de"), ("map", "fr")]
    assert all(i.attempt == 1 and i.base_model_version == "untrained" for i in items)
    shards = make_shards(items, 4)
    assert [len(s.items) for s in shards] == [4, 2]
    assert [s.shard_id for s in make_shards(plan_items(catalog, "cpu"), 4)] == [s.shard_id for s in shards]
    assert [i.language for i in plan_items(catalog, "cpu", ["fr"])] == ["fr"] * 3

    m = DubManifest(catalog)
    # address/fr failed for a reason in the input (not retried nightly), glasses/fr for a storage hiccup
    failure = {"address": ("decode_error", "truncated"), "glasses": ("storage_error", "timeout")}
    rows = [dict(run_id="r1", shard_id=shards[0].shard_id, video_id=i.video_id, language=i.language, attempt=1,
                 input_key=i.input_key, status="succeeded" if i.language == "de" else "failed",
                 error_class=None if i.language == "de" else failure[i.video_id][0],
                 error=None if i.language == "de" else failure[i.video_id][1]) for i in shards[0].items]
    m.commit_shard("r1", shards[0].shard_id, rows)
    left = plan_items(catalog, "cpu")
    assert [(i.video_id, i.language, i.attempt) for i in left] == [
        ("glasses", "fr", 2), ("map", "de", 1), ("map", "fr", 1)]
    # reprocessing asks for failures explicitly, and may restrict the plan to some items
    again = plan_items(catalog, "cpu", retry_failed=True, only={("address", "fr"), ("glasses", "fr")})
    assert [(i.video_id, i.language, i.attempt) for i in again] == [("address", "fr", 2), ("glasses", "fr", 2)]
    assert all(len(i.video_sha256) == 64 for i in again)
    # a transient failure stops being retried nightly after max_attempts
    assert [(i.video_id, i.language) for i in plan_items(catalog, "cpu", max_attempts=1)] == [("map", "de"), ("map", "fr")]
    # another render configuration is another input: everything is pending again
    assert len(plan_items(catalog, "full")) == 6


def test_a_new_speaker_model_replans_that_speaker(catalog: DeltaTables):
    items = plan_items(catalog, "cpu")
    m = DubManifest(catalog)
    m.commit_shard("r1", "s", [dict(run_id="r1", shard_id="s", video_id=i.video_id, language=i.language, attempt=1,
                                    input_key=i.input_key, status="succeeded") for i in items])
    assert plan_items(catalog, "cpu") == []
    ModelRegistry(catalog).register(ModelRecord("spk-man", "bundle", "v-man-1", "/models/man", speaker_id="man"))
    again = plan_items(catalog, "cpu")
    assert sorted({i.video_id for i in again}) == ["address", "map"]
    assert all(i.speaker_model_version == "v-man-1" for i in again)


def test_a_pinned_base_plans_with_that_base_not_the_newest(catalog: DeltaTables):
    """The flows pin the base they dub with (RESYNC_MODEL_DIR, or the newest of the render config):
    items are keyed and recorded with it, whatever base was registered last."""
    registry = ModelRegistry(catalog)
    registry.register(ModelRecord("base-cpu-a", "bundle", "v-a", "/models/a"))
    registry.register(ModelRecord("base-full-b", "bundle", "v-b", "/models/b"))
    newest = plan_items(catalog, "cpu")
    pinned = plan_items(catalog, "cpu", base_version="v-a")
    assert {i.base_model_version for i in newest} == {"v-b"} and {i.base_model_version for i in pinned} == {"v-a"}
    assert not {i.input_key for i in newest} & {i.input_key for i in pinned}


def test_speakers_due_a_model_of_their_own(catalog: DeltaTables):
    """man has 15 s of footage (two videos), woman 5 s: with a 10-s minimum only man is due, until he
    has a model from the current base; a new base makes him due again; 0 turns it off."""
    from catalogs.personalization import speakers_due

    due = speakers_due(catalog, "base-1", 10.0)
    assert [(d.speaker_id, d.video_ids) for d in due] == [("man", ["address", "map"])]
    assert due[0].footage_s == pytest.approx(15.0, abs=0.3) and len(due[0].uris) == 2
    assert [d.speaker_id for d in speakers_due(catalog, "base-1", 4.0)] == ["man", "woman"]
    assert speakers_due(catalog, "base-1", 0) == []
    ModelRegistry(catalog).register(ModelRecord("spk-man", "bundle", "v-man-1", "/models/man", speaker_id="man",
                                                parent="base-1"))
    assert speakers_due(catalog, "base-1", 10.0) == []
    assert [d.speaker_id for d in speakers_due(catalog, "base-2", 10.0)] == ["man"]
