"""Synthetic surface defects on a point cloud, labelled point by point.

In the spirit of Ano3D (PLANE), Norm-AS (PO3AD) and the defect types of
Anomaly-ShapeNet, with every size relative to the object radius ``R``
(:func:`pipeline.geometry.object_radius`), so the same call fits a part of 1 mm or 1 m:

``bulge`` / ``concavity``
    A patch around a random surface point ``c`` is pushed out / in along each point's own
    normal by ``A · (1 - (d/ρ)²)²`` (``d`` = distance to ``c``, ``ρ`` in
    ``BULGE_RADIUS``·R, ``A`` in ``BULGE_AMPLITUDE``·R), faded out smoothly where a
    point's normal turns away from the normal at ``c`` (so the far wall of a thin part
    stays put).
``crack``
    A thin groove: points whose projection on the tangent plane at ``c`` lies within a
    half-width ``w`` of a wiggly planar curve are pushed inward by
    ``D · (1 - (t/w)²)² · (1 - s⁴)`` (``t`` distance to the curve, ``s`` ∈ [-1, 1] the
    position along it, so the groove tapers to nothing at both ends).
``scratch``
    The same groove, longer, nearly straight, much narrower and shallower.
``hole``
    Points within distance ``ρ`` of ``c`` whose normal agrees with the normal at ``c``
    (``dot >= HOLE_NORMAL_MIN``) are removed. The labelled points are the hole's **rim**:
    the kept points with the same normal agreement whose distance to ``c`` lies in
    ``[ρ, ρ + rim]``, with ``rim = max(HOLE_RIM·R, HOLE_RIM_SPACING × point spacing)`` —
    one ring a point or two thick around the removed disc.

"Point spacing" is the median nearest-neighbour distance
(:func:`pipeline.geometry.point_spacing`); crack and scratch half-widths never go below
``CRACK_SPACING`` / ``SCRATCH_SPACING`` spacings, so a groove always catches points.
``R`` is the 99th-percentile distance to the centroid (robust to stray points).

For the displacing kinds a point is labelled anomalous exactly when it moved by more
than ``LABEL_THRESHOLD · R``; its normal is updated from the gradient of the
displacement field (finite differences in its tangent plane), so shading shows the defect.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.spatial import cKDTree

from pipeline.geometry import object_radius, point_spacing, tangent_frame
from pipeline.ingest.constants import MIN_CLOUD_POINTS

#: Defect kinds, in their stable order.
ANOMALY_KINDS: tuple[str, ...] = ("bulge", "concavity", "hole", "crack", "scratch")

# --- tolerances and size ranges, all relative to the object radius R -----------------------
#: A point is anomalous when displaced by more than this × R.
LABEL_THRESHOLD = 0.002
#: Displacements fade from full (normal dot >= hi) to zero (dot <= lo) with the agreement
#: between a point's normal and the normal at the defect's centre.
NORMAL_FADE = (0.2, 0.5)
#: Bulge / concavity: patch radius and peak displacement.
BULGE_RADIUS = (0.15, 0.25)
BULGE_AMPLITUDE = (0.04, 0.10)
#: Hole: radius of the removed region; rim width (and its floor in point spacings).
HOLE_RADIUS = (0.08, 0.15)
HOLE_RIM = 0.02
HOLE_RIM_SPACING = 2.0
HOLE_NORMAL_MIN = 0.3
#: Crack: length, half-width (floor in point spacings), depth, sideways wiggle (× length).
CRACK_LENGTH = (0.35, 0.6)
CRACK_HALF_WIDTH = (0.01, 0.02)
CRACK_SPACING = 2.5
CRACK_DEPTH = (0.03, 0.06)
CRACK_WIGGLE = 0.08
#: Scratch: the same, longer, thinner, shallower, nearly straight.
SCRATCH_LENGTH = (0.5, 0.9)
SCRATCH_HALF_WIDTH = (0.004, 0.008)
SCRATCH_SPACING = 1.5
SCRATCH_DEPTH = (0.008, 0.015)
SCRATCH_WIGGLE = 0.015
#: Segments of a crack's or scratch's polyline.
CURVE_SEGMENTS = 48
#: Finite-difference step for the updated normals, × R.
GRADIENT_STEP = 1e-3
#: A defect must label at least this many points; a new centre is drawn otherwise.
MIN_LABELLED = 8
MAX_ATTEMPTS = 16
#: Fewest points a cloud needs to receive a defect: pad's minimum for any cloud (one policy for
#: synth, render and predict, see pipeline.ingest.constants.MIN_CLOUD_POINTS).
MIN_POINTS = MIN_CLOUD_POINTS
#: Points per block when measuring distances to a curve (bounds (B, segments) arrays).
CURVE_BLOCK = 8192


@dataclass
class Anomaly:
    """One synthesized defect.

    - ``points`` (N', 3) float32, ``normals`` (N', 3) float32, ``labels`` (N',) uint8:
      the defective cloud (N' = N except for holes)
    - ``keep`` (N,) bool: which input points survive, in order (``points`` =
      displaced ``input[keep]``)
    - ``displacement`` (N,) float32: how far each input point moved (0 for removed ones)
    - ``kind``, ``params``: JSON-ready description (centre, sizes in the cloud's units
      and relative to ``radius``)
    """
    points: np.ndarray
    normals: np.ndarray
    labels: np.ndarray
    keep: np.ndarray
    displacement: np.ndarray
    kind: str
    params: dict = field(default_factory=dict)


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _bump(t: np.ndarray) -> np.ndarray:
    """(1 - t²)² for |t| < 1, else 0: smooth fall-off with zero slope at 0 and 1."""
    return np.where(np.abs(t) < 1.0, (1.0 - np.minimum(t * t, 1.0)) ** 2, 0.0)


def _tangents(normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-point orthonormal tangent vectors of (M, 3) unit normals: two (M, 3) arrays."""
    helper = np.zeros_like(normals)
    use_x = np.abs(normals[:, 0]) < 0.9
    helper[use_x, 0] = 1.0
    helper[~use_x, 1] = 1.0
    t1 = np.cross(normals, helper)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    return t1, np.cross(normals, t1)


def _displace(points: np.ndarray, normals: np.ndarray, height: Callable[[np.ndarray], np.ndarray],
              weight: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move (M, 3) ``points`` along their (M, 3) unit ``normals`` by ``height(points) * weight``.

    ``height`` maps (M, 3) positions to (M,) signed heights. The new normals tilt against
    the height gradient in each point's tangent plane (central differences of ``step``).
    Returns new points (M, 3), new normals (M, 3), signed displacements (M,) and a (M,) bool
    mask of the points the field touches (non-zero height or slope); the others are returned
    unchanged, bit for bit.
    """
    h = height(points) * weight
    t1, t2 = _tangents(normals)
    g1 = (height(points + step * t1) - height(points - step * t1)) * weight / (2 * step)
    g2 = (height(points + step * t2) - height(points - step * t2)) * weight / (2 * step)
    touched = (h != 0) | (g1 != 0) | (g2 != 0)
    new_normals = normals - g1[:, None] * t1 - g2[:, None] * t2
    new_normals /= np.linalg.norm(new_normals, axis=1, keepdims=True)
    new_normals[~touched] = normals[~touched]
    return points + h[:, None] * normals, new_normals, h, touched


def _curve(rng: np.random.Generator, length: float, wiggle: float, jagged: bool) -> np.ndarray:
    """A planar polyline of CURVE_SEGMENTS segments along x, centred at the origin: (K+1, 2)."""
    s = np.linspace(-1.0, 1.0, CURVE_SEGMENTS + 1)
    y = wiggle * np.sin(np.pi * rng.uniform(0.5, 1.5) * s + rng.uniform(0, 2 * np.pi))
    if jagged:  # a smoothed random walk, pinned to zero mean
        walk = np.cumsum(rng.normal(size=s.shape)) * wiggle / np.sqrt(CURVE_SEGMENTS)
        y = y + walk - walk.mean()
    return np.column_stack([s, y]) * (length / 2)


def _curve_distance(uv: np.ndarray, curve: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from (M, 2) points to a (K+1, 2) polyline and the position along it in
    [-1, 1] (by segment index and fraction): two (M,) arrays."""
    a, b = curve[:-1], curve[1:]
    ab = b - a
    denom = np.maximum((ab * ab).sum(axis=1), 1e-30)
    dist = np.empty(len(uv))
    pos = np.empty(len(uv))
    for start in range(0, len(uv), CURVE_BLOCK):
        p = uv[start:start + CURVE_BLOCK, None, :]                      # (B, 1, 2)
        t = np.clip(((p - a) * ab).sum(axis=2) / denom, 0.0, 1.0)       # (B, K)
        d2 = ((a + t[..., None] * ab - p) ** 2).sum(axis=2)
        j = d2.argmin(axis=1)
        rows = np.arange(len(j))
        dist[start:start + CURVE_BLOCK] = np.sqrt(d2[rows, j])
        pos[start:start + CURVE_BLOCK] = (j + t[rows, j]) / len(ab) * 2.0 - 1.0
    return dist, pos


def _one_attempt(pts: np.ndarray, nrm: np.ndarray, kind: str, rng: np.random.Generator,
                 radius: float, spacing: float, tree: cKDTree):
    """One random placement on (N, 3) float64 points and unit normals.

    Returns (changed (N,) bool, new points (N, 3), new normals (N, 3), keep (N,) bool,
    displacement (N,), labels (N',) uint8, params, ok); rows not ``changed`` are copies.
    """
    n = len(pts)
    ci = int(rng.integers(n))
    c, nc = pts[ci], nrm[ci]
    agree = nrm @ nc                                                    # (N,)
    params: dict = {"center": [float(v) for v in c], "center_normal": [float(v) for v in nc],
                    "object_radius": radius}
    keep = np.ones(n, dtype=bool)
    changed = np.zeros(n, dtype=bool)
    disp = np.zeros(n)
    new_pts, new_nrm = pts.copy(), nrm.copy()
    threshold = LABEL_THRESHOLD * radius

    if kind == "hole":
        rho = rng.uniform(*HOLE_RADIUS) * radius
        rim = max(HOLE_RIM * radius, HOLE_RIM_SPACING * spacing)
        idx = np.asarray(tree.query_ball_point(c, rho + rim), dtype=np.int64)
        d = np.linalg.norm(pts[idx] - c, axis=1)
        same_side = agree[idx] >= HOLE_NORMAL_MIN
        keep[idx[same_side & (d < rho)]] = False
        rim_mask = np.zeros(n, dtype=bool)
        rim_mask[idx[same_side & (d >= rho)]] = True
        params.update(hole_radius=rho, rim_width=rim, rel_hole_radius=rho / radius,
                      n_removed=int((~keep).sum()))
        labels = rim_mask[keep].astype(np.uint8)
        ok = (~keep).sum() >= MIN_LABELLED and labels.sum() >= MIN_LABELLED
        return changed, new_pts, new_nrm, keep, disp, labels, params, ok

    fade = _smoothstep(NORMAL_FADE[0], NORMAL_FADE[1], agree)
    if kind in ("bulge", "concavity"):
        rho = rng.uniform(*BULGE_RADIUS) * radius
        amp = rng.uniform(*BULGE_AMPLITUDE) * radius * (1.0 if kind == "bulge" else -1.0)
        idx = np.asarray(tree.query_ball_point(c, rho), dtype=np.int64)

        def height(x):
            return amp * _bump(np.linalg.norm(x - c, axis=1) / rho)
        params.update(patch_radius=rho, amplitude=amp, rel_patch_radius=rho / radius,
                      rel_amplitude=amp / radius)
    elif kind in ("crack", "scratch"):
        crack = kind == "crack"
        length = rng.uniform(*(CRACK_LENGTH if crack else SCRATCH_LENGTH)) * radius
        half = max(rng.uniform(*(CRACK_HALF_WIDTH if crack else SCRATCH_HALF_WIDTH)) * radius,
                   (CRACK_SPACING if crack else SCRATCH_SPACING) * spacing)
        depth = -rng.uniform(*(CRACK_DEPTH if crack else SCRATCH_DEPTH)) * radius
        curve = _curve(rng, length, CRACK_WIGGLE if crack else SCRATCH_WIGGLE, jagged=crack)
        e1, e2 = tangent_frame(nc, rng)
        margin = half + 2 * GRADIENT_STEP * radius
        # the groove is defined in the tangent-plane chart; a curved surface leaves that plane,
        # so gather generously in 3D and keep what projects into the curve's box
        reach = 2.0 * (float(np.linalg.norm(np.abs(curve).max(axis=0))) + margin)
        idx = np.asarray(tree.query_ball_point(c, reach), dtype=np.int64)
        rel = pts[idx] - c
        near = ((np.abs(rel @ e1) <= np.abs(curve[:, 0]).max() + margin)
                & (np.abs(rel @ e2) <= np.abs(curve[:, 1]).max() + margin))
        idx = idx[near]

        def height(x):
            rel = x - c
            dist, pos = _curve_distance(np.column_stack([rel @ e1, rel @ e2]), curve)
            return depth * _bump(dist / half) * (1.0 - pos ** 4)
        params.update(length=length, half_width=half, depth=depth, rel_length=length / radius,
                      rel_half_width=half / radius, rel_depth=depth / radius,
                      chart_axes=[[float(v) for v in e1], [float(v) for v in e2]],
                      curve=[[float(u), float(v)] for u, v in curve])
    else:
        raise ValueError(f"unknown anomaly kind {kind!r}; choose from {', '.join(ANOMALY_KINDS)}")

    idx = idx[fade[idx] > 0]
    moved_pts, moved_nrm, h, touched = _displace(pts[idx], nrm[idx], height, fade[idx], GRADIENT_STEP * radius)
    new_pts[idx], new_nrm[idx], disp[idx], changed[idx] = moved_pts, moved_nrm, np.abs(h), touched
    labels = (disp > threshold).astype(np.uint8)
    params["label_threshold"] = threshold
    return changed, new_pts, new_nrm, keep, disp, labels, params, labels.sum() >= MIN_LABELLED


def synthesize_anomaly(points: np.ndarray, normals: np.ndarray, kind: str,
                       rng: np.random.Generator) -> Anomaly:
    """Put one defect of ``kind`` (see :data:`ANOMALY_KINDS`) on a cloud.

    ``points`` (N, 3) float, ``normals`` (N, 3) float (unit, outward), N >= MIN_POINTS.
    The centre is a random point; a placement labelling fewer than MIN_LABELLED points
    (on a thin part, or where the cloud is sparse) is redrawn, up to MAX_ATTEMPTS times,
    after which the largest one is kept (ValueError if none labels a point). The inputs
    are not modified, and the points and normals the defect does not touch come back bit
    for bit (as float32).
    """
    if kind not in ANOMALY_KINDS:
        raise ValueError(f"unknown anomaly kind {kind!r}; choose from {', '.join(ANOMALY_KINDS)}")
    out_pts = np.array(points, dtype=np.float32).reshape(-1, 3)
    out_nrm = np.array(normals, dtype=np.float32).reshape(-1, 3)
    pts, nrm = out_pts.astype(np.float64), out_nrm.astype(np.float64)
    if len(pts) < MIN_POINTS:
        raise ValueError(f"a cloud needs at least {MIN_POINTS} points to receive a defect, got {len(pts)}")
    if nrm.shape != pts.shape:
        raise ValueError(f"normals have shape {nrm.shape}, points {pts.shape}")
    if not np.ptp(pts, axis=0).any():
        raise ValueError("all points coincide")
    nrm = nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    radius = object_radius(pts)
    tree = cKDTree(pts)
    spacing = point_spacing(pts, rng, tree)
    best = None
    for _ in range(MAX_ATTEMPTS):
        result = _one_attempt(pts, nrm, kind, rng, radius, spacing, tree)
        if best is None or result[5].sum() > best[5].sum():
            best = result
        if result[-1]:
            break
    changed, new_pts, new_nrm, keep, disp, labels, params, _ = best
    if not labels.any():
        raise ValueError(f"no placement of a {kind} labelled any point in {MAX_ATTEMPTS} attempts "
                         "(a degenerate or very sparse cloud?)")
    params.update(kind=kind, n_labelled=int(labels.sum()), spacing=spacing)
    out_pts[changed] = new_pts[changed]
    out_nrm[changed] = new_nrm[changed]
    return Anomaly(out_pts[keep], out_nrm[keep], labels.astype(np.uint8), keep, disp.astype(np.float32),
                   kind, params)


def add_anomaly(points: np.ndarray, normals: np.ndarray, kind: str,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`synthesize_anomaly`, returning only the defective cloud:
    points (N', 3) float32, normals (N', 3) float32, labels (N',) uint8 (N' < N for holes)."""
    result = synthesize_anomaly(points, normals, kind, rng)
    return result.points, result.normals, result.labels
