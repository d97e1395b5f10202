"""Mesh renderer: the generator's spatial guidance, and the lower-face mask.

ReSyncer's generator is told which mouth to draw by a plain white shaded rendering of the
(predicted) 3D face mesh, posed with the frame's head pose and projected into the aligned face
crop (DESIGN section 2). The mesh is MediaPipe Face Mesh: 478 vertices (468 face + 10 iris) in
crop pixels, x right, y down, z in the same pixel scale with negative z closer to the camera.
The triangles come from ``assets/facemesh_triangles.npy`` (derived once from MediaPipe's
tessellation edges by ``tools/make_facemesh_topology.py``); the eyes and the inner mouth are holes
of that mesh, so an open mouth shows as background between the lips.

The renderer is orthographic, z-buffered and batched, in plain PyTorch with no compiled extension:
the triangles of the whole batch are cut into scanlines at once, each scanline into the pixel
centres (integer coordinates, the ``cv2.warpAffine`` convention of the crops) inside its edge
functions, and one scatter-min over packed (depth, shade) keys lets the nearest surface win each
pixel (about 0.5 ms per 128 px image and 0.9 ms per 256 px image on 2 CPU cores). Shading is Lambertian and two-sided from a fixed frontal light: ambient +
diffuse * |n . l|, with vertex normals interpolated across each triangle (Gouraud) or flat.
Background is exactly 0, every covered pixel is at least ``AMBIENT``. Not differentiable.

``mouth_mask`` is the soft lower-face mask (below the nose, inside the face outline) used to blank
the target crop and to weight the losses; ``face_mask`` is the whole face oval, the same for face
swapping.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

TRIANGLES_PATH = Path(__file__).resolve().parent / "assets" / "facemesh_triangles.npy"

AMBIENT, DIFFUSE = 0.25, 0.75
LIGHT = (0.25, -0.35, -1.0)  # towards the light: in front of the face, a little above it and to the image right

# MediaPipe FACEMESH_FACE_OVAL as one ordered loop: forehead top (10), image-left side, chin (152),
# image-right side. The tools script checks it against MediaPipe.
FACE_OVAL = (10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378,
             379, 365, 397, 288, 361, 323, 454, 356, 389, 251, 284, 332, 297, 338)
# The lower face: the face oval from cheek to cheek under the chin (93 ... 152 ... 323), closed along
# the base of the nose (cheeks 425/205, nostril wings 327/98, subnasale 2).
LOWER_FACE = (93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323,
              425, 423, 327, 2, 98, 203, 205)

Vertices = torch.Tensor | np.ndarray


@lru_cache(maxsize=1)
def _face_triangles() -> torch.Tensor:
    return torch.from_numpy(np.load(TRIANGLES_PATH).astype(np.int64))


def load_triangles() -> torch.Tensor:
    """(F, 3) int64 Face Mesh triangles over the 468 face vertices, consistently oriented
    (counter-clockwise on screen when facing the camera)."""
    return _face_triangles().clone()


def _as_vertices(vertices: Vertices) -> torch.Tensor:
    v = torch.as_tensor(vertices)
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3 or v.shape[-1] != 3:
        raise ValueError(f"vertices must be (B, V, 3), got {tuple(v.shape)}")
    return v.float()


def _shading(v: torch.Tensor, tris: torch.Tensor, smooth: bool) -> torch.Tensor:
    """(B, F, 3) shade at each triangle corner."""
    a, b, c = v[:, tris[:, 0]], v[:, tris[:, 1]], v[:, tris[:, 2]]
    n = torch.cross(b - a, c - a, dim=-1)  # area-weighted face normals
    if smooth:
        vn = torch.zeros_like(v)
        for k in range(3):
            vn.index_add_(1, tris[:, k], n)
        n = vn[:, tris]  # (B, F, 3, 3)
    else:
        n = n[:, :, None].expand(-1, -1, 3, -1)
    light = torch.tensor(LIGHT, dtype=v.dtype, device=v.device)
    light = light / light.norm()
    cos = (n @ light).abs() / n.norm(dim=-1).clamp_min(1e-12)
    return AMBIENT + DIFFUSE * cos


def _zbuffer(v: torch.Tensor, tris: torch.Tensor, size: int | tuple[int, int],
             payload: torch.Tensor | None) -> torch.Tensor:
    """Rasterize meshes into ``size`` (square) or (height, width) pixels; returns (B * height * width,)
    int32 keys, ``int32 max`` where nothing is drawn.

    Each key packs the depth (16 bits, so one scatter-min is the z-test) over a 15-bit payload: the
    shade interpolated over each triangle from ``payload`` (B, F, 3) in [0, 1], or with ``payload``
    None the triangle's index (for ``correspondence``).
    """
    bsz, n_tri, dev = v.shape[0], tris.shape[0], v.device
    height, width = (size, size) if isinstance(size, int) else size
    none = torch.iinfo(torch.int32).max
    # Per triangle: barycentric coordinate k as an affine function of the pixel centre,
    # b_k = ax_k * px + ay_k * py + c_k, and the planes of depth and payload.
    corners = v[:, tris]                                     # (B, F, 3 corners, xyz)
    ax, ay, c, area = _barycentric_planes(corners)
    x, y, z = corners.unbind(-1)                             # (B, F, 3) each
    # Depth normalised to [0, 1] per image (for the packed z-buffer key); a plane in the pixel, like the shade.
    finite, inf = torch.isfinite(v[..., 2]), float("inf")
    z_lo, z_hi = v[..., 2].where(finite, inf).amin(1), v[..., 2].where(finite, -inf).amax(1)
    z = (z - z_lo[:, None, None]) / (z_hi - z_lo).clamp_min(1e-6)[:, None, None]
    if payload is None:  # the triangle's index, constant over it: a plane with no slope
        ids = torch.arange(n_tri, device=dev, dtype=v.dtype)[None, :, None].expand(bsz, -1, 3)
        payload = ids / 32767
    planes = [torch.stack([(ax * q).sum(-1), (ay * q).sum(-1), (c * q).sum(-1)], -1) for q in (z, payload)]
    table = torch.cat([ax, ay, c, x.amin(-1, keepdim=True), x.amax(-1, keepdim=True), *planes], -1).flatten(0, 1)

    # Triangles -> scanlines: the pixel rows (integer y) each triangle spans.
    ok = (area.abs() > 1e-9) & torch.isfinite(corners).flatten(-2).all(-1)
    y_lo = y.amin(-1).ceil().clamp(0, height)
    y_hi = y.amax(-1).floor().clamp(-1, height - 1)
    rows = torch.where(ok, y_hi - y_lo + 1, torch.zeros_like(y_lo)).clamp_min(0).flatten().long()
    tri = torch.repeat_interleave(torch.arange(rows.numel(), device=dev), rows)  # (R,) into B*F
    py = y_lo.flatten()[tri] + (torch.arange(tri.numel(), device=dev) - (rows.cumsum(0) - rows)[tri])
    t = table.index_select(0, tri)
    # The span of pixel centres inside all three edges: b_k >= -eps (a hair of overlap, so shared
    # edges leave no pin holes) is px >= bound_k where ax_k > 0 and px <= bound_k where ax_k < 0.
    # A horizontal edge (ax_k ~ 0) gives a huge bound of the sign that keeps or drops the whole row.
    eps = 1e-5
    t_ax = t[:, 0:3]
    bound = (-eps - t[:, 3:6] * py[:, None] - t[:, 6:9]) / t_ax
    x_lo = torch.maximum(torch.where(t_ax > 0, bound, -inf).amax(1), t[:, 9]).ceil().clamp_min(0)
    x_hi = torch.minimum(torch.where(t_ax < 0, bound, inf).amin(1), t[:, 10]).floor().clamp_max(width - 1)
    span = (x_hi - x_lo + 1).clamp_min(0).long()
    offset = span.cumsum(0) - span
    # Per scanline: depth and payload at a pixel index k of the whole run are start + slope * k.
    zp, sp = t[:, 11:14], t[:, 14:17]
    z0 = zp[:, 0] * x_lo + zp[:, 1] * py + zp[:, 2]
    s0 = sp[:, 0] * x_lo + sp[:, 1] * py + sp[:, 2]
    rowdata = torch.stack([z0, zp[:, 0], s0, sp[:, 0]], 1)
    first = tri.div(n_tri, rounding_mode="floor") * (height * width)  # the image's first pixel
    pix0 = first + py.long() * width + x_lo.long() - offset

    # Scanlines -> pixels.
    zbuf = torch.full((bsz * height * width,), none, dtype=torch.int32, device=dev)
    row = torch.repeat_interleave(torch.arange(span.numel(), device=dev), span)
    if row.numel() == 0:
        return zbuf
    k = torch.arange(row.numel(), device=dev)
    step = (k - offset[row]).to(v.dtype)
    r = rowdata.index_select(0, row)
    depth = r[:, 0] + r[:, 1] * step
    value = r[:, 2] + r[:, 3] * step
    pixel = pix0[row] + k
    # z-buffer: the nearest surface (smallest z) wins each pixel. Depth (16 bits) and payload (15 bits)
    # are packed in one int32 key, so a single scatter-min both tests depth and picks the payload.
    key = ((depth.clamp(0, 1) * 65534).round().int() << 15) | (value.clamp(0, 1) * 32767).round().int()
    return zbuf.scatter_reduce_(0, pixel, key, "amin")


def _barycentric_planes(corners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ax, ay, c, area) of triangles (..., 3 corners, xy[z]): barycentric coordinate k of pixel
    (px, py) is ax_k * px + ay_k * py + c_k."""
    x, y = corners[..., 0], corners[..., 1]
    x1, y1, x2, y2 = x.roll(-1, -1), y.roll(-1, -1), x.roll(-2, -1), y.roll(-2, -1)  # the next two corners
    area = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (x[..., 2] - x[..., 0]) * (y[..., 1] - y[..., 0])
    inv = 1 / area.unsqueeze(-1)
    ax, ay, c = -(y2 - y1) * inv, (x2 - x1) * inv, ((y2 - y1) * x1 - (x2 - x1) * y1) * inv
    ax = torch.where(ax == 0, torch.full_like(ax, 1e-30), ax)  # a horizontal edge: see the span bounds
    return ax, ay, c, area


