"""Triangle meshes as input: read them (``.obj .stl .off .glb`` with trimesh, ``.ply`` with faces
through the PLY reader) and sample their surface into a point cloud.

Sampling (:func:`sample_surface`) is area-weighted: each point falls on a face with probability
proportional to the face's area, at a uniform position inside it, all drawn at once from
``numpy.random.default_rng(seed)``; the same mesh, point count and seed give the same points.
A point's normal is its face's normal; its label (for a PLY whose vertices carry ``label``) is
the label of the face's vertex it is nearest to in barycentric terms (the largest weight).

A mesh file is data: it is parsed from its bytes alone (trimesh gets an in-memory copy, with no
path, so an ``.obj`` never pulls in its ``.mtl`` or textures, and nothing is fetched or run).
A mesh file without faces (an ``.obj``/``.off`` holding only vertices) is read as the point
cloud of its vertices, as a ``.ply`` without faces is.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import warnings
from dataclasses import dataclass

import numpy as np

from .cloud import fail, wrap
from .constants import MAX_MESH_POINTS, MIN_CLOUD_POINTS

#: Mesh file types read with trimesh (``.ply`` is read by the PLY reader, a mesh when it has faces).
MESH_EXTENSIONS = (".obj", ".stl", ".off", ".glb")


@dataclass
class Mesh:
    """A triangle mesh as read from a file.

    - ``vertices``: (V, 3) float64
    - ``faces``: (F, 3) int64, indices into ``vertices`` (F may be 0: a file of vertices only)
    - ``vertex_labels``: (V,) {0, 1} or None
    """
    vertices: np.ndarray
    faces: np.ndarray
    vertex_labels: np.ndarray | None = None


@dataclass
class MeshSample:
    """What :func:`sample_mesh` drew: ``points`` (n, 3) float32, ``normals`` (n, 3) float32,
    ``labels`` (n,) uint8 or None, and the mesh's size: ``n_vertices``, ``n_faces`` (faces
    sampled from), ``n_bad_vertices`` (vertices with a NaN/Inf coordinate) and ``n_faces_dropped``
    (faces left out because they use one)."""
    points: np.ndarray
    normals: np.ndarray
    labels: np.ndarray | None
    n_vertices: int
    n_faces: int
    n_bad_vertices: int = 0
    n_faces_dropped: int = 0


#: The sampling rule, part of a rendered mesh sample's identity (change it when the rule changes).
SAMPLING_RULE = "area-weighted uniform surface points, face normals, nearest-corner labels (pad 1)"


def sampling_identity(n: int, seed: int) -> str:
    """The text that identifies how a mesh's cloud is drawn: rule, point count, seed."""
    return f"{SAMPLING_RULE}; points {int(n)}; seed {int(seed)}"


def check_mesh_points(n: int) -> int:
    """``--mesh-points`` checked: between MIN_CLOUD_POINTS and MAX_MESH_POINTS (PadError otherwise)."""
    from data_cache.errors import PadError

    if not MIN_CLOUD_POINTS <= int(n) <= MAX_MESH_POINTS:
        raise PadError(f"--mesh-points must be between {MIN_CLOUD_POINTS} and {MAX_MESH_POINTS}, got {n}")
    return int(n)


