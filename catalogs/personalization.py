"""Which speakers a nightly run should give a model of their own before dubbing them.

A per-speaker model is the largest quality lever we measured on unseen speakers, and a catalog
usually holds enough of a speaker's footage to make one. A speaker is due when their catalog
footage reaches the configured minimum and no registered model of theirs was fine-tuned from the
current base (a new base makes every speaker model stale).
"""

from __future__ import annotations

from dataclasses import dataclass

from catalogs.delta import DeltaTables
from catalogs.registry import ModelRegistry
from catalogs.schemas import REGISTRY_TABLE, VIDEOS_TABLE


@dataclass(frozen=True)
class SpeakerDue:
    speaker_id: str
    video_ids: list[str]
    uris: list[str]
    footage_s: float


def speakers_due(tables: DeltaTables, base_version: str, min_footage_s: float) -> list[SpeakerDue]:
    """Speakers with at least ``min_footage_s`` of catalog footage and no model from ``base_version``,
    in speaker order; none when ``min_footage_s`` is 0 (personalization off)."""
    if min_footage_s <= 0 or not tables.exists(VIDEOS_TABLE):
        return []
    current = {r["speaker_id"] for r in ModelRegistry(tables).models()
               if r["speaker_id"] is not None and r["parent"] == base_version} if tables.exists(REGISTRY_TABLE) else set()
    videos = tables.read(VIDEOS_TABLE, columns=["video_id", "uri", "speaker_id", "duration_s"]).to_pylist()
    by_speaker: dict[str, list[dict]] = {}
    for v in videos:
        if v["speaker_id"]:
            by_speaker.setdefault(v["speaker_id"], []).append(v)
    due = []
    for speaker in sorted(by_speaker):
        rows = sorted(by_speaker[speaker], key=lambda r: r["video_id"])
        footage = float(sum(r["duration_s"] or 0.0 for r in rows))
        if footage >= min_footage_s and speaker not in current:
            due.append(SpeakerDue(speaker, [r["video_id"] for r in rows], [r["uri"] for r in rows], footage))
    return due


__all__ = ["SpeakerDue", "speakers_due"]
