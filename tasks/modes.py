"""The other three ReSyncer modes, as rewirings of the dub's three inputs (DESIGN section 2).

- video-driven lip sync: the displacements come from another video's tracking, retargeted to this
  speaker (scaled by the ratio of the two mouths' widths, added to this speaker's own template);
- speaking-style transfer: the Style-SyncFormer's style code comes from another speaker's motion;
- face swapping: the generator's style path gets another identity's reference crop.

No other weights: the same model, other inputs (``tasks.lipsync.DubInputs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from catalogs.errors import ErrorClass, ResyncError
from catalogs.settings import Settings
from catalogs.storage import Storage
from tasks.decode import VideoSource
from tasks.geometry import build_template, crop_matrix, warp_crop
from tasks.landmarks import MOUTH_CORNERS, LEFT_EYE, RIGHT_EYE, mouth_opening
from tasks.dub_plan import reference_frame, reference_window, renderable
from tasks.lipsync import DubInputs
from tasks.track import TrackResult
from tasks.training_data import image_to_crop, project_to_crop

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def mouth_width(template: np.ndarray) -> float:
    """Mouth-corner distance in eye distances (the template's unit): how wide this mouth is."""
    eyes = np.linalg.norm(template[LEFT_EYE].mean(0) - template[RIGHT_EYE].mean(0))
    return float(np.linalg.norm(template[MOUTH_CORNERS[0]] - template[MOUTH_CORNERS[1]]) / max(eyes, 1e-9))


def retarget(driver: TrackResult, target: TrackResult) -> np.ndarray:
    """(T_target, V, 3) displacements: the driver's motion at each target frame's time, scaled to
    the target's mouth. Past the driver's end (or where it has no face) the driver's most closed
    mouth is held, as padded silence closes the mouth in audio-driven dubbing."""
    scale = mouth_width(target.template) / max(mouth_width(driver.template), 1e-9)
    valid = np.flatnonzero(driver.valid)
    if len(valid) == 0:
        raise ResyncError(ErrorClass.NO_FACE, "the driving video has no face", item=driver.video_uri)
    opening = mouth_opening(driver.canonical()[valid])
    rest = np.nan_to_num(driver.displacements[valid[int(np.nanargmin(opening))]])
    step = 1.0 / max(driver.fps, 1e-6)
    ts = driver.timestamps[valid]
    pos = np.clip(np.searchsorted(ts, target.timestamps), 1, len(ts) - 1) if len(ts) > 1 else np.zeros(target.n_frames, int)
    if len(ts) > 1:
        pos = np.where(np.abs(ts[pos - 1] - target.timestamps) <= np.abs(ts[pos] - target.timestamps), pos - 1, pos)
    nearest = valid[pos]
    out = np.nan_to_num(driver.displacements[nearest]) * scale
    beyond = (target.timestamps > driver.timestamps[-1] + step) | (np.abs(driver.timestamps[nearest] - target.timestamps) > 2 * step)
    out[beyond] = rest * scale
    return out.astype(np.float32)


def style_from_track(track: TrackResult, length: int) -> np.ndarray:
    """A speaker's reference motion (the liveliest usable window) for the style code."""
    return reference_window(track.displacements, renderable(track), length)


def speaker_video(storage: Storage, speaker_id: str) -> tuple[str, str]:
    """(uri, sha256) of a catalog video of ``speaker_id``: the longest one, whose motion says most."""
    from catalogs.delta import DeltaTables
    from catalogs.schemas import VIDEOS_TABLE

    tables = DeltaTables(storage)
    if not tables.exists(VIDEOS_TABLE):
        raise ResyncError(ErrorClass.UNKNOWN_VIDEO, "there is no catalog under this root to find a speaker in",
                          item=speaker_id)
    rows = [r for r in tables.read(VIDEOS_TABLE, columns=["uri", "speaker_id", "sha256", "duration_s"]).to_pylist()
            if r["speaker_id"] == speaker_id]
    if not rows:
        raise ResyncError(ErrorClass.UNKNOWN_VIDEO, "no catalog video of this speaker", item=speaker_id)
    best = max(rows, key=lambda r: r["duration_s"] or 0)
    return best["uri"], best["sha256"]


def is_image(uri: str) -> bool:
    return Path(uri.split("?")[0]).suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class ReferenceIdentity:
    """Who a face swap draws: an aligned crop of that person (the generator's style path) and their
    face shape (the canonical template the planned meshes are built on)."""
    crop: np.ndarray       # (S, S, 3) uint8
    template: np.ndarray   # (478, 3) canonical mesh, unit eye distance
    vertices: np.ndarray   # (478, 3) the face's landmarks in the crop's pixels (its texture coordinates)


def reference_from_image(storage: Storage, settings: Settings, uri: str, size: int) -> ReferenceIdentity:
    """The identity of the largest face in an image."""
    from tasks.facemesh import FaceMeshTracker

    try:
        data = np.frombuffer(storage.read_bytes(uri), np.uint8)
    except (FileNotFoundError, OSError) as e:
        raise ResyncError(ErrorClass.MISSING_FILE, f"cannot read the reference image ({e})", item=uri) from e
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ResyncError(ErrorClass.DECODE_ERROR, "the reference image does not decode", item=uri)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    tracker = FaceMeshTracker(max_faces=settings.max_faces)
    try:
        faces = tracker.process(0, rgb)
    finally:
        tracker.close()
    if not faces:
        raise ResyncError(ErrorClass.NO_FACE, "no face in the reference image", item=uri)
    face = max(faces, key=lambda f: f.width)
    points = face.points.astype(np.float64)
    matrix = crop_matrix(points, size)
    return ReferenceIdentity(warp_crop(rgb, matrix, size), build_template(points[None], np.ones(1, bool)).astype(np.float32),
                             image_to_crop(points[None], matrix[None])[0])


def reference_from_video(storage: Storage, track: TrackResult, uri: str, size: int, crop_size: int) -> ReferenceIdentity:
    """The identity of a tracked video's speaker: its most typical frontal frame and its template."""
    usable = renderable(track)
    i = reference_frame(track, usable)
    matrix = track.crop[i] * (size / crop_size)
    with VideoSource(storage, uri) as video:
        crop = warp_crop(video.frame(i), matrix, size)
    # the tracked mesh re-posed, as the texture coordinates were in training (tasks.training_data)
    verts = project_to_crop(track.canonical()[i:i + 1].astype(np.float64), track.scale[i:i + 1].astype(np.float64),
                            track.rotation[i:i + 1].astype(np.float64), track.translation[i:i + 1].astype(np.float64),
                            matrix[None])[0]
    return ReferenceIdentity(crop, track.templates[track.shot_index[i]].astype(np.float32), verts)


def swap_face(inputs: DubInputs, identity: ReferenceIdentity) -> DubInputs:
    """``inputs`` rewired to show ``identity``: its crop drives the style path, its face texture and
    face shape replace this speaker's."""
    inputs.reference_crop, inputs.reference_template = identity.crop, identity.template
    inputs.reference_vertices = identity.vertices
    return inputs


__all__ = ["retarget", "mouth_width", "style_from_track", "speaker_video", "is_image", "ReferenceIdentity", "swap_face",
           "reference_from_image", "reference_from_video"]