@torch.no_grad()
def render_mesh(vertices: Vertices, size: int, triangles: Vertices | None = None, smooth: bool = True) -> torch.Tensor:
    """White shaded, z-buffered rendering of meshes in crop pixel coordinates.

    vertices: (B, V, 3) (or one (V, 3) mesh) x, y in pixels of a ``size`` crop, pixel centres at
    integer coordinates; z in the same scale, negative = closer. triangles: (F, 3) vertex indices, default the Face Mesh; consistently oriented when ``smooth``
    (flat shading accepts any orientation). Returns (B, 1, size, size) float32 in [0, 1], 0 where
    nothing is drawn, on the device of ``vertices``.
    """
    v = _as_vertices(vertices)
    tris = _face_triangles() if triangles is None else torch.as_tensor(triangles).long()
    tris = tris.to(v.device)
    bsz = v.shape[0]
    if tris.shape[0] == 0 or bsz == 0:
        return torch.zeros(bsz, 1, size, size, device=v.device)
    zbuf = _zbuffer(v, tris, size, _shading(v, tris, smooth))
    image = torch.where(zbuf == torch.iinfo(torch.int32).max, 0, zbuf & 0x7FFF).float() / 32767
    return image.view(bsz, 1, size, size)


# The holes of the Face Mesh a texture should cover: MediaPipe's eye contours (image-left eye, then
# image-right), closed with triangle fans for ``warp_texture`` (the inner mouth stays a hole: what
# is inside depends on the expression, so the generator draws it).
EYE_LOOPS = ((33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246),
             (362, 382, 381, 380, 374, 373, 390, 249, 263, 466, 388, 387, 386, 385, 384, 398))


