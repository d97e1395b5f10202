"""Shard planning: which (video, language) items need a dub, grouped into deterministic shards.

Planning reads only tables (catalog, requests, registry, the success column of the manifest),
never media, so its cost grows with the catalog, not with the bytes behind it. An item is pending
when its ``input_key`` has no success in the manifest; the key changes when the video, the audio,
the model versions or the render configuration change, and only then is the item dubbed again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from catalogs.delta import DeltaTables
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


@dataclass(frozen=True)
class Shard:
    shard_id: str
    items: tuple[PlannedItem, ...]


def plan_items(tables: DeltaTables, render_config: str, languages: list[str] | None = None) -> list[PlannedItem]:
    """Pending items, sorted by (video_id, language)."""
    videos = tables.read(VIDEOS_TABLE, columns=["video_id", "uri", "speaker_id", "sha256"]).to_pandas()
    requests = tables.read(REQUESTS_TABLE, columns=["video_id", "language", "audio_uri", "audio_sha256"])
    if languages:
        requests = requests.filter(pc.is_in(requests["language"], pa.array(list(languages), pa.string())))
    requests = requests.to_pandas()
    if requests.empty or videos.empty:
        return []
    df = requests.merge(videos, on="video_id", how="inner")
    base, speakers = ModelRegistry(tables).versions_by_speaker()
    df["base_model_version"] = base
    speaker_versions = [speakers.get(sp) for sp in df["speaker_id"]]
    df["speaker_model_version"] = speaker_versions
    model_version = [f"{base}+{sv or '-'}" for sv in speaker_versions]
    df["input_key"] = [input_key(v, a, m, render_config)
                       for v, a, m in zip(df["sha256"], df["audio_sha256"], model_version)]

    dubs = tables.read(DUBS_TABLE, columns=["input_key", "status"])
    done = pc.unique(dubs.filter(pc.equal(dubs["status"], "succeeded"))["input_key"])
    df = df[~df["input_key"].isin(done.to_pylist())]
    tried = dubs["input_key"].to_pandas().value_counts()
    df["attempt"] = df["input_key"].map(tried).fillna(0).astype(int) + 1
    df = df.sort_values(["video_id", "language"], kind="stable")
    return [PlannedItem(r.video_id, r.language, r.input_key, int(r.attempt),
                        None if pd.isna(r.speaker_id) else r.speaker_id, r.uri, r.audio_uri,
                        r.base_model_version, None if pd.isna(r.speaker_model_version) else r.speaker_model_version)
            for r in df.itertuples(index=False)]


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
