"""The track artifact: a video's tracking result as one Parquet file, cached by content.

``ROOT/artifacts/tracks/{video_sha256}/{tracker_version}.parquet``: one row per frame (landmarks,
pose, crop, flags) and the per-video facts (template, tracks, summary) in the file's metadata.
Keyed by the video's hash and the tracker version, so a re-tracked video or a changed tracker gets
a new file and an unchanged one is reused.
"""

from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from catalogs.storage import Storage
from tasks.landmarks import N_LANDMARKS
from tasks.track import FLAGS, TrackResult, TrackSummary

META_KEY = b"resync.track"
FACES = pa.list_(pa.struct([("track_id", pa.int32()), ("x0", pa.float32()), ("y0", pa.float32()),
                            ("x1", pa.float32()), ("y1", pa.float32())]))  # every tracked face, not only the speaker


def artifact_uri(storage: Storage, video_sha256: str, version: str) -> str:
    return storage.uri("artifacts", "tracks", video_sha256, f"{version}.parquet")


def to_table(r: TrackResult, video_sha256: str | None = None) -> pa.Table:
    n = r.n_frames

    def mesh(a: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1).astype(np.float32)), N_LANDMARKS * 3)

    def fixed(a: np.ndarray, k: int) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1).astype(np.float64)), k)

    cols = {
        "frame": pa.array(np.arange(n, dtype=np.int32)),
        "timestamp": pa.array(r.timestamps),
        "raw": mesh(r.raw), "smoothed": mesh(r.smoothed), "displacements": mesh(r.displacements),
        "scale": pa.array(r.scale), "rotation": fixed(r.rotation, 9), "translation": fixed(r.translation, 3),
        "yaw": pa.array(r.euler[:, 0].astype(np.float32)), "pitch": pa.array(r.euler[:, 1].astype(np.float32)),
        "roll": pa.array(r.euler[:, 2].astype(np.float32)),
        "crop": fixed(r.crop, 6), "face_px": pa.array(r.face_px.astype(np.float32)),
        "residual": pa.array(r.residual.astype(np.float32)),
        **{f: pa.array(r.flags[f]) for f in FLAGS},
        "faces": pa.array([[{"track_id": f[0], "x0": f[1], "y0": f[2], "x1": f[3], "y1": f[4]} for f in fr]
                           for fr in (r.faces or [[] for _ in range(n)])], FACES),
    }
    meta = {
        "version": r.version, "video_uri": r.video_uri, "video_sha256": video_sha256, "fps": r.fps,
        "width": r.width, "height": r.height, "speaker_track": r.speaker_track,
        "tracks": [t.__dict__ for t in r.tracks], "shots": [list(x) for x in r.shots],
        "templates": r.templates.reshape(-1).tolist(),
        "cut_frames": r.cut_frames, "is_vfr": r.is_vfr, "summary": r.summary(),
    }
    table = pa.table(cols)
    return table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})


def from_table(table: pa.Table) -> TrackResult:
    meta = json.loads(table.schema.metadata[META_KEY])
    n = table.num_rows

    def mesh(name: str) -> np.ndarray:
        return table[name].combine_chunks().values.to_numpy(zero_copy_only=False).reshape(n, N_LANDMARKS, 3)

    def fixed(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return table[name].combine_chunks().values.to_numpy(zero_copy_only=False).reshape(n, *shape)

    col = lambda name: table[name].to_numpy()  # noqa: E731
    return TrackResult(
        video_uri=meta["video_uri"], fps=meta["fps"], timestamps=col("timestamp"), width=meta["width"], height=meta["height"],
        speaker_track=meta["speaker_track"], tracks=[TrackSummary(**t) for t in meta["tracks"]],
        shots=[tuple(x) for x in meta["shots"]], raw=mesh("raw"), smoothed=mesh("smoothed"),
        templates=np.asarray(meta["templates"], np.float32).reshape(-1, N_LANDMARKS, 3),
        scale=col("scale"), rotation=fixed("rotation", (3, 3)), translation=fixed("translation", (3,)),
        euler=np.stack([col("yaw"), col("pitch"), col("roll")], 1).astype(np.float64),
        displacements=mesh("displacements"), crop=fixed("crop", (2, 3)), face_px=col("face_px").astype(np.float64),
        residual=col("residual").astype(np.float64), flags={f: col(f).astype(bool) for f in FLAGS},
        cut_frames=meta["cut_frames"], is_vfr=meta["is_vfr"], version=meta["version"],
        faces=[[(f["track_id"], f["x0"], f["y0"], f["x1"], f["y1"]) for f in fr] for fr in table["faces"].to_pylist()],
    )


def save(storage: Storage, r: TrackResult, uri: str, video_sha256: str | None = None) -> None:
    """Write the artifact atomically (temporary file, then published whole)."""
    fd, tmp = tempfile.mkstemp(suffix=".parquet", prefix="resync-track-")
    os.close(fd)
    try:
        pq.write_table(to_table(r, video_sha256), tmp, compression="zstd")
        storage.put_file(tmp, uri)
    finally:
        os.unlink(tmp)


def load(storage: Storage, uri: str) -> TrackResult:
    return from_table(pq.read_table(io.BytesIO(storage.read_bytes(uri))))