@lru_cache(maxsize=1)
def _texture_triangles() -> torch.Tensor:
    fans = [(loop[0], loop[k], loop[k + 1]) for loop in EYE_LOOPS for k in range(1, len(loop) - 1)]
    return torch.cat([_face_triangles(), torch.tensor(fans, dtype=torch.int64)])


@torch.no_grad()
def texture_map(source: Vertices, target: Vertices, size: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each pixel of the target meshes comes from: the point of the source mesh in the same
    triangle at the same barycentric coordinates.

    source: (B, V, 2+) vertices in the pixels of the image to sample; target: (B, V, 3) meshes in
    pixels of a ``size`` crop (or a (height, width) window, which costs only its own pixels). Returns
    (B, height, width, 2) source pixel coordinates (x, y) and the coverage (B, height, width) bool;
    uncovered pixels hold 0. The map is affine inside each triangle and continuous across their shared
    edges.
    """
    v = _as_vertices(target)
    src = torch.as_tensor(source, dtype=v.dtype, device=v.device)[..., :2]
    tris = _texture_triangles().to(v.device)
    bsz, none = v.shape[0], torch.iinfo(torch.int32).max
    height, width = (size, size) if isinstance(size, int) else size
    zbuf = _zbuffer(v, tris, (height, width), None).view(bsz, height * width)
    flat = (zbuf != none).view(-1).nonzero().squeeze(1)          # (N,) the covered pixels only, as B * P + p
    pix = flat % (height * width)
    tri = (zbuf.view(-1)[flat] & 0x7FFF).long()                   # the triangle under each
    ax, ay, c, _ = _barycentric_planes(v[:, tris][..., :2])      # (B, F, 3) each
    # Barycentric coordinates are affine in the pixel, so is the source point they pick: one
    # (2 x 3) map per triangle, gathered once per covered pixel.
    corners = src[:, tris]                                        # (B, F, 3, 2)
    affine = torch.stack([(corners * q[..., None]).sum(2) for q in (ax, ay, c)], -1).reshape(-1, 6)  # (B * F, 6)
    a = affine.index_select(0, flat.div(height * width, rounding_mode="floor") * tris.shape[0] + tri)  # (N, 6)
    px, py = (pix % width).to(v.dtype), (pix // width).to(v.dtype)
    where = torch.stack([a[:, 0] * px + a[:, 1] * py + a[:, 2], a[:, 3] * px + a[:, 4] * py + a[:, 5]], -1)
    finite = torch.isfinite(where).all(-1)
    points = torch.zeros(bsz * height * width, 2, dtype=v.dtype, device=v.device)
    covered = torch.zeros(bsz * height * width, dtype=torch.bool, device=v.device)
    points[flat] = torch.where(finite[:, None], where, torch.zeros_like(where))
    covered[flat] = finite
    return points.view(bsz, height, width, 2), covered.view(bsz, height, width)


def warp_texture(images: torch.Tensor, source: Vertices, target: Vertices,
                 size: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the face in ``images`` onto other meshes: each pixel the target mesh covers takes the
    colour at the same point of the source mesh (same triangle, same barycentric coordinates).

    images: (B, 3, H, W); source: (B, V, 2+) the face's vertices in pixels of ``images``; target:
    (B, V, 3) meshes in pixels of a ``size`` crop (or a (height, width) window, which costs only its
    own pixels). Returns the warped (B, 3, height, width) (0 where not covered) and the coverage
    (B, 1, height, width) in {0, 1}. Face swapping gives the generator
    another person's skin, eyes and brows where the mesh says, as a texture, not only as a style.
    """
    points, covered = texture_map(source, target, size)
    h, w = images.shape[-2:]
    scale = torch.tensor([max(w - 1, 1), max(h - 1, 1)], dtype=points.dtype, device=points.device)
    grid = points / scale * 2 - 1                                 # uncovered: sampled, then masked
    warped = torch.nn.functional.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                                             align_corners=True)
    mask = covered[:, None].float()
    return torch.nan_to_num(warped) * mask, mask


