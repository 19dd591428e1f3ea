"""Point visibility from the rendered depth buffer, and the 2D ground truth from
the index map (no second render pass).

Visibility rule: point i is visible in a view when its own splat is the
front-most surface where it lands, up to a tolerance tied to the splat size.
Concretely, with (row, col) its projection at render resolution and z its
camera depth, its splat plane is evaluated at the centre of the render pixel it
falls in (z' = z + the plane's depth slope × the sub-pixel offset; skipped for
splats seen almost edge-on, |n_z| < ``EDGE_ON_COS``) and

    visible = inside the image  and  |depth_buffer[pixel] − z'| ≤ tol_i,
    tol_i = max(VIS_TOL × h_i, NOISE_TOL × σ_i / max(|cos θ_i|, COS_FLOOR))

(h_i the splat half-size, σ_i the local thickness of the surface — the standard
deviation of the point's neighbourhood along its normal, large for noisy scans —
both in world units, θ_i the angle between normal and view; background pixels
never match). Measured on a sphere with Gaussian noise of 27% of the point
spacing, the gap between a point and the front-most splat, times |cos θ|, is
about 1.3σ at the median and 2.8σ at the 90th percentile, whatever θ.

All points of the visible surface that share a pixel are visible. Keeping only
the nearest point per pixel (the reference's way, :func:`nearest_per_pixel_loop`,
kept for the benchmark) drops the others and, where no front point lands in a
pixel, marks a back-facing point behind the surface as visible.

2D ground truth: a pixel is anomalous when its centre lies inside the splat of a
visible anomalous point (the same square in the same tangent plane as rendered,
projected with the same camera) and that splat is the front surface there
(its depth at the pixel centre matches the front-most depth of the pixel within
the point's tolerance). The pixel a visible anomalous point maps to is always
marked. This is what a second, flat-shaded render of the labels would show,
except that where an anomalous and a normal splat overlap at equal depth the
pixel counts as anomalous.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.render.cameras import camera_arrays
from pipeline.render.projection import pixel_index, project, project_rows, rotate_rows

VIS_TOL = 0.5           # depth tolerance, × the splat half-size ...
NOISE_TOL = 4.0         # ... or × the local thickness of the surface (÷ |cos|), whichever is larger
COS_FLOOR = 0.2         # floor of |cos(normal, view)| in that conversion
EDGE_ON_COS = 0.1       # splats with |n·view| below this are not extrapolated
GT_MAX_RADIUS = 12      # cap of the footprint search radius (output pixels)
GT_CHUNK = 200_000      # (point, offset) pairs per footprint batch


def view_geometry(points_rows: np.ndarray, normals_rows: np.ndarray, camera: dict, supersample: int,
                  height: int, width: int) -> dict:
    """Projection of every point into one view.

    ``points_rows``, ``normals_rows``: (3, N) float64 coordinate rows
    (:func:`pipeline.render.projection.rows`). Returns a dict: ``row``, ``col`` (N,)
    float64 at render resolution (``supersample`` × output), ``depth`` (N,) camera z,
    ``prow``, ``pcol`` (N,) int64 render pixel (clamped), ``inside`` (N,) bool,
    ``nx``, ``ny``, ``nz`` (N,) normals in camera coordinates, ``perspective``, and the
    render-resolution focal lengths ``fx``, ``fy``.
    """
    w2c, k, perspective = camera_arrays(camera)
    row, col, depth = project_rows(points_rows, camera, scale=supersample)
    prow, pcol, inside = pixel_index(row, col, depth, height * supersample, width * supersample, perspective)
    nx, ny, nz = rotate_rows(normals_rows, w2c[:3, :3])
    return {"row": row, "col": col, "depth": depth, "prow": prow, "pcol": pcol, "inside": inside,
            "nx": nx, "ny": ny, "nz": nz, "perspective": perspective,
            "fx": k[0, 0] * supersample, "fy": k[1, 1] * supersample}


def splat_depth_at_pixel_centre(geo: dict) -> np.ndarray:
    """(N,) float64 depth of each point's splat plane at the centre of the render
    pixel the point falls in (the point's own depth for nearly edge-on splats)."""
    scale = geo["depth"] if geo["perspective"] else 1.0
    dy = geo["prow"] + 0.5
    dy -= geo["row"]
    dy *= scale / geo["fy"]                            # camera units
    dx = geo["pcol"] + 0.5
    dx -= geo["col"]
    dx *= scale / geo["fx"]
    nz = geo["nz"]
    facing = np.abs(nz) >= EDGE_ON_COS
    slope = geo["nx"] * dx
    slope += geo["ny"] * dy
    slope /= np.where(facing, nz, np.inf)             # edge-on: no extrapolation (0)
    return geo["depth"] - slope


def depth_tolerance(geo: dict, half_sizes: np.ndarray | float, thickness: np.ndarray | float) -> np.ndarray:
    """(N,) float64 visibility depth tolerance of every point in one view (world
    units): the larger of ``VIS_TOL`` × the splat half-size and ``NOISE_TOL`` × the
    local thickness of the surface converted to depth along the view ray
    (÷ |cos| between normal and view, floored at ``COS_FLOOR``). On noisy scans a
    point lies up to a few thicknesses behind the splats of its neighbours, measured
    along the normal; seen obliquely that gap is longer in depth."""
    cos = np.maximum(np.abs(geo["nz"]), COS_FLOOR)
    noise = NOISE_TOL * np.asarray(thickness, dtype=np.float64) / cos
    return np.maximum(VIS_TOL * np.asarray(half_sizes, dtype=np.float64), noise)


def visible_from_depth(geo: dict, depth_map: np.ndarray, tolerance: np.ndarray | float) -> np.ndarray:
    """(N,) bool visibility of the points of ``geo`` (:func:`view_geometry`) against
    ``depth_map`` (h, w) float32 camera z at render resolution (+inf = background);
    ``tolerance`` (N,) or scalar depth tolerance in world units (:func:`depth_tolerance`)."""
    width = depth_map.shape[1]
    drawn = np.ravel(depth_map)[geo["prow"] * width + geo["pcol"]]     # 1-D gather: 3× faster than 2-D
    diff = np.abs(drawn - splat_depth_at_pixel_centre(geo))             # inf for background
    return geo["inside"] & (diff <= tolerance)


def output_pixels(geo: dict, supersample: int) -> np.ndarray:
    """(N, 2) int16 output-resolution (row, col) = floor(render pixel / supersample)."""
    out = np.empty((len(geo["prow"]), 2), dtype=np.int16)
    out[:, 0] = geo["prow"] // supersample
    out[:, 1] = geo["pcol"] // supersample
    return out


def min_pool(depth_map: np.ndarray, factor: int) -> np.ndarray:
    """(h/factor, w/factor) front-most depth of each factor×factor block."""
    if factor == 1:
        return depth_map
    out = depth_map[::factor, ::factor].copy()
    for dy in range(factor):
        for dx in range(factor):
            if dy or dx:
                np.minimum(out, depth_map[dy::factor, dx::factor], out=out)
    return out


def ground_truth_2d(points: np.ndarray, t1: np.ndarray, t2: np.ndarray, half_sizes: np.ndarray,
                    tolerance: np.ndarray, anomalous_visible: np.ndarray, camera: dict, out_pixels: np.ndarray,
                    front_depth: np.ndarray) -> np.ndarray:
    """(H, W) uint8 2D ground truth of one view.

    ``points`` (N, 3), ``t1``/``t2`` (N, 3) the splat axes (as rendered), ``half_sizes``
    (N,) and ``tolerance`` (N,) (depth, :func:`depth_tolerance`) in world units;
    ``anomalous_visible`` (N,) bool selects the points that mark; ``out_pixels`` (N, 2) int their output pixels; ``front_depth`` (H, W) float the
    front-most depth per output pixel (+inf = background).
    """
    height, width = front_depth.shape
    gt = np.zeros((height, width), dtype=np.uint8)
    sel = np.flatnonzero(anomalous_visible)
    if sel.size == 0:
        return gt
    gt[out_pixels[sel, 0], out_pixels[sel, 1]] = 1
    w2c, k, perspective = camera_arrays(camera)
    rot = w2c[:3, :3]
    rowcol, depth = project(points[sel], camera)
    h = np.asarray(half_sizes, dtype=np.float64)[sel]
    a_cam = (t1[sel] * h[:, None]) @ rot.T            # splat half-axes in camera coordinates
    b_cam = (t2[sel] * h[:, None]) @ rot.T
    scale = 1.0 / depth if perspective else np.ones_like(depth)
    # pixel offset of the splat corner directions: d(row, col) = J @ (u, v), u, v in [-1, 1]
    j = np.empty((sel.size, 2, 2))
    j[:, 0, 0] = k[1, 1] * a_cam[:, 1] * scale
    j[:, 0, 1] = k[1, 1] * b_cam[:, 1] * scale
    j[:, 1, 0] = k[0, 0] * a_cam[:, 0] * scale
    j[:, 1, 1] = k[0, 0] * b_cam[:, 0] * scale
    det = j[:, 0, 0] * j[:, 1, 1] - j[:, 0, 1] * j[:, 1, 0]
    ok = np.abs(det) > 1e-9
    if not ok.any():
        return gt
    sel, rowcol, depth, a_cam, b_cam, j, det = (v[ok] for v in (sel, rowcol, depth, a_cam, b_cam, j, det))
    inv = np.empty_like(j)
    inv[:, 0, 0] = j[:, 1, 1] / det
    inv[:, 0, 1] = -j[:, 0, 1] / det
    inv[:, 1, 0] = -j[:, 1, 0] / det
    inv[:, 1, 1] = j[:, 0, 0] / det
    reach = np.abs(j).sum(axis=2).max(axis=1)          # bounding half-extent in pixels
    radius = int(min(GT_MAX_RADIUS, np.ceil(reach.max())))
    oy, ox = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    oy, ox = oy.ravel(), ox.ravel()                    # (O,) pixel offsets
    base_r = np.floor(rowcol[:, 0]).astype(np.int64)
    base_c = np.floor(rowcol[:, 1]).astype(np.int64)
    frac_r = (base_r + 0.5 - rowcol[:, 0])[:, None]    # centre of the base pixel, relative
    frac_c = (base_c + 0.5 - rowcol[:, 1])[:, None]
    limit = np.asarray(tolerance, dtype=np.float64)[sel]
    per_batch = max(1, GT_CHUNK // len(oy))
    for s in range(0, sel.size, per_batch):
        b = slice(s, min(sel.size, s + per_batch))
        dr = frac_r[b] + oy                            # (B, O) offsets of candidate pixel centres
        dc = frac_c[b] + ox
        u = inv[b, 0, 0, None] * dr + inv[b, 0, 1, None] * dc    # splat coordinates, in [-1, 1] inside
        w = inv[b, 1, 0, None] * dr + inv[b, 1, 1, None] * dc
        qr = base_r[b, None] + oy
        qc = base_c[b, None] + ox
        hit = (np.abs(u) <= 1.0) & (np.abs(w) <= 1.0)
        hit &= (qr >= 0) & (qr < height) & (qc >= 0) & (qc < width)
        qr, qc, u, w = qr[hit], qc[hit], u[hit], w[hit]
        owner = np.nonzero(hit)[0] + s
        z = depth[owner] + u * a_cam[owner, 2] + w * b_cam[owner, 2]
        on_front = np.abs(front_depth[qr, qc] - z) <= limit[owner]
        gt[qr[on_front], qc[on_front]] = 1
    return gt


def nearest_per_pixel_loop(points: np.ndarray, camera: dict, supersample: int, height: int,
                           width: int) -> np.ndarray:
    """Reference visibility, the original implementation's way (benchmark only): a
    Python loop over the points that projects each one and keeps, per render
    pixel, only the single nearest point. ``points`` (N, 3). Returns (N,) bool."""
    w2c, k, perspective = camera_arrays(camera)
    (r00, r01, r02, t0), (r10, r11, r12, t1), (r20, r21, r22, t2) = w2c[:3].tolist()
    fx, fy = k[0, 0] * supersample, k[1, 1] * supersample
    cx, cy = k[0, 2] * supersample, k[1, 2] * supersample
    h, w = height * supersample, width * supersample
    nearest: dict[int, tuple[float, int]] = {}
    for i, (x, y, z) in enumerate(np.asarray(points, dtype=np.float64).tolist()):
        xc = r00 * x + r01 * y + r02 * z + t0
        yc = r10 * x + r11 * y + r12 * z + t1
        zc = r20 * x + r21 * y + r22 * z + t2
        if perspective:
            if zc <= 0:
                continue
            xc, yc = xc / zc, yc / zc
        row, col = math.floor(fy * yc + cy), math.floor(fx * xc + cx)
        if not (0 <= row < h and 0 <= col < w):
            continue
        key = row * w + col
        best = nearest.get(key)
        if best is None or zc < best[0]:
            nearest[key] = (zc, i)
    visible = np.zeros(len(points), dtype=bool)
    visible[[i for _, i in nearest.values()]] = True
    return visible
