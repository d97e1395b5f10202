"""A preview of a track: the mesh drawn over the video, so that a person can judge the tracking."""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from catalogs.storage import Storage
from tasks.decode import VideoSource
from tasks.encode import write_h264
from tasks.track import FLAGS, TrackResult


def _edges() -> np.ndarray:
    from tasks.facemesh import import_mediapipe

    mp = import_mediapipe()
    return np.array(sorted(mp.solutions.face_mesh.FACEMESH_TESSELATION), dtype=np.int64)


def draw_mesh(frame: np.ndarray, points: np.ndarray, edges: np.ndarray, color=(255, 255, 255)) -> np.ndarray:
    out = frame.copy()
    thickness = max(1, round(min(frame.shape[:2]) / 720))
    lines = points[edges][:, :, :2].round().astype(np.int32)
    cv2.polylines(out, list(lines), isClosed=False, color=color, thickness=thickness, lineType=cv2.LINE_AA)
    return out


def preview_frames(storage: Storage, uri: str, track: TrackResult, chunk: int = 64) -> Iterator[np.ndarray]:
    edges = _edges()
    with VideoSource(storage, uri) as video:
        for c in video.chunks(chunk):
            for i, frame in zip(c.indices, c.frames):
                if track.valid[i]:
                    frame = draw_mesh(frame, track.smoothed[i], edges)
                flags = [f for f in FLAGS if track.flags[f][i]]
                if flags:
                    cv2.putText(frame, " ".join(flags), (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 64, 64), 2, cv2.LINE_AA)
                yield frame


def write_preview(storage: Storage, uri: str, track: TrackResult, out_uri: str) -> int:
    return write_h264(storage, out_uri, preview_frames(storage, uri, track), track.fps)
