"""Mesh renderer and lower-face mask: the topology asset, shapes, z-buffer, and drawing the mouth
where a real clip's tracked landmarks put it. Timings are printed (run with -s), not asserted."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.renderer import (AMBIENT, FACE_OVAL, TRIANGLES_PATH, MeshRenderer, face_mask, load_triangles, mouth_mask,
                             render_mesh, warp_texture)

REPO = Path(__file__).resolve().parents[2]
CLIP = REPO.parent / "shared" / "data" / "videos" / "speaker_map_5s.mp4"
UPPER_INNER, LOWER_INNER = 13, 14
OUTER_LIPS = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409]
INNER_LIPS = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415]
# (outer, inner) pairs across the lips: their midpoints lie on the lip surface.
LIP_PAIRS = [(0, 13), (17, 14), (37, 82), (267, 312), (84, 87), (314, 317)]
EYES_AND_FOREHEAD = [33, 133, 159, 145, 362, 263, 386, 374, 468, 473, 10, 151, 9, 107, 336]


def to_crop(points: np.ndarray, crop: np.ndarray, size: int, crop_size: int) -> np.ndarray:
    """(478, 3) image-pixel landmarks -> crop pixels of a ``size`` crop (z scaled like x, y)."""
    m = crop * (size / crop_size)
    xy = points[:, :2] @ m[:, :2].T + m[:, 2]
    z = points[:, 2:] * np.sqrt(abs(np.linalg.det(m[:, :2])))
    return np.concatenate([xy, z], 1).astype(np.float32)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The tracked clip: (smoothed landmarks, crop matrices, crop_size, closed frame, open frame)."""
    if not CLIP.is_file():
        pytest.skip(f"test clip {CLIP} is absent (the media folder sits beside the repo as ../shared/data)")
    from catalogs.settings import Settings
    from catalogs.storage import Storage
    from tasks.track import track_video

    settings = Settings(root=str(tmp_path_factory.mktemp("root")), allowed_roots=[str(CLIP.parent)])
    result = track_video(Storage(settings), settings, str(CLIP))
    valid = np.flatnonzero(result.valid)
    gap = np.linalg.norm(result.smoothed[valid, UPPER_INNER, :2] - result.smoothed[valid, LOWER_INNER, :2], axis=1)
    return result.smoothed, result.crop, settings.crop_size, int(valid[gap.argmin()]), int(valid[gap.argmax()])


def frame_mesh(clip, i: int, size: int) -> np.ndarray:
    points, crops, crop_size, _, _ = clip
    return to_crop(points[i], crops[i], size, crop_size)


def pixel(img: np.ndarray, xy: np.ndarray) -> float:
    x, y = np.round(xy).astype(int)
    return float(img[y, x])


# --- the topology asset -------------------------------------------------------------------

def test_triangle_asset_is_a_clean_oriented_face_mesh():
    tris = np.load(TRIANGLES_PATH)
    assert tris.dtype == np.int32 and tris.ndim == 2 and tris.shape[1] == 3
    assert 840 <= len(tris) <= 900, len(tris)
    assert tris.min() >= 0 and tris.max() < 468 and len(np.unique(tris)) == 468
    assert all(len(set(t)) == 3 for t in tris.tolist())
    assert len({tuple(sorted(t)) for t in tris.tolist()}) == len(tris), "duplicate triangles"
    directed = [(t[i], t[(i + 1) % 3]) for t in tris.tolist() for i in range(3)]
    assert len(set(directed)) == len(directed), "inconsistent orientation (or a non-manifold edge)"
    undirected = {tuple(sorted(e)) for e in directed}
    assert 468 - len(undirected) + len(tris) == -2  # a disk with three holes: both eyes and the mouth
    assert TRIANGLES_PATH.stat().st_size < 16_000
    assert torch.equal(load_triangles(), torch.from_numpy(tris).long())


def test_triangles_face_the_camera_on_a_frontal_frame(clip):
    v = frame_mesh(clip, 0, 256)
    t = np.load(TRIANGLES_PATH)
    n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    assert (n[:, 2] < 0).mean() > 0.9  # z negative = towards the camera


def test_models_do_not_import_mediapipe():
    code = "import sys, models.renderer; assert 'mediapipe' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- rendering ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [128, 256])
