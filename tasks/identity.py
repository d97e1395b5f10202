"""Face identity: dlib's 128-D face descriptor (ResNet, trained for face verification).

The only face-recognition network available offline here (``face-recognition-models`` ships its
weights). Two faces of the same person are usually within 0.6 of each other (Euclidean); the
quality benchmark and QA use the distance between a dub and its source to catch a generator that
drifts away from the person. Faces are located by our own landmarks, so no detector runs.
"""

from __future__ import annotations

import importlib.util
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tasks.track import TrackResult


def models_folder() -> Path:
    """The dlib model files of the ``face-recognition-models`` package (its own import needs
    pkg_resources, so it is located, not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face-recognition-models is not installed: it ships dlib's face descriptor")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class FaceIdentity:
    """128-D descriptors of faces given by a box (from landmarks) in an RGB image."""

    @cached_property
    def _models(self):
        import dlib

        folder = models_folder()
        return (dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat")),
                dlib.face_recognition_model_v1(str(folder / "dlib_face_recognition_resnet_model_v1.dat")))

    def descriptor(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """(128,) descriptor of the face inside ``box`` = (x0, y0, x1, y1) pixels of ``image``."""
        import dlib

        predictor, encoder = self._models
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        rect = dlib.rectangle(x0, y0, x1, y1)
        img = np.ascontiguousarray(image, dtype=np.uint8)
        shape = predictor(img, rect)
        return np.asarray(encoder.compute_face_descriptor(img, shape), dtype=np.float32)

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        """Euclidean distance; below ~0.6 is the same person by dlib's calibration."""
        return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


def landmark_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) around a frame's landmarks (N, 2+): where the descriptor looks."""
    (x0, y0), (x1, y1) = points[:, :2].min(0), points[:, :2].max(0)
    return float(x0), float(y0), float(x1), float(y1)


def video_descriptors(faces: FaceIdentity, frames: dict[int, np.ndarray], landmarks: np.ndarray) -> dict[int, np.ndarray]:
    """Descriptor of the tracked face in each given frame (index -> RGB), skipping frames without
    landmarks."""
    return {i: faces.descriptor(img, landmark_box(landmarks[i])) for i, img in frames.items()
            if np.isfinite(landmarks[i]).all()}


def swap_distances(storage, faces: FaceIdentity, output: tuple[str, "TrackResult"], source: tuple[str, "TrackResult"],
                   reference: tuple[str, "TrackResult"], every: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per sampled frame of a face swap's output: (distance to the reference person, distance to the
    source person in the same frame). The reference person is the mean descriptor over their video.
    Each argument is (uri, track)."""
    from tasks.decode import VideoSource

    def frames(uri: str, indices: range) -> dict[int, np.ndarray]:
        with VideoSource(storage, uri) as video:
            return {i: video.frame(i) for i in indices}

    (out_uri, out_track), (src_uri, src_track), (ref_uri, ref_track) = output, source, reference
    ref = video_descriptors(faces, frames(ref_uri, range(0, ref_track.n_frames, 2 * every)), ref_track.smoothed)
    person = np.mean(list(ref.values()), 0)
    sampled = range(0, src_track.n_frames, every)
    own = video_descriptors(faces, frames(src_uri, sampled), src_track.smoothed)
    got = video_descriptors(faces, frames(out_uri, sampled), out_track.smoothed)
    common = [i for i in sampled if i in own and i in got]
    return (np.array([FaceIdentity.distance(got[i], person) for i in common]),
            np.array([FaceIdentity.distance(got[i], own[i]) for i in common]))


__all__ = ["FaceIdentity", "models_folder", "landmark_box", "video_descriptors", "swap_distances"]
