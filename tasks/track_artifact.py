"""The track artifact: a video's tracking result as one Parquet file, cached by content.

``ROOT/artifacts/tracks/{video_sha256}/{tracker_version}.parquet``: one row per frame (landmarks,
pose, crop, flags) and the per-video facts (template, tracks, summary) in the file's metadata.
Keyed by the video's hash and the tracker version, so a re-tracked video or a changed tracker gets
a new file and an unchanged one is reused.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from catalogs.storage import Storage
from tasks.decode import local_path
from tasks.frame_store import BLOCK_ROWS, FrameStore
from tasks.landmarks import N_LANDMARKS
from tasks.track import FLAGS, TrackResult, TrackSummary

META_KEY = b"resync.track"
FACES = pa.list_(pa.struct([("track_id", pa.int32()), ("x0", pa.float32()), ("y0", pa.float32()),
                            ("x1", pa.float32()), ("y1", pa.float32())]))  # every tracked face, not only the speaker


def artifact_uri(storage: Storage, video_sha256: str, version: str) -> str:
    return storage.uri("artifacts", "tracks", video_sha256, f"{version}.parquet")


MESHES = ("raw", "smoothed", "displacements")


def _mesh_array(a: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1).astype(np.float32)), N_LANDMARKS * 3)


def _fixed_array(a: np.ndarray, k: int) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1).astype(np.float64)), k)


def _rows_table(r: TrackResult, a: int, b: int) -> pa.Table:
    """Frames [a, b) as table rows (the landmark arrays read for those frames only)."""
    faces = r.faces[a:b] if r.faces else [[] for _ in range(b - a)]
    cols = {
        "frame": pa.array(np.arange(a, b, dtype=np.int32)),
        "timestamp": pa.array(r.timestamps[a:b]),
        **{m: _mesh_array(np.asarray(getattr(r, m)[a:b])) for m in MESHES},
        "scale": pa.array(r.scale[a:b]), "rotation": _fixed_array(r.rotation[a:b], 9),
        "translation": _fixed_array(r.translation[a:b], 3),
        "yaw": pa.array(r.euler[a:b, 0].astype(np.float32)), "pitch": pa.array(r.euler[a:b, 1].astype(np.float32)),
        "roll": pa.array(r.euler[a:b, 2].astype(np.float32)),
        "crop": _fixed_array(r.crop[a:b], 6), "face_px": pa.array(r.face_px[a:b].astype(np.float32)),
        "residual": pa.array(r.residual[a:b].astype(np.float32)),
        **{f: pa.array(r.flags[f][a:b]) for f in FLAGS},
        "faces": pa.array([[{"track_id": f[0], "x0": f[1], "y0": f[2], "x1": f[3], "y1": f[4]} for f in fr]
                           for fr in faces], FACES),
    }
    return pa.table(cols)


def _metadata(r: TrackResult, video_sha256: str | None) -> dict[bytes, bytes]:
    meta = {
        "version": r.version, "video_uri": r.video_uri, "video_sha256": video_sha256, "fps": r.fps,
        "width": r.width, "height": r.height, "speaker_track": r.speaker_track,
        "tracks": [t.__dict__ for t in r.tracks], "shots": [list(x) for x in r.shots],
        "templates": r.templates.reshape(-1).tolist(),
        "cut_frames": r.cut_frames, "is_vfr": r.is_vfr, "summary": r.summary(),
    }
    return {META_KEY: json.dumps(meta).encode()}


def _columns(batches, n: int, meta: dict) -> TrackResult:
    """A TrackResult from record batches in frame order: landmark columns go to disk
    (``FrameStore``) a batch at a time, the per-frame scalars are gathered in memory."""
    meshes = {m: FrameStore(n, (N_LANDMARKS, 3), np.float32) for m in MESHES}
    scalars: dict[str, list[np.ndarray]] = {}
    faces: list[list[tuple]] = []
    at = 0
    for batch in batches:
        k = batch.num_rows
        for name in batch.schema.names:
            column = batch.column(name)
            if name in MESHES:
                meshes[name].write(at, column.values.to_numpy(zero_copy_only=False).reshape(k, N_LANDMARKS, 3))
            elif name == "faces":
                faces.extend([(f["track_id"], f["x0"], f["y0"], f["x1"], f["y1"]) for f in fr] for fr in column.to_pylist())
            elif pa.types.is_fixed_size_list(column.type):
                scalars.setdefault(name, []).append(column.values.to_numpy(zero_copy_only=False).reshape(k, -1))
            else:
                scalars.setdefault(name, []).append(column.to_numpy(zero_copy_only=False))
        at += k
    col = {name: np.concatenate(parts) for name, parts in scalars.items()}
    return TrackResult(
        video_uri=meta["video_uri"], fps=meta["fps"], timestamps=col["timestamp"], width=meta["width"], height=meta["height"],
        speaker_track=meta["speaker_track"], tracks=[TrackSummary(**t) for t in meta["tracks"]],
        shots=[tuple(x) for x in meta["shots"]], raw=meshes["raw"], smoothed=meshes["smoothed"],
        templates=np.asarray(meta["templates"], np.float32).reshape(-1, N_LANDMARKS, 3),
        scale=col["scale"], rotation=col["rotation"].reshape(n, 3, 3), translation=col["translation"].reshape(n, 3),
        euler=np.stack([col["yaw"], col["pitch"], col["roll"]], 1).astype(np.float64),
        displacements=meshes["displacements"], crop=col["crop"].reshape(n, 2, 3), face_px=col["face_px"].astype(np.float64),
        residual=col["residual"].astype(np.float64), flags={f: col[f].astype(bool) for f in FLAGS},
        cut_frames=meta["cut_frames"], is_vfr=meta["is_vfr"], version=meta["version"], faces=faces,
    )


def save(storage: Storage, r: TrackResult, uri: str, video_sha256: str | None = None) -> None:
    """Write the artifact atomically (temporary file, then published whole), a row group of
    ``BLOCK_ROWS`` frames at a time: a long video's landmarks are never all in memory."""
    fd, tmp = tempfile.mkstemp(suffix=".parquet", prefix="resync-track-")
    os.close(fd)
    try:
        first = _rows_table(r, 0, min(BLOCK_ROWS, r.n_frames))
        schema = first.schema.with_metadata(_metadata(r, video_sha256))
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            writer.write_table(first.cast(schema))
            for a in range(BLOCK_ROWS, r.n_frames, BLOCK_ROWS):
                writer.write_table(_rows_table(r, a, min(a + BLOCK_ROWS, r.n_frames)).cast(schema))
        storage.put_file(tmp, uri)
    finally:
        os.unlink(tmp)


def load(storage: Storage, uri: str) -> TrackResult:
    """Read the artifact a row group at a time (its landmarks go to disk, see ``_columns``)."""
    with local_path(storage, uri) as path:
        f = pq.ParquetFile(path)
        meta = json.loads(f.schema_arrow.metadata[META_KEY])
        return _columns(f.iter_batches(batch_size=BLOCK_ROWS), f.metadata.num_rows, meta)