def test_shapes_range_and_empty_background(size):
    rng = np.random.default_rng(0)
    verts = np.empty((3, 478, 3), np.float32)  # scattered in the middle of the crop: background around it
    verts[..., :2] = rng.uniform(0.3 * size, 0.7 * size, (3, 478, 2))
    verts[..., 2] = rng.uniform(-0.2 * size, 0.2 * size, (3, 478))
    img = render_mesh(verts, size)
    assert img.shape == (3, 1, size, size) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1 and (img > 0).any()
    lo, hi = int(np.floor(0.3 * size)), int(np.ceil(0.7 * size))
    outside = torch.ones(size, size, dtype=torch.bool)
    outside[lo:hi + 1, lo:hi + 1] = False
    assert (img[:, 0][:, outside] == 0).all()
    covered = img[img > 0]
    assert covered.min() >= AMBIENT - 1e-4
    assert torch.equal(MeshRenderer(size)(torch.from_numpy(verts)), img)
    assert torch.equal(render_mesh(verts[1], size)[0], img[1])  # one (V, 3) mesh = a batch of one


def test_missing_faces_render_empty():
    """A frame without a face (NaN landmarks) gives an empty image and mask, and leaves the rest alone."""
    rng = np.random.default_rng(1)
    verts = rng.uniform(20, 40, (2, 478, 3)).astype(np.float32)
    alone = render_mesh(verts[:1], 64)
    verts[1] = np.nan
    img, mask = render_mesh(verts, 64), mouth_mask(verts, 64)
    assert torch.equal(img[0], alone[0]) and (img[1] == 0).all() and (mask[1] == 0).all()


def quad(x0: float, x1: float, y0: float, y1: float, z_left: float, z_right: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[x0, y0, z_left], [x1, y0, z_right], [x1, y1, z_right], [x0, y1, z_left]], np.float32)
    return v, np.array([[0, 2, 1], [0, 3, 2]])


@pytest.mark.parametrize("smooth", [True, False])
def test_zbuffer_nearer_square_wins(smooth):
    flat, tris = quad(10, 40, 10, 40, -5, -5)      # facing the camera
    tilted, _ = quad(25, 55, 20, 50, -25, 25)      # turned away: darker
    for flat_z in (-100.0, 100.0):
        v = np.concatenate([flat + [0, 0, flat_z], tilted])[None]
        img = render_mesh(v, 64, np.concatenate([tris, tris + 4]), smooth=smooth)[0, 0]
        alone_flat = render_mesh(v[:, :4], 64, tris, smooth=smooth)[0, 0]
        alone_tilted = render_mesh(v[:, 4:], 64, tris, smooth=smooth)[0, 0]
        assert alone_flat[32, 32] > alone_tilted[32, 32] > 0  # the two shades differ
        winner = alone_flat if flat_z < 0 else alone_tilted
        assert img[32, 32] == pytest.approx(float(winner[32, 32]), abs=1e-4)
        assert img[15, 15] == pytest.approx(float(alone_flat[15, 15]), abs=1e-4)  # no overlap
        assert img[45, 50] == pytest.approx(float(alone_tilted[45, 50]), abs=1e-4)


def test_zbuffer_on_two_real_faces(clip):
    """Two copies of a real mesh, side by side and overlapping: wherever the nearer copy draws,
    it is what shows; elsewhere the farther one does. z negative is nearer."""
    size = 128
    v = frame_mesh(clip, 0, size)
    tris = np.load(TRIANGLES_PATH)
    both_tris = np.concatenate([tris, tris + len(v)])
    for dz in (-200.0, 200.0):
        moved = v + [0.25 * size, 0, dz]
        img = render_mesh(np.concatenate([v, moved])[None], size, both_tris)[0, 0]
        near, far = (moved, v) if dz < 0 else (v, moved)
        near_img, far_img = render_mesh(near[None], size)[0, 0], render_mesh(far[None], size)[0, 0]
        overlap = (near_img > 0) & (far_img > 0)
        assert overlap.sum() > 500
        assert torch.allclose(img[near_img > 0], near_img[near_img > 0], atol=1e-4)
        assert torch.allclose(img[near_img == 0], far_img[near_img == 0], atol=1e-4)