# --------------------------------------------------------------------------- sampling
def triangle_areas(triangles: np.ndarray) -> np.ndarray:
    """(F, 3, 3) float triangle corners -> (F,) float64 areas."""
    t = np.asarray(triangles, np.float64)
    return 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points drawn uniformly over the surface of a triangle mesh.

    ``vertices`` (V, 3) float, ``faces`` (F, 3) int with at least one face of positive area.
    Faces are chosen with probability area / total area, then a point uniformly inside the face
    (two uniforms folded into the triangle). Returns ``points`` (n, 3) float64, ``normals`` (n, 3)
    float64 (unit face normals), ``face`` (n,) int64 and ``bary`` (n, 3) float64 (barycentric
    weights of the face's corners)."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)]          # (F, 3, 3)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])              # (F, 3): twice the area, normal
    area = 0.5 * np.linalg.norm(cross, axis=1)                                   # as triangle_areas
    cdf = np.cumsum(area)
    rng = np.random.default_rng(seed)
    face = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    face = np.minimum(face, len(cdf) - 1)
    uv = rng.random((n, 2))
    fold = uv.sum(axis=1) > 1.0
    uv[fold] = 1.0 - uv[fold]
    bary = np.column_stack([1.0 - uv.sum(axis=1), uv])
    points = np.einsum("nk,nkd->nd", bary, tri[face])
    normals = cross[face] / np.linalg.norm(cross[face], axis=1, keepdims=True)
    return points, normals, face.astype(np.int64), bary


def sample_mesh(path: str, mesh: Mesh, n: int, seed: int) -> MeshSample:
    """Sample ``n`` points on ``mesh`` (read from ``path``, named in errors): faces using a vertex
    with a NaN/Inf coordinate are left out (and counted); PadError for indices out of range or a
    mesh whose remaining faces have no area."""
    vertices = np.asarray(mesh.vertices, np.float64)
    faces = np.asarray(mesh.faces, np.int64).reshape(-1, 3)
    n_vertices = int(vertices.shape[0])
    if faces.size and (faces.min() < 0 or faces.max() >= n_vertices):
        raise fail(path, f"has faces that index vertices outside 0..{n_vertices - 1}")
    with np.errstate(over="ignore", invalid="ignore"):  # a coordinate past float32's range counts as Inf
        finite = np.isfinite(vertices.astype(np.float32)).all(axis=1)
    usable = finite[faces].all(axis=1)
    kept = faces[usable]
    if not kept.size:
        raise fail(path, f"has no face whose vertices all have finite coordinates ({int((~finite).sum())} of "
                         f"{n_vertices} vertices are NaN/Inf)")
    area = triangle_areas(vertices[kept])
    if not area.sum() > 0:
        raise fail(path, "is a mesh without surface: every face has zero area")
    positive = kept[area > 0]
    points, normals, face, bary = sample_surface(vertices, positive, n, seed)
    labels = None
    if mesh.vertex_labels is not None:
        corner = positive[face, np.argmax(bary, axis=1)]
        labels = np.asarray(mesh.vertex_labels, np.uint8)[corner]
    return MeshSample(points=points.astype(np.float32), normals=normals.astype(np.float32), labels=labels,
                      n_vertices=n_vertices, n_faces=int(positive.shape[0]),
                      n_bad_vertices=int((~finite).sum()), n_faces_dropped=int(faces.shape[0] - kept.shape[0]))


# --------------------------------------------------------------------------- reading
def triangulate(polygons) -> np.ndarray:
    """Faces of any size -> (F', 3) int64 triangles, each polygon as a fan from its first corner.
    ``polygons``: an (F, k) int array, or a sequence of 1D index arrays (mixed sizes)."""
    if isinstance(polygons, np.ndarray) and polygons.dtype != object and polygons.ndim == 2:
        groups = [polygons.astype(np.int64)]
    else:
        lists = [np.asarray(p, np.int64).reshape(-1) for p in polygons]
        sizes = np.array([len(p) for p in lists], np.int64)
        groups = [np.stack([p for p, s in zip(lists, sizes) if s == k]) for k in np.unique(sizes) if k >= 3]
    out = []
    for g in groups:
        k = g.shape[1]
        if k < 3:
            continue
        fan = np.arange(1, k - 1)
        out.append(np.stack([np.repeat(g[:, :1], k - 2, axis=1), g[:, fan], g[:, fan + 1]], axis=2).reshape(-1, 3))
    return np.concatenate(out) if out else np.zeros((0, 3), np.int64)


def _check_stl(path: str, data: bytes) -> None:
    """Refuse a binary STL whose triangle count needs more bytes than the file holds (before parsing)."""
    if data[:5].lower() == b"solid" and b"facet" in data[:4096].lower():
        return  # ASCII
    if len(data) < 84:
        raise fail(path, "is not an STL file (shorter than the 84-byte binary header)")
    count = struct.unpack("<I", data[80:84])[0]
    if 84 + 50 * count > len(data):
        raise fail(path, f"is truncated: its header declares {count} triangles ({84 + 50 * count} bytes), "
                         f"the file holds {len(data)}")


@contextlib.contextmanager
def _quiet_trimesh():
    """trimesh's log (warnings and tracebacks about a damaged file) silenced while it reads one."""
    logger = logging.getLogger("trimesh")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def read_mesh_file(path: str) -> Mesh:
    """Read an ``.obj .stl .off .glb`` file into a :class:`Mesh` (every part of a scene, with its
    placement, in one mesh). PadError naming the file for anything wrong with it."""
    import trimesh

    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise wrap(path, "the file", exc) from exc
    if ext == ".stl":
        _check_stl(path, data)
    try:
        # bytes without a name: trimesh gets no path, so it reads no neighbouring file (.mtl, textures);
        # its log stays quiet (a damaged file is one PadError line, not trimesh's traceback)
        with _quiet_trimesh():
            scene = trimesh.load_scene(io.BytesIO(data), file_type=ext[1:], process=False)
            parts = scene.dump(concatenate=False) if len(scene.geometry) else []
    except MemoryError as exc:
        raise fail(path, "too large to read into memory") from exc
    except Exception as exc:  # trimesh raises many types on a damaged file
        raise wrap(path, f"the {ext} file", exc) from exc
    vertices, faces, offset = [], [], 0
    for part in parts:
        v = np.asarray(getattr(part, "vertices", np.zeros((0, 3))), np.float64).reshape(-1, 3)
        f = np.asarray(getattr(part, "faces", np.zeros((0, 3))), np.int64).reshape(-1, 3) \
            if isinstance(part, trimesh.Trimesh) else np.zeros((0, 3), np.int64)
        vertices.append(v)
        faces.append(f + offset)
        offset += len(v)
    if not offset:
        raise fail(path, f"holds no vertices (no geometry in this {ext} file)")
    return Mesh(np.concatenate(vertices), np.concatenate(faces))
