"""Arrow schemas of every Delta table resync writes (DESIGN section 4), in one place.

Columns are only ever added (Delta schema evolution keeps older versions readable); renaming or
retyping a column is a migration, not an edit here.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
METRICS = pa.map_(pa.string(), pa.float64())

# Table names, relative to the storage root.
VIDEOS_TABLE = "catalog/videos"
REQUESTS_TABLE = "catalog/requests"
REJECTS_TABLE = "catalog/rejects"
DUBS_TABLE = "manifests/dubs"
RUNS_TABLE = "manifests/runs"
REGISTRY_TABLE = "models/registry"

VIDEOS = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("speaker_id", pa.string()),
    pa.field("title", pa.string()),
    pa.field("duration_s", pa.float64()),
    pa.field("fps", pa.float64()),
    pa.field("frame_count", pa.int64()),       # from the container; exact count comes from decoding
    pa.field("width", pa.int32()),              # as displayed, i.e. after rotation
    pa.field("height", pa.int32()),
    pa.field("rotation", pa.int32()),           # degrees clockwise to display upright
    pa.field("has_audio", pa.bool_()),
    pa.field("video_codec", pa.string()),
    pa.field("audio_codec", pa.string()),
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("size_bytes", pa.int64()),
    pa.field("source_mtime", pa.float64()),     # lets re-ingest skip probing unchanged files
    pa.field("ingested_at", TS),
])

REQUESTS = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("language", pa.string(), nullable=False),   # BCP-47
    pa.field("audio_uri", pa.string(), nullable=False),
    pa.field("audio_sha256", pa.string(), nullable=False),
    pa.field("audio_duration_s", pa.float64()),
    pa.field("audio_sample_rate", pa.int32()),
    pa.field("audio_channels", pa.int32()),
    pa.field("script", pa.string()),
    pa.field("size_bytes", pa.int64()),
    pa.field("source_mtime", pa.float64()),
    pa.field("ingested_at", TS),
])

REJECTS = pa.schema([
    pa.field("listing", pa.string(), nullable=False),    # "videos" | "requests"
    pa.field("row_key", pa.string(), nullable=False),    # sha256 of the row as given
    pa.field("row_number", pa.int64()),                  # 1-based, in the listing file
    pa.field("item", pa.string()),                       # video_id or video_id/language
    pa.field("row", pa.string()),                        # the row as JSON
    pa.field("error_class", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("source", pa.string()),                     # the listing file
    pa.field("seen_at", TS),
])

DUBS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("shard_id", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("language", pa.string(), nullable=False),
    pa.field("attempt", pa.int32(), nullable=False),
    pa.field("input_key", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),     # succeeded | failed | skipped
    pa.field("error_class", pa.string()),
    pa.field("error", pa.string()),
    pa.field("output_uri", pa.string()),
    pa.field("output_sha256", pa.string()),
    pa.field("base_model_version", pa.string()),
    pa.field("speaker_model_version", pa.string()),
    pa.field("render_config", pa.string()),
    pa.field("stage_seconds", METRICS),
    pa.field("qa", METRICS),
    pa.field("created_at", TS, nullable=False),
])

RUNS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),       # nightly | finetune | reprocess | qa | train
    pa.field("status", pa.string(), nullable=False),     # running | succeeded | failed
    pa.field("parameters", pa.string()),                 # JSON
    pa.field("code_version", pa.string()),
    pa.field("planned", pa.int64()),
    pa.field("succeeded", pa.int64()),
    pa.field("failed", pa.int64()),
    pa.field("skipped", pa.int64()),
    pa.field("started_at", TS, nullable=False),
    pa.field("ended_at", TS),
])

REGISTRY = pa.schema([
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),       # syncformer | generator | bundle
    pa.field("speaker_id", pa.string()),                 # null = base model
    pa.field("version", pa.string(), nullable=False),    # content hash of the weights
    pa.field("uri", pa.string(), nullable=False),
    pa.field("parent", pa.string()),                     # version it was fine-tuned from
    pa.field("training_data", pa.list_(pa.string())),    # video ids
    pa.field("metrics", METRICS),
    pa.field("created_at", TS, nullable=False),
])

TABLES: dict[str, pa.Schema] = {
    VIDEOS_TABLE: VIDEOS,
    REQUESTS_TABLE: REQUESTS,
    REJECTS_TABLE: REJECTS,
    DUBS_TABLE: DUBS,
    RUNS_TABLE: RUNS,
    REGISTRY_TABLE: REGISTRY,
}


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