@pytest.mark.parametrize("size", [128, 256])
def test_coverage_box_matches_the_landmarks(clip, size):
    for i in clip[3:5]:
        v = frame_mesh(clip, i, size)
        img = render_mesh(v[None], size)[0, 0].numpy()
        ys, xs = np.nonzero(img)
        drawn = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
        lo, hi = v[:468, :2].min(0), np.minimum(v[:468, :2].max(0), size - 1)
        assert np.abs(drawn - np.concatenate([lo, hi])).max() <= 1.5, (drawn, lo, hi)


@pytest.mark.parametrize("size", [128, 256])
def test_lips_drawn_where_the_landmarks_are_and_the_open_mouth_is_a_gap(clip, size):
    _, _, _, closed, opened = clip
    for i in (closed, opened):  # the lips are drawn at their landmarks in either state
        v = frame_mesh(clip, i, size)
        img = render_mesh(v[None], size)[0, 0].numpy()
        assert all(pixel(img, v[k, :2]) > 0 for k in OUTER_LIPS)
        assert all(pixel(img, (v[a, :2] + v[b, :2]) / 2) > 0 for a, b in LIP_PAIRS)
        for k in INNER_LIPS:  # on the edge of the mouth hole: drawn within a pixel
            x, y = np.round(v[k, :2]).astype(int)
            assert img[y - 1:y + 2, x - 1:x + 2].max() > 0, k

    v = frame_mesh(clip, opened, size)
    img = render_mesh(v[None], size)[0, 0].numpy()
    top, bottom = v[UPPER_INNER, :2], v[LOWER_INNER, :2]
    assert np.linalg.norm(top - bottom) > 0.04 * size  # the clip's widest opening is a real one
    for s in np.linspace(0.25, 0.75, 5):  # between the inner lips: background shows through
        assert pixel(img, top + s * (bottom - top)) == 0


# --- the lower-face mask --------------------------------------------------------------------

@pytest.mark.parametrize("size", [128, 256])
def test_mouth_mask_covers_the_mouth_and_spares_eyes_and_forehead(clip, size):
    _, _, _, closed, opened = clip
    verts = np.stack([frame_mesh(clip, closed, size), frame_mesh(clip, opened, size)])
    mask = mouth_mask(verts, size)
    assert mask.shape == (2, 1, size, size) and mask.dtype == torch.float32
    assert mask.min() >= 0 and mask.max() <= 1
    for v, m in zip(verts, mask[:, 0].numpy()):
        assert min(pixel(m, v[k, :2]) for k in OUTER_LIPS + INNER_LIPS) > 0.9
        assert max(pixel(m, v[k, :2]) for k in EYES_AND_FOREHEAD) < 0.01
        assert 0.02 < ((m > 0.5).mean()) < 0.4
        assert ((m > 0.05) & (m < 0.95)).sum() > size  # feathered, not a hard cut


@pytest.mark.parametrize("size", [128, 256])
def test_face_mask_covers_eyes_and_mouth_and_contains_the_mouth_mask(clip, size):
    _, _, _, closed, opened = clip
    verts = np.stack([frame_mesh(clip, closed, size), frame_mesh(clip, opened, size)])
    faces, mouths = face_mask(verts, size)[:, 0].numpy(), mouth_mask(verts, size)[:, 0].numpy()
    for v, f, m in zip(verts, faces, mouths):
        assert min(pixel(f, v[k, :2]) for k in OUTER_LIPS + INNER_LIPS + EYES_AND_FOREHEAD[:4]) > 0.9
        assert (f >= m - 0.05).all()  # the lower face is part of the face
        assert (f > 0.5).mean() > 2 * (m > 0.5).mean()
        corners = [(0, 0), (0, size - 1), (size - 1, 0), (size - 1, size - 1)]
        assert max(f[y, x] for y, x in corners) < 0.01  # background stays
        assert pixel(f, v[FACE_OVAL[0], :2]) > 0.3  # the oval's top reaches the forehead


