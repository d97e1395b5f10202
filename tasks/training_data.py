"""One clip as training data: aligned crops, meshes in crop coordinates, dynamics, audio features.

Models read arrays, not videos: this module turns a video and its track artifact into what the
Style-SyncFormer (audio features -> displacements) and the generator (mesh + masked target +
reference -> crop) train on. Only frames with a usable face are kept; their indices are kept too,
so time-based splits and audio alignment stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from catalogs.storage import Storage
from tasks.decode import VideoSource
from tasks.geometry import warp_crop
from tasks.track import TrackResult


@dataclass
class ClipData:
    frames: np.ndarray        # (N,) indices into the video of the usable frames
    timestamps: np.ndarray    # (N,) seconds
    crops: np.ndarray         # (N, S, S, 3) uint8 aligned face crops
    verts: np.ndarray         # (N, 478, 3) float32 tracked mesh in crop pixels (z scaled alike)
    disp: np.ndarray          # (N, 478, 3) float32 displacements from the shot template
    canonical: np.ndarray     # (N, 478, 3) float32 template + displacements
    scale: np.ndarray         # (N,) head pose: image = scale * R @ canonical + t
    rotation: np.ndarray      # (N, 3, 3)
    translation: np.ndarray   # (N, 3)
    crop: np.ndarray          # (N, 2, 3) image -> crop of side S
    size: int

    def __len__(self) -> int:
        return len(self.frames)

    def subset(self, keep: np.ndarray) -> "ClipData":
        fields = {k: v[keep] if isinstance(v, np.ndarray) else v for k, v in self.__dict__.items()}
        return ClipData(**fields)


def crop_matrices(track: TrackResult, size: int, crop_size: int) -> np.ndarray:
    """The artifact's crops are for ``crop_size``; a model of side ``size`` scales them."""
    return track.crop * (size / crop_size)


def project_to_crop(canonical: np.ndarray, scale: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
                    crop: np.ndarray) -> np.ndarray:
    """Canonical meshes (N, V, 3) -> crop pixels, through the head pose and the crop similarity."""
    image = scale[:, None, None] * np.einsum("nvk,njk->nvj", canonical, rotation) + translation[:, None, :]
    return image_to_crop(image, crop)


def image_to_crop(image: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """Image-pixel meshes (N, V, 3) -> the pixels of their crops (N, 2, 3); z scaled like x and y."""
    xy = np.einsum("nvk,njk->nvj", image[..., :2], crop[:, :, :2]) + crop[:, None, :, 2]
    z = image[..., 2:3] * np.sqrt(np.abs(np.linalg.det(crop[:, :, :2])))[:, None, None]
    return np.concatenate([xy, z], -1).astype(np.float32)


def load_clip(storage: Storage, uri: str, track: TrackResult, size: int, crop_size: int = 256,
              usable: np.ndarray | None = None, chunk: int = 64) -> ClipData:
    """Decode ``uri`` once and cut the aligned crops of every usable frame (default: a face, not small,
    not at an extreme pose, not low confidence)."""
    if usable is None:
        usable = track.valid & ~track.flags["small_face"] & ~track.flags["extreme_pose"] & ~track.flags["low_confidence"]
    idx = np.flatnonzero(usable)
    mats = crop_matrices(track, size, crop_size)
    crops = np.zeros((len(idx), size, size, 3), np.uint8)
    pos = {int(i): k for k, i in enumerate(idx)}
    with VideoSource(storage, uri) as video:
        for c in video.chunks(chunk):
            for i, frame in zip(c.indices, c.frames):
                k = pos.get(int(i))
                if k is not None:
                    crops[k] = warp_crop(frame, mats[i], size)
    canonical = track.canonical()[idx].astype(np.float32)
    return ClipData(
        frames=idx, timestamps=track.timestamps[idx], crops=crops,
        verts=project_to_crop(canonical.astype(np.float64), track.scale[idx], track.rotation[idx], track.translation[idx], mats[idx]),
        disp=track.displacements[idx].astype(np.float32), canonical=canonical, scale=track.scale[idx],
        rotation=track.rotation[idx], translation=track.translation[idx], crop=mats[idx], size=size,
    )
