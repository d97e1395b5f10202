"""One-off: derive the Face Mesh triangles from MediaPipe's tessellation edges.

MediaPipe ships the canonical mesh's tessellation only as a set of edges
(``FACEMESH_TESSELATION``). The faces are the 3-cliques of that edge graph, minus the few
3-cliques that are not faces: a vertex of degree 3 inside a triangle makes a K4, whose outer
triangle is a cycle of edges with no face behind it (each of its edges then borders three
cliques instead of at most two). The result must be a manifold disk with three holes (both eyes
and the mouth) over the 468 face vertices; the triangles are then oriented consistently, with
normals towards the camera: counter-clockwise on screen, in image coordinates (x right, y down,
z away from the camera), ``cross(b - a, c - a)`` has a negative z.

Writes ``models/assets/facemesh_triangles.npy`` (int32, (F, 3)); the renderer loads it, so the
models package never imports mediapipe. Run: ``.venv/bin/python tools/make_facemesh_topology.py``.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict, deque
from pathlib import Path

import numpy as np
from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL, FACEMESH_TESSELATION

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "models" / "assets" / "facemesh_triangles.npy"
N_FACE = 468


def cliques(edges: set[tuple[int, int]]) -> set[tuple[int, int, int]]:
    adj = defaultdict(set)
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    return {tuple(sorted((a, b, c))) for a, b in edges for c in adj[a] & adj[b]}


def edge_counts(tris) -> Counter:
    return Counter(e for t in tris for e in itertools.combinations(sorted(t), 2))


def drop_non_faces(tris: set[tuple[int, int, int]]) -> set[tuple[int, int, int]]:
    """Remove the outer triangles of K4s: cliques all of whose edges border three cliques."""
    count = edge_counts(tris)
    fake = {t for t in tris if all(count[e] > 2 for e in itertools.combinations(t, 2))}
    faces = tris - fake
    assert max(edge_counts(faces).values()) <= 2, "not a manifold after removing the K4 outer triangles"
    return faces


def orient(tris: set[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Consistent orientation by flood fill: neighbours traverse their shared edge in opposite directions."""
    tris = list(tris)
    by_edge = defaultdict(list)
    for k, t in enumerate(tris):
        for e in itertools.combinations(t, 2):
            by_edge[e].append(k)
    out: dict[int, tuple[int, int, int]] = {0: tris[0]}
    queue = deque([0])
    while queue:
        k = queue.popleft()
        a, b, c = out[k]
        for u, v in ((a, b), (b, c), (c, a)):
            for j in by_edge[tuple(sorted((u, v)))]:
                if j in out:
                    continue
                x, y, z = tris[j]
                directed = {(x, y), (y, z), (z, x)}
                out[j] = (x, y, z) if (v, u) in directed else (x, z, y)
                queue.append(j)
    assert len(out) == len(tris), "the mesh is not connected"
    for k, (a, b, c) in out.items():  # every shared edge must now run both ways
        for u, v in ((a, b), (b, c), (c, a)):
            for j in by_edge[tuple(sorted((u, v)))]:
                if j != k:
                    x, y, z = out[j]
                    assert (v, u) in {(x, y), (y, z), (z, x)}, "the mesh is not orientable"
    return [out[k] for k in range(len(tris))]


def ordered_loop(edges) -> list[int]:
    adj = defaultdict(list)
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    loop = [10, min(adj[10], key=lambda v: v)]
    while True:
        nxt = [v for v in adj[loop[-1]] if v != loop[-2]][0]
        if nxt == loop[0]:
            return loop
        loop.append(nxt)


def main() -> None:
    edges = {tuple(sorted(e)) for e in FACEMESH_TESSELATION}
    all_cliques = cliques(edges)
    faces = drop_non_faces(all_cliques)
    count = edge_counts(faces)
    assert set(count) == edges, "some tessellation edge borders no face"
    boundary = [e for e, n in count.items() if n == 1]
    verts = {v for t in faces for v in t}
    euler = len(verts) - len(edges) + len(faces)
    print(f"{len(edges)} edges, {len(all_cliques)} 3-cliques, {len(faces)} faces, {len(boundary)} boundary edges, "
          f"Euler characteristic {euler}")
    assert verts == set(range(N_FACE)) and euler == -2, "expected a disk with three holes (eyes, mouth) over 468 vertices"

    tris = orient(faces)
    # Global sign: the face oval runs counter-clockwise on screen (top 10 -> image-left 109 -> ... ->
    # chin -> image-right), as the outer boundary of counter-clockwise faces does.
    directed = {(t[i], t[(i + 1) % 3]) for t in tris for i in range(3)}
    if (10, 109) not in directed:
        tris = [(a, c, b) for a, b, c in tris]
    assert (10, 109) in {(t[i], t[(i + 1) % 3]) for t in tris for i in range(3)}

    arr = np.array(sorted(tris, key=lambda t: sorted(t)), dtype=np.int32)
    assert len({tuple(sorted(t)) for t in arr.tolist()}) == len(arr), "duplicate triangles"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.save(OUT, arr)
    print(f"wrote {OUT.relative_to(REPO)}: {arr.shape} {arr.dtype}, {OUT.stat().st_size} bytes")

    oval = ordered_loop(FACEMESH_FACE_OVAL)
    from models.renderer import FACE_OVAL  # the renderer's copy of MediaPipe's face oval must agree
    assert oval in (list(FACE_OVAL), [FACE_OVAL[0], *FACE_OVAL[:0:-1]]), f"FACE_OVAL differs from MediaPipe's: {oval}"
    print("face oval (ordered):", oval)


if __name__ == "__main__":
    main()