def test_warp_texture_moves_a_face_onto_another_frames_mesh(clip):
    """The texture of one frame's face, moved onto another frame's mesh, lines up with that frame
    (better than the unwarped crop does); eyes are covered, the open inner mouth is not."""
    from catalogs.settings import Settings
    from catalogs.storage import Storage
    from tasks.decode import VideoSource
    from tasks.geometry import warp_crop

    points, crops, crop_size, closed, opened = clip
    size = 128
    with VideoSource(Storage(Settings(allowed_roots=[str(CLIP.parent)])), str(CLIP)) as video:
        img = {i: warp_crop(video.frame(i), crops[i] * (size / crop_size), size) for i in (closed, opened)}
    tensor = {i: torch.from_numpy(im).permute(2, 0, 1)[None].float() / 127.5 - 1 for i, im in img.items()}
    mesh = {i: frame_mesh(clip, i, size) for i in (closed, opened)}

    same, cover = warp_texture(tensor[closed], mesh[closed][None], mesh[closed][None], size)
    inside = cover[0, 0].bool()
    assert inside.float().mean() > 0.2 and cover.max() == 1 and cover.min() == 0
    assert (same - tensor[closed])[0][:, inside].abs().mean() < 0.03    # onto its own mesh: unchanged
    assert same[0][:, ~inside].abs().max() == 0                        # nothing drawn outside

    moved, cover = warp_texture(tensor[closed], mesh[closed][None], mesh[opened][None], size)
    inside = cover[0, 0].bool()
    m = mesh[opened]
    assert all(pixel(cover[0, 0].numpy(), m[k, :2]) == 1 for k in (468, 473))  # iris centres: the eye fans
    lips = m[INNER_LIPS, :2]
    assert pixel(cover[0, 0].numpy(), lips.mean(0)) == 0                 # the open mouth stays a hole
    warped_err = (moved - tensor[opened])[0][:, inside].abs().mean()
    plain_err = (tensor[closed] - tensor[opened])[0][:, inside].abs().mean()
    assert warped_err < plain_err, (warped_err, plain_err)


def test_warp_texture_into_a_window_is_the_square_crop_cut_to_it(clip):
    """A (height, width) window costs only its own pixels and holds exactly what the square
    rendering holds there (detail transfer draws only the lower face, a wide and short window)."""
    points, crops, crop_size, closed, opened = clip
    size = 128
    mesh = {i: frame_mesh(clip, i, size) for i in (closed, opened)}
    texture = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    source = torch.from_numpy(np.stack([mesh[closed], mesh[opened]])).float()
    target = torch.from_numpy(np.stack([mesh[opened], mesh[closed]])).float()
    target[..., :2] -= torch.tensor([9.0, 52.0])           # the window's corner, as detail transfer shifts it
    square, square_cover = warp_texture(texture, source, target, size)
    for height, width in ((size - 52, size - 9), (40, 100), (size, 30)):
        window, cover = warp_texture(texture, source, target, (height, width))
        assert window.shape == (2, 3, height, width) and cover.shape == (2, 1, height, width)
        assert torch.equal(window, square[..., :height, :width]) and torch.equal(cover, square_cover[..., :height, :width])
        assert cover.sum() > 0


# --- batching (timings printed, not asserted: this machine is shared) ---------------------------

def test_a_batch_renders_as_its_frames_do_one_at_a_time(clip):
    """The z-buffer of a batch must not leak between its images: rendering 16 tracked frames at
    once gives each frame's own rendering and lower-face mask, at both generator sizes."""
    points, crops, crop_size, _, _ = clip
    for size in (128, 256):
        verts = torch.from_numpy(np.stack([to_crop(points[i], crops[i], size, crop_size) for i in range(16)]))
        t0 = time.perf_counter()
        batch = render_mesh(verts, size)
        t1 = time.perf_counter()
        masks = mouth_mask(verts, size)
        t2 = time.perf_counter()
        for i in (0, 7, 15):
            assert torch.equal(batch[i], render_mesh(verts[i:i + 1], size)[0]), (size, i)
            assert torch.allclose(masks[i], mouth_mask(verts[i:i + 1], size)[0], atol=1e-6), (size, i)
        drawn = batch > 0
        assert drawn.flatten(1).any(1).all()                      # every tracked face is drawn
        assert (masks[drawn.logical_not()] < 0.5).float().mean() > 0.95   # the mask sits on the face
        print(f"\nrender_mesh {size}px, batch 16: {(t1 - t0) / 16 * 1e3:.2f} ms/image; "
              f"mouth_mask {(t2 - t1) / 16 * 1e3:.2f} ms/image")
