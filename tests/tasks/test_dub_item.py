"""One item's work as a manifest row (tasks/dub_item.py): what an actor records for each outcome."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalogs.delta import DeltaTables
from catalogs.errors import ErrorClass
from catalogs.manifest import DubManifest
from catalogs.plan import PlannedItem
from catalogs.settings import Settings
from catalogs.storage import Storage
from tasks.decode import chunk_frames
from tasks.dub_item import ItemJob, ModelCache, dub_item, output_uri, row, track_item, warm_model
from tasks.qa import review_reasons
from tasks.qa_report import latest_attempts, qa_table


def test_tracking_onto_a_full_disk_is_a_storage_error(tiny_disk: Path, shared_data: Path):
    """The storage root's disk is full when the track artifact is published: the item's outcome is
    storage_error (retried next night), not internal (a bug)."""
    clip = shared_data / "videos" / "speaker_map_5s.mp4"
    settings = Settings(root=str(tiny_disk / "root"), allowed_roots=[str(shared_data)])
    storage = Storage(settings)
    outcome = track_item(storage, settings, str(clip), storage.sha256(str(clip)))
    assert outcome.error_class == str(ErrorClass.STORAGE_ERROR), outcome
    assert "No space left" in outcome.error


def map_job(tmp_path: Path, shared_data: Path, input_key: str, attempt: int, run: int,
            render_config: str) -> tuple[Settings, Storage, ItemJob]:
    """speaker_map_5s dubbed into French as one job of run ``nightly-{run}``, in a fresh root."""
    clip = shared_data / "videos" / "speaker_map_5s.mp4"
    settings = Settings(root=str(tmp_path / "root"), allowed_roots=[str(shared_data)])
    storage = Storage(settings)
    item = PlannedItem("map", "fr", input_key, attempt, "man", str(clip),
                       str(shared_data / "audio" / "french1.wav"), "base-v", None, storage.sha256(str(clip)))
    job = ItemJob(item, f"nightly-{run}", f"shard-{run}", "bundled://base-cpu", output_uri(storage, item), render_config)
    return settings, storage, job


@pytest.fixture
def reused(tmp_path: Path, shared_data: Path):
    """An item whose output an earlier attempt published before its shard could commit (a real clip
    stands for that output): (settings, storage, job, models)."""
    settings, storage, job = map_job(tmp_path, shared_data, "0123456789abcdef0123456789abcdef", 2, 2, "cpu")
    storage.put_file(Path(job.item.video_uri), job.output_uri)
    return settings, storage, job, ModelCache(storage, settings)


def test_a_reused_output_keeps_its_seconds_and_is_sent_to_review_for_its_missing_qa(reused):
    """No row of the attempt that made the output landed, so its QA was never recorded: the reused
    row counts the output's video seconds (the run's throughput) and says QA is missing, which the
    QA report sends to review, instead of passing as a success with no metrics."""
    settings, storage, job, models = reused
    r = dub_item(storage, settings, job, models)
    assert r["status"] == "succeeded" and r["output_sha256"] == storage.sha256(job.output_uri)
    assert r["qa"]["video_seconds"] == pytest.approx(5.0, abs=0.1) and r["qa"]["frames"] == 125
    assert r["qa"]["qa_missing"] == 1.0
    manifest = DubManifest(DeltaTables(storage))
    manifest.commit_shard(job.run_id, job.shard_id, [r])
    table = qa_table(settings, latest_attempts(manifest, job.run_id))
    assert table.needs_review.tolist() == [True] and "qa_missing" in table.review_reasons[0]
    assert table.video_seconds[0] == pytest.approx(5.0, abs=0.1)


def test_a_reused_output_carries_the_qa_of_its_committed_success(reused):
    """Another run committed this input_key's success meanwhile: the reused row carries that row's
    QA metrics (the same output, by its hash), so it is reviewed and counted as that one was."""
    settings, storage, job, models = reused
    measured = {"frames": 125.0, "video_seconds": 5.0, "face_coverage": 1.0, "av_offset_frames": 6.0, "av_confidence": 0.5}
    other = ItemJob(job.item, "nightly-1", "shard-1", job.model_uri, job.output_uri, job.render_config)
    DubManifest(DeltaTables(storage)).commit_shard("nightly-1", "shard-1", [
        row(other, "succeeded", output_sha256=storage.sha256(job.output_uri), stage_seconds={"total_s": 80.0}, qa=measured)])
    r = dub_item(storage, settings, job, models)
    assert r["status"] == "succeeded" and r["qa"] == measured
    assert set(r["stage_seconds"]) == {"reused_output_s"}        # this attempt's own time only
    assert "av_offset_frames" in " ".join(review_reasons(settings, r["qa"]))


def test_an_item_is_not_dubbed_with_a_model_of_another_render_config(tmp_path: Path, shared_data: Path):
    """A job of the ``full`` render config handed the bundled ``cpu`` base fails as model_error,
    instead of a ``cpu`` dub recorded as ``full``."""
    settings, storage, job = map_job(tmp_path, shared_data, "fedcba9876543210fedcba9876543210", 1, 1, "full")
    r = dub_item(storage, settings, job, ModelCache(storage, settings))
    assert (r["status"], r["error_class"], r["render_config"]) == ("failed", "model_error", "full")
    assert "'cpu'" in r["error"] and "'full'" in r["error"]
    assert not storage.exists(job.output_uri)


def test_a_worker_warms_the_generator_for_the_batches_of_the_videos_to_come(tmp_path: Path):
    """The generator's batch is a dub's chunk length, fewer frames for large videos: warming
    compiles one per distinct chunk length of the shard's frame sizes, and each only once."""
    settings = Settings(root=str(tmp_path / "root"))
    models = ModelCache(Storage(settings), settings)
    uri = "bundled://base-cpu"
    hd = chunk_frames(1920, 1080, settings.decode_chunk, settings.decode_chunk_mb)
    assert hd < settings.decode_chunk == chunk_frames(256, 256, settings.decode_chunk, settings.decode_chunk_mb)
    assert warm_model(settings, models, uri, [(1920, 1080), (1080, 1920), (256, 256)]) > 0
    assert models.warmed == {(uri, hd), (uri, settings.decode_chunk)}
    assert warm_model(settings, models, uri, [(256, 256), (1920, 1080)]) == 0.0       # nothing new to compile
    sd = chunk_frames(1280, 720, settings.decode_chunk, settings.decode_chunk_mb)
    assert warm_model(settings, models, uri, [(1280, 720)]) > 0
    assert models.warmed == {(uri, hd), (uri, sd), (uri, settings.decode_chunk)}
