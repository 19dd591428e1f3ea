"""Procedural objects for the built-in synthetic dataset, sampled into point clouds.

Each class is a family of trimesh meshes whose proportions are drawn per sample
(a capsule's length-to-radius ratio, a torus's tube radius, ...). A cloud is drawn
from the surface with area-weighted sampling under a smooth random density field,
then normalized, scaled, rotated, translated and jittered, all from the passed
:class:`numpy.random.Generator`. Normals are exact where the surface is analytic
(sphere, capsule, torus, rounded box) and otherwise barycentric interpolations of
the vertex normals of a smooth-shaded mesh (sharp at creases such as a cylinder's rim).

Class names in :data:`SHAPE_CLASSES` are stable: new classes are only ever appended.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import trimesh
from trimesh.graph import smooth_shade

from pipeline.geometry import random_rotation

#: Dihedral angle above which two faces meet at a sharp crease (normals not smoothed across it).
CREASE_ANGLE = np.radians(30.0)
#: Sections around the axis of revolved meshes.
SECTIONS = 96
#: Per-sample uniform scale range (after normalizing the object radius to 1).
SCALE_RANGE = (0.8, 1.25)
#: Per-sample translation range per axis, in units of the (scaled) radius.
TRANSLATION_RANGE = 0.1
#: Per-sample isotropic Gaussian jitter: std drawn uniformly in [0, NOISE_MAX] × radius.
NOISE_MAX = 0.003
#: Density field ``1 + a·sin(k·x + φ)``: amplitude a in [0, DENSITY_AMPLITUDE_MAX],
#: spatial frequency |k| in DENSITY_FREQUENCY_RANGE (cycles per radius × 2π).
DENSITY_AMPLITUDE_MAX = 0.6
DENSITY_FREQUENCY_RANGE = (1.0, 3.0)


@dataclass
class _Geometry:
    """Triangles with per-vertex normals, split into parts (for composites).

    ``vertices`` (V, 3) float64, ``faces`` (F, 3) int, ``vertex_normals`` (V, 3) float64,
    ``face_part`` (F,) int. ``project(points) -> (points, normals)`` snaps samples onto an
    analytic surface; ``keep(points, part) -> (n,) bool`` drops samples buried inside
    another part of a composite.
    """
    vertices: np.ndarray
    faces: np.ndarray
    vertex_normals: np.ndarray
    face_part: np.ndarray
    project: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    keep: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None


def _shaded(*meshes: trimesh.Trimesh, **kwargs) -> _Geometry:
    """Concatenate meshes (part i = i-th mesh) after smooth shading each with outward normals."""
    verts, faces, normals, parts = [], [], [], []
    offset = 0
    for part, mesh in enumerate(meshes):
        if mesh.volume < 0:
            mesh.invert()
        shaded = smooth_shade(mesh, angle=CREASE_ANGLE, facet_minarea=None)
        verts.append(np.asarray(shaded.vertices, dtype=np.float64))
        faces.append(np.asarray(shaded.faces) + offset)
        normals.append(np.asarray(shaded.vertex_normals, dtype=np.float64))
        parts.append(np.full(len(shaded.faces), part))
        offset += len(shaded.vertices)
    return _Geometry(np.concatenate(verts), np.concatenate(faces), np.concatenate(normals),
                     np.concatenate(parts), **kwargs)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _revolve(profile: np.ndarray) -> trimesh.Trimesh:
    """Surface of revolution about z of a (n, 2) (radius, z) polyline running from axis to axis."""
    return trimesh.creation.revolve(np.asarray(profile, dtype=np.float64), sections=SECTIONS)


# --- the classes ------------------------------------------------------------------------------

def _sphere(rng: np.random.Generator) -> _Geometry:
    def project(p):
        n = _unit(p)
        return n.copy(), n
    return _shaded(trimesh.creation.icosphere(subdivisions=4), project=project)


def _capsule(rng: np.random.Generator) -> _Geometry:
    radius = rng.uniform(0.3, 0.5)
    half = 1.0 - radius  # half-length of the core segment

    def project(p):
        core = np.zeros_like(p)
        core[:, 2] = np.clip(p[:, 2], -half, half)
        n = _unit(p - core)
        return core + radius * n, n
    mesh = trimesh.creation.capsule(height=2 * half, radius=radius, count=[48, 48])
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    return _shaded(mesh, project=project)


def _torus(rng: np.random.Generator) -> _Geometry:
    minor = rng.uniform(0.22, 0.38)
    major = 1.0 - minor

    def project(p):
        flat = p.copy()
        flat[:, 2] = 0.0
        core = major * _unit(flat)
        n = _unit(p - core)
        return core + minor * n, n
    return _shaded(trimesh.creation.torus(major, minor, major_sections=96, minor_sections=48), project=project)


def _rounded_box(rng: np.random.Generator) -> _Geometry:
    half = rng.uniform(0.45, 1.0, size=3)
    half /= np.linalg.norm(half)
    radius = rng.uniform(0.1, 0.25) * half.min()
    inner = half - radius  # the box whose Minkowski sum with a ball of `radius` is the object

    def project(p):
        core = np.clip(p, -inner, inner)
        n = _unit(p - core)
        return core + radius * n, n
    box = trimesh.creation.box(extents=2 * half)
    verts, faces = trimesh.remesh.subdivide_to_size(box.vertices, box.faces, max_edge=radius)
    verts, _ = project(np.asarray(verts, dtype=np.float64))
    return _shaded(trimesh.Trimesh(verts, faces), project=project)


def _cylinder(rng: np.random.Generator) -> _Geometry:
    aspect = rng.uniform(0.5, 2.0)  # half-height / radius
    radius = 1.0 / np.hypot(1.0, aspect)
    return _shaded(trimesh.creation.cylinder(radius=radius, height=2 * aspect * radius, sections=SECTIONS))


def _dumbbell(rng: np.random.Generator) -> _Geometry:
    ball = rng.uniform(0.28, 0.38)
    bar = rng.uniform(0.35, 0.55) * ball
    centre = 1.0 - ball
    phi0 = np.arccos(bar / ball)  # latitude where the ball meets the bar
    low = np.linspace(-np.pi / 2, phi0, 40)
    high = np.linspace(-phi0, np.pi / 2, 40)
    profile = np.concatenate([
        np.column_stack([ball * np.cos(low), -centre + ball * np.sin(low)]),
        np.column_stack([ball * np.cos(high), centre + ball * np.sin(high)]),
    ])
    profile[[0, -1], 0] = 0.0
    return _shaded(_revolve(profile))


def _mug(rng: np.random.Generator) -> _Geometry:
    wall = rng.uniform(0.08, 0.12)
    height = rng.uniform(1.6, 2.4)
    cup = _revolve([[0.0, 0.0], [1.0, 0.0], [1.0, height], [1.0 - wall, height],
                    [1.0 - wall, wall], [0.0, wall]])
    tube = rng.uniform(0.08, 0.12)
    ring = rng.uniform(0.3, 0.42) * height  # handle ring radius, centred at mid-height
    centre = np.array([1.0 + 0.55 * ring, 0.0, height / 2])
    handle = trimesh.creation.torus(ring, tube, major_sections=64, minor_sections=24)
    handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    handle.apply_translation(centre)

    def keep(p, part):
        radial = np.hypot(p[:, 0], p[:, 1])
        d = p - centre
        in_handle = (np.hypot(d[:, 0], d[:, 2]) - ring) ** 2 + d[:, 1] ** 2 < tube ** 2
        outer_wall = radial > 1.0 - wall / 2
        # the handle's buried part goes; so does the outer wall inside the handle's tube
        return np.where(part == 0, ~(in_handle & outer_wall), radial >= 1.0)
    return _shaded(cup, handle, keep=keep)


def _bottle(rng: np.random.Generator) -> _Geometry:
    height = rng.uniform(2.2, 3.2)
    neck = rng.uniform(0.3, 0.45)
    shoulder = rng.uniform(0.5, 0.65) * height
    length = rng.uniform(0.4, 0.7)
    z = np.linspace(0.0, height, 97)
    t = np.clip((z - shoulder) / length, 0.0, 1.0)
    r = 1.0 + (neck - 1.0) * 0.5 * (1 - np.cos(np.pi * t))
    profile = np.concatenate([[[0.0, 0.0]], np.column_stack([r, z]), [[0.0, height]]])
    return _shaded(_revolve(profile))


def _bowl(rng: np.random.Generator) -> _Geometry:
    wall = rng.uniform(0.06, 0.1)
    opening = np.radians(rng.uniform(60.0, 85.0))  # polar angle of the rim from the bottom
    phi = np.linspace(0.0, opening, 48)
    outer = np.column_stack([np.sin(phi), -np.cos(phi)])
    inner = (1.0 - wall) * outer[::-1]
    return _shaded(_revolve(np.concatenate([outer, inner])))


_BUILDERS: dict[str, Callable[[np.random.Generator], _Geometry]] = {
    "sphere": _sphere,
    "capsule": _capsule,
    "torus": _torus,
    "rounded_box": _rounded_box,
    "cylinder": _cylinder,
    "dumbbell": _dumbbell,
    "mug": _mug,
    "bottle": _bottle,
    "bowl": _bowl,
}
#: Procedural classes in their stable order (``pad synth --classes N`` takes the first N).
SHAPE_CLASSES: tuple[str, ...] = tuple(_BUILDERS)


# --- sampling ---------------------------------------------------------------------------------

def _sample(geom: _Geometry, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-weighted samples under a random smooth density field: (n, 3) points and
    (n, 3) unit normals, float64."""
    tri = geom.vertices[geom.faces]                                    # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    direction = _unit(rng.normal(size=3))
    freq = rng.uniform(*DENSITY_FREQUENCY_RANGE)
    amp = rng.uniform(0.0, DENSITY_AMPLITUDE_MAX)
    density = 1.0 + amp * np.sin(freq * tri.mean(axis=1) @ direction + rng.uniform(0, 2 * np.pi))
    cdf = np.cumsum(area * density)
    points, normals = [], []
    have = 0
    while have < n:  # composites drop buried samples: draw again until enough survive
        m = int((n - have) * 1.3) + 16
        face = np.minimum(np.searchsorted(cdf, rng.random(m) * cdf[-1], side="right"), len(cdf) - 1)
        uv = rng.random((m, 2))
        flip = uv.sum(axis=1) > 1.0
        uv[flip] = 1.0 - uv[flip]
        bary = np.column_stack([1.0 - uv.sum(axis=1), uv])             # (m, 3)
        p = np.einsum("mk,mkd->md", bary, tri[face])
        nrm = _unit(np.einsum("mk,mkd->md", bary, geom.vertex_normals[geom.faces[face]]))
        if geom.project is not None:
            p, nrm = geom.project(p)
        if geom.keep is not None:
            ok = geom.keep(p, geom.face_part[face])
            p, nrm = p[ok], nrm[ok]
        points.append(p)
        normals.append(nrm)
        have += len(p)
    return np.concatenate(points)[:n], np.concatenate(normals)[:n]


