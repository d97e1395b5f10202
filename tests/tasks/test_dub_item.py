"""One item's work as a manifest row (tasks/dub_item.py): what an actor records for each outcome."""

from __future__ import annotations

from pathlib import Path

from catalogs.errors import ErrorClass
from catalogs.settings import Settings
from catalogs.storage import Storage
from tasks.dub_item import track_item


def test_tracking_onto_a_full_disk_is_a_storage_error(tiny_disk: Path, shared_data: Path):
    """The storage root's disk is full when the track artifact is published: the item's outcome is
    storage_error (retried next night), not internal (a bug)."""
    clip = shared_data / "videos" / "speaker_map_5s.mp4"
    settings = Settings(root=str(tiny_disk / "root"), allowed_roots=[str(shared_data)])
    storage = Storage(settings)
    outcome = track_item(storage, settings, str(clip), storage.sha256(str(clip)))
    assert outcome.error_class == str(ErrorClass.STORAGE_ERROR), outcome
    assert "No space left" in outcome.error