class MeshRenderer(nn.Module):
    """``render_mesh`` with the topology held as a buffer (follows ``.to(device)``)."""

    def __init__(self, size: int, triangles: Vertices | None = None, smooth: bool = True) -> None:
        super().__init__()
        self.size, self.smooth = size, smooth
        tris = _face_triangles() if triangles is None else torch.as_tensor(triangles)
        self.register_buffer("triangles", tris.long().clone(), persistent=False)

    def forward(self, vertices: Vertices) -> torch.Tensor:
        return render_mesh(vertices, self.size, self.triangles, self.smooth)


@torch.no_grad()
def _polygon_mask(vertices: Vertices, loop: tuple[int, ...], size: int, feather: float) -> torch.Tensor:
    """Soft (B, 1, size, size) mask inside the polygon of the vertex indices ``loop``."""
    v = _as_vertices(vertices)
    xy = v[:, list(loop), :2].detach().cpu().double().numpy()
    sigma = max(feather * size, 1e-3)
    out = np.zeros((len(xy), 1, size, size), np.float32)
    for i, poly in enumerate(xy):
        if not np.isfinite(poly).all():
            continue
        cv2.fillPoly(out[i, 0], [np.round(poly * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)
        out[i, 0] = cv2.GaussianBlur(out[i, 0], (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    return torch.from_numpy(out).clamp_(0, 1).to(v.device)


def mouth_mask(vertices: Vertices, size: int, feather: float = 0.02) -> torch.Tensor:
    """Soft (B, 1, size, size) mask of the lower face, below the nose and inside the face outline.

    vertices: (B, V >= 468, 3) Face Mesh in crop pixels (only x, y are used). ``feather`` is the
    Gaussian blur's sigma as a fraction of ``size``: 1 well inside, 0.5 on the outline, 0 away.
    """
    return _polygon_mask(vertices, LOWER_FACE, size, feather)


def face_mask(vertices: Vertices, size: int, feather: float = 0.02) -> torch.Tensor:
    """Soft (B, 1, size, size) mask of the whole face inside the Face Mesh oval: what face swapping
    redraws (the identity is in the eyes, nose and face shape, not only the mouth)."""
    return _polygon_mask(vertices, FACE_OVAL, size, feather)