def make_shape(cls: str, n_points: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random member of procedural class ``cls`` as a surface-sampled cloud.

    Proportions, sampling density field, scale (radius in ``SCALE_RANGE`` after
    normalizing to 1), pose (uniform rotation, small translation) and Gaussian jitter
    (std up to ``NOISE_MAX`` × radius) are all drawn from ``rng``.

    Returns ``points`` (n_points, 3) float32 and unit outward ``normals`` (n_points, 3)
    float32 (normals are those of the clean surface; the jitter moves points only).
    """
    if cls not in _BUILDERS:
        raise ValueError(f"unknown shape class {cls!r}; choose from {', '.join(SHAPE_CLASSES)}")
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    points, normals = _sample(_BUILDERS[cls](rng), int(n_points), rng)
    centre = points.mean(axis=0)
    radius = np.linalg.norm(points - centre, axis=1).max()
    scale = rng.uniform(*SCALE_RANGE) / max(radius, 1e-12)
    rot = random_rotation(rng)
    shift = rng.uniform(-TRANSLATION_RANGE, TRANSLATION_RANGE, size=3) * scale * radius
    points = ((points - centre) * scale) @ rot.T + shift
    normals = normals @ rot.T
    points += rng.normal(size=points.shape) * (rng.uniform(0.0, NOISE_MAX) * scale * radius)
    return points.astype(np.float32), normals.astype(np.float32)
