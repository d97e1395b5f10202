"""Shard planning: which (video, language) items need a dub, grouped into deterministic shards.

Planning reads only tables (catalog, requests, registry, the success column of the manifest),
never media, so its cost grows with the catalog, not with the bytes behind it. An item is pending
when its ``input_key`` has no success in the manifest; the key changes when the video, the audio,
the model versions or the render configuration change, and only then is the item dubbed again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from catalogs.delta import DeltaTables
from catalogs.errors import ErrorClass
from catalogs.registry import ModelRegistry
from catalogs.schemas import DUBS_TABLE, REQUESTS_TABLE, VIDEOS_TABLE


def input_key(video_sha256: str, audio_sha256: str, model_version: str, render_config: str) -> str:
    """Identity of one dub's inputs (DESIGN section 4)."""
    return hashlib.sha256("|".join((video_sha256, audio_sha256, model_version, render_config)).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class PlannedItem:
    video_id: str
    language: str
    input_key: str
    attempt: int              # 1 + earlier attempts at this input_key
    speaker_id: str | None
    video_uri: str
    audio_uri: str
    base_model_version: str
    speaker_model_version: str | None
    video_sha256: str = ""
    script: str | None = None     # what the translated audio says, when the request gives it (QA: WER)

    @property
    def model_version(self) -> str:
        """The model that dubs this item: the speaker's own when one is registered, else the base."""
        return self.speaker_model_version or self.base_model_version


@dataclass(frozen=True)
class Shard:
    shard_id: str
    items: tuple[PlannedItem, ...]


# Failures worth retrying on the next nightly run without anyone asking: the input may be fine.
TRANSIENT_ERRORS = frozenset({ErrorClass.STORAGE_ERROR, ErrorClass.INTERNAL, ErrorClass.MODEL_ERROR})


def plan_items(tables: DeltaTables, render_config: str, languages: list[str] | None = None,
               retry_failed: bool = False, only: set[tuple[str, str]] | None = None,
               max_attempts: int = 3, base_version: str | None = None) -> list[PlannedItem]:
    """Pending items, sorted by (video_id, language). Columnar reads, then one pass in Python.

    An ``input_key`` that already failed is planned again only when its failures were transient
    (storage, model, internal) and fewer than ``max_attempts``, or when ``retry_failed`` asks for it
    (reprocessing); a corrupt video is not re-decoded every night. ``only`` restricts the plan to
    given (video_id, language) pairs. ``base_version`` pins the base model (the flows pass the one
    they dub with: ``RESYNC_MODEL_DIR``'s, or the newest of the render config); default the newest.
    """
    videos = tables.read(VIDEOS_TABLE, columns=["video_id", "uri", "speaker_id", "sha256"])
    requests = tables.read(REQUESTS_TABLE, columns=["video_id", "language", "audio_uri", "audio_sha256", "script"])
    if languages:
        requests = requests.filter(pc.is_in(requests["language"], pa.array(list(languages), pa.string())))
    if requests.num_rows == 0 or videos.num_rows == 0:
        return []
    joined = requests.join(videos, "video_id", join_type="inner").sort_by([("video_id", "ascending"), ("language", "ascending")])
    cols = {c: joined[c].to_pylist() for c in ("video_id", "language", "audio_uri", "audio_sha256", "uri", "speaker_id", "sha256",
                                               "script")}

    base, speakers = ModelRegistry(tables).versions_by_speaker()
    base = base_version or base
    dubs = tables.read(DUBS_TABLE, columns=["input_key", "status", "error_class"])
    done = set(pc.unique(dubs.filter(pc.equal(dubs["status"], "succeeded"))["input_key"]).to_pylist())
    counts = pc.value_counts(dubs["input_key"])
    tried = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    failed = dubs.filter(pc.equal(dubs["status"], "failed"))
    permanent = set(failed.filter(pc.invert(pc.is_in(failed["error_class"], pa.array(sorted(TRANSIENT_ERRORS)))))["input_key"].to_pylist())

    items = []
    for vid, lang, audio_uri, audio_sha, uri, speaker, video_sha, script in zip(*cols.values()):
        speaker_version = speakers.get(speaker)
        key = input_key(video_sha, audio_sha, f"{base}+{speaker_version or '-'}", render_config)
        if key in done or (only is not None and (vid, lang) not in only):
            continue
        if not retry_failed and (key in permanent or tried.get(key, 0) >= max_attempts):
            continue
        items.append(PlannedItem(vid, lang, key, tried.get(key, 0) + 1, speaker, uri, audio_uri, base, speaker_version,
                                 video_sha, script))
    return items


def make_shards(items: list[PlannedItem], shard_size: int) -> list[Shard]:
    """Consecutive chunks of the sorted items, so a video's languages share a shard (and a track).

    A shard id is the hash of its members' input keys: the same pending set gives the same shards.
    """
    shards = []
    for i in range(0, len(items), shard_size):
        chunk = tuple(items[i:i + shard_size])
        sid = hashlib.sha256("\n".join(it.input_key for it in chunk).encode()).hexdigest()[:16]
        shards.append(Shard(f"shard-{sid}", chunk))
    return shards
