"""Samples as the official PointAD scripts read them (``pad render --style pointad``).

The official pipeline does not render a scan as distributed. This module hands pad's renderer
(:mod:`pipeline.render.pointad`) what the official code hands Open3D, per layout:

**MVTec 3D-AD** (``multi_view/preprocess_mvtec3d.py`` run in place, then
``multiview_mvtec.py``):

1. the support plane is removed: a plane fitted by RANSAC (50 points per draw, at most 1000
   draws with Open3D's stopping rule, inliers within 4 mm, the best refitted on its inliers) to
   the valid points of the 10-pixel image border, and every point within 5 mm of it zeroed, in
   the xyz grid and the RGB image;
2. grid, RGB and mask are zero-padded, centred, to a square whose side is the larger side
   rounded up to a multiple of 100;
3. only the largest DBSCAN cluster (eps 6 mm, 30 points) of the valid points is kept;
4. the grid is resized to 336×336 by nearest neighbour (``torch.nn.functional.interpolate``'s
   index rule) and the points with non-zero z, in row-major order, are the sample's points
   (``grid_index`` into the 336×336 grid).

Point labels are the official training and test target (``dataset.py``: the mask > 0 resized
bilinearly to 336, > 0.5); the ground-truth render colours the script's own labels (the mask
resized bicubically to 336, > 0.5), kept in ``Sample.script_labels``. The RGB image (for RGB
fusion) is the preprocessed one resized bicubically to 336, as ``dataset.py`` feeds CLIP.

Where pad differs: the official RANSAC draws unseeded random numbers; pad's draws come from
``--seed`` (a point within a hair of 5 mm from the plane can land on the other side). A scan
whose background is already removed (zeros on the image border, as PointAD's released data and
M3DM's preprocessing leave it) has no support plane to fit; the official script would fail
(fewer than 50 border points) or fit a plane to the object itself, pad keeps every point.

**Eyecandies** (``multiview_eyecandies.py``): the grid resized to 336×336 as above; the
background is removed by the script's rule (the points rotated so that the support is level,
then dropped when above −0.02, beyond 1.8 in depth or outside ±1 laterally); the kept points
in grid order are the sample's points. The script reads Eyecandies' own PLY files; pad reads
the MVTec-format conversion, whose xyz grid holds the same coordinates.

**Real3D-AD, Anomaly-ShapeNet** (``multiview_real3d.py``): a cloud of at least 336² points is
reduced to 336² by farthest point sampling (the first point drawn from ``--seed``; the official
code draws it unseeded); a smaller one gets, for every point and each of its 3 nearest other
points, the points at 1/4, 1/2 and 3/4 of the way (labelled as the nearer end), and when that
makes more than 336² points, a ``--seed``-ed random subset of the new ones fills up to 336².
"""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from data_cache.errors import PadError
from pipeline.sample import Sample, SampleRef

from .constants import PLANE_MIN_BORDER_COVERAGE
from .inputs import ORGANIZED_EXTENSIONS

GRID = 336                  # the scripts' grid and image side
EDGE = 10                   # preprocess_mvtec3d.get_edges_of_pc: a 10-pixel border
RANSAC_N = 50
RANSAC_ITERATIONS = 1000
RANSAC_DISTANCE = 0.004
RANSAC_PROBABILITY = 0.99999999     # Open3D's default: the search stops when a better plane is this unlikely
RANSAC_BATCH = 32                   # draws fitted and scored at once
PLANE_DISTANCE = 0.005
PAD_MULTIPLE = 100
DBSCAN_EPS = 0.006
DBSCAN_MIN_POINTS = 30


# ------------------------------------------------------------------ MVTec 3D-AD preprocessing
def border_points(grid: np.ndarray, width: int = EDGE) -> tuple[np.ndarray, float]:
    """The valid points of the ``width``-pixel border of an (H, W, 3) grid, as the official
    ``get_edges_of_pc`` lists them (top rows, bottom rows, left columns, right columns; corners
    twice; a point is valid when none of its coordinates is 0), and the fraction of border
    entries that are valid."""
    parts = [grid[:width].reshape(-1, 3), grid[-width:].reshape(-1, 3),
             grid[:, :width].reshape(-1, 3), grid[:, -width:].reshape(-1, 3)]
    edges = np.concatenate(parts).astype(np.float64)
    valid = (edges != 0).all(axis=1)
    return edges[valid], float(valid.mean()) if len(valid) else 0.0


def planes_from_points(points: np.ndarray) -> np.ndarray:
    """(B, 4) float64 planes (a, b, c, d), unit normals, through each of the (B, M, 3) point sets
    by least squares, with Open3D's closed form (``GetPlaneFromPoints``: the normal from the
    largest 2×2 minor of the scatter matrix); zeros for a set that spans no plane."""
    p = np.asarray(points, dtype=np.float64)
    centroid = p.mean(axis=1)
    r = p - centroid[:, None, :]
    x, y, z = r[..., 0], r[..., 1], r[..., 2]
    xx, xy, xz = (x * x).sum(1), (x * y).sum(1), (x * z).sum(1)
    yy, yz, zz = (y * y).sum(1), (y * z).sum(1), (z * z).sum(1)
    det_x, det_y, det_z = yy * zz - yz * yz, xx * zz - xz * xz, xx * yy - xy * xy
    use_x = (det_x > det_y) & (det_x > det_z)
    use_y = ~use_x & (det_y > det_z)
    abc = np.stack([xy * yz - xz * yy, xy * xz - yz * xx, det_z], axis=1)
    abc = np.where(use_y[:, None], np.stack([xz * yz - xy * zz, det_y, xy * xz - yz * xx], axis=1), abc)
    abc = np.where(use_x[:, None], np.stack([det_x, xz * yz - xy * zz, xy * yz - xz * yy], axis=1), abc)
    norm = np.linalg.norm(abc, axis=1)
    ok = norm != 0
    abc = np.where(ok[:, None], abc / np.where(ok, norm, 1.0)[:, None], 0.0)
    d = np.where(ok, -(abc * centroid).sum(axis=1), 0.0)
    return np.concatenate([abc, d[:, None]], axis=1)


def ransac_plane(points: np.ndarray, seed: int, *, sample_size: int = RANSAC_N,
                 iterations: int = RANSAC_ITERATIONS, distance: float = RANSAC_DISTANCE,
                 probability: float = RANSAC_PROBABILITY) -> np.ndarray:
    """(4,) float64 plane of (M, 3) ``points`` as Open3D's ``segment_plane(distance, sample_size,
    iterations)`` finds it, run in draw order: each draw fits :func:`planes_from_points` to
    ``sample_size`` distinct random points; a draw is better with a larger inlier fraction
    (distance < ``distance``), then a smaller inlier RMSE; after each better draw the search
    stops once more than log(1 − ``probability``) / log(1 − fraction^sample_size) draws were
    evaluated; the best plane is refitted on its inliers. Draws come from ``seed``. PadError
    with fewer than ``sample_size`` points."""
    p = np.asarray(points, dtype=np.float64)
    m = len(p)
    if m < sample_size:
        raise PadError(f"only {m} valid border points; the plane fit needs {sample_size}")
    rng = np.random.default_rng(seed)
    homog = np.hstack([p, np.ones((m, 1))])
    best, best_fit, best_rmse = np.zeros(4), 0.0, 0.0
    stop, evaluated, drawn = float(iterations), 0, 0
    while drawn < iterations and evaluated <= stop:
        batch = min(RANSAC_BATCH, iterations - drawn)
        draws = np.stack([rng.choice(m, size=sample_size, replace=False) for _ in range(batch)])
        drawn += batch
        planes = planes_from_points(p[draws])
        dist = np.abs(homog @ planes.T)                 # (m, batch)
        inside = dist < distance
        count = inside.sum(axis=0)
        rmse = np.sqrt(np.where(inside, dist * dist, 0.0).sum(axis=0) / np.maximum(count, 1))
        for j in range(batch):
            if evaluated > stop:
                break
            if not planes[j].any():                     # degenerate draw: not counted
                continue
            fit = count[j] / m
            if fit > best_fit or (fit == best_fit and rmse[j] < best_rmse):
                best, best_fit, best_rmse = planes[j], fit, rmse[j]
                stop = 0.0 if fit >= 1.0 else min(math.log(1 - probability) /
                                                   math.log(1 - fit ** sample_size), iterations)
            evaluated += 1
    inliers = np.abs(homog @ best) < distance
    return planes_from_points(p[inliers][None])[0] if inliers.any() else best


def pad_to_square(array: np.ndarray, multiple: int = PAD_MULTIPLE) -> np.ndarray:
    """Zero-pad an (H, W, …) array, centred, to a square of side max(H, W) rounded up to a
    multiple of ``multiple`` (the official ``pad_cropped_pc``: the extra row or column goes to
    the bottom / right)."""
    h, w = array.shape[:2]
    side, top, left = square_padding(h, w, multiple)
    width = [(top, side - top - h), (left, side - left - w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, width, mode="constant")


def square_padding(h: int, w: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int, int]:
    """(side, top, left) of :func:`pad_to_square` for an H × W grid: the square's side and the
    rows and columns of zeros above and left of the grid."""
    side = max(int(math.ceil(h / multiple)) * multiple, int(math.ceil(w / multiple)) * multiple)
    return side, (side - h) // 2, (side - w) // 2


GRID_WINDOW = 3    # grid DBSCAN: neighbours counted in a (2·3 + 1)² pixel window (49 ≥ 30 points)


def _core_and_links_kd(p: np.ndarray, eps: float, min_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Core flags (M,) and links (rows, cols) between core points closer than ``eps`` from one
    query of the ``min_points`` nearest points of every point."""
    m = len(p)
    k = min(min_points, m)
    dist, idx = cKDTree(p).query(p, k=k, workers=1)
    dist, idx = dist.reshape(m, k), idx.reshape(m, k)
    core = (k >= min_points) & (dist[:, -1] < eps)
    link = core[idx] & (dist < eps) & core[:, None]
    return core, np.repeat(np.arange(m), k)[link.ravel()], idx.ravel()[link.ravel()]


_KING_STEPS = ((0, 1), (1, -1), (1, 0), (1, 1))   # each 8-neighbour pair of the grid once
# each pair of the (2r + 1)² window once: (−dr, −dc) is the same pair from the other end
_HALF_WINDOW = tuple((dr, dc) for dr in range(GRID_WINDOW + 1) for dc in range(-GRID_WINDOW, GRID_WINDOW + 1)
                     if (dr, dc) > (0, 0))
_SURE = 1.0 - 1e-9                                   # a relative margin far above float64 rounding


def _pair_slices(dr: int, dc: int, h: int, w: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """The slices of an (h, w) grid that pair every pixel with its neighbour at offset (dr, dc)."""
    r0, r1, c0, c1 = max(0, -dr), h - max(0, dr), max(0, -dc), w - max(0, dc)
    return np.s_[r0:r1, c0:c1], np.s_[r0 + dr:r1 + dr, c0 + dc:c1 + dc]


def _grid_squared_distance(x: np.ndarray, y: np.ndarray, z: np.ndarray, a, b) -> np.ndarray:
    """Squared distances between the points of planar grids at index ``a`` and ``b`` (slices or
    index arrays), summed as ``einsum("ijk,ijk->ij")`` sums the 3 terms, (dx² + dz²) + dy²
    (bit for bit on numpy's contiguous kernel; pinned by tests/test_pointad_speed.py)."""
    d2 = x[a] - x[b]
    d2 *= d2
    d = z[a] - z[b]
    d *= d
    d2 += d
    d = y[a] - y[b]
    d *= d
    d2 += d
    return d2


def _core_and_links_grid(p: np.ndarray, grid_index: np.ndarray, grid_shape: tuple[int, int], eps: float,
                         min_points: int, window_links: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same for the points of an organized scan (``grid_index``: flat pixel of each point), on
    planar x, y, z grids cropped to the rows and columns that hold points:

    - **core, without counting**: a point whose whole (2r + 1)² pixel window (r = GRID_WINDOW) holds
      points, and whose window's steps between 8-neighbours are all shorter than eps / r, has every
      point of the window closer than ``eps`` (a king's path of at most r such steps reaches it):
      (2r + 1)² ≥ ``min_points`` points. That is most of a dense scan, from 4 whole-grid distances.
    - the others are counted exactly in their window (neighbours closer than ``eps`` are a lower
      bound of their count), and those still short with a KD-tree;
    - **links**: core 8-neighbours closer than ``eps``; with ``window_links`` every core pair of the
      window closer than ``eps`` (more links, fewer groups for :func:`dbscan_labels` to join)."""
    from scipy import ndimage

    row, col = np.divmod(grid_index, grid_shape[1])
    r_lo, c_lo = int(row.min()), int(col.min())
    h, w = int(row.max()) - r_lo + 1, int(col.max()) - c_lo + 1
    row, col = row - r_lo, col - c_lo
    grid_index = row * w + col
    owner = np.full(h * w, -1, np.int64)
    owner[grid_index] = np.arange(len(p))
    owner = owner.reshape(h, w)
    planes = []                                                  # x, y, z grids (h, w), contiguous
    for axis in range(3):
        plane = np.zeros(h * w)
        plane[grid_index] = p[:, axis]
        planes.append(plane.reshape(h, w))
    x, y, z = planes
    valid = owner >= 0
    r = GRID_WINDOW
    side = 2 * r + 1
    steps = _HALF_WINDOW if window_links else _KING_STEPS
    longest = np.zeros((h, w))                                   # longest step to a valid 8-neighbour
    pairs = []
    for dr, dc in steps:
        here, there = _pair_slices(dr, dc, h, w)
        d2 = _grid_squared_distance(x, y, z, here, there)
        both = valid[here] & valid[there]
        if max(abs(dr), abs(dc)) == 1:
            step = np.where(both, d2, 0.0)
            np.maximum(longest[here], step, out=longest[here])
            np.maximum(longest[there], step, out=longest[there])
        close = (d2 < eps * eps) & both
        pairs.append((owner[here][close], owner[there][close]))
    core = np.zeros(len(p), dtype=bool)
    if side * side >= min_points:
        full = ndimage.minimum_filter(valid.view(np.uint8), size=side, mode="constant", cval=0) > 0
        reach = ndimage.maximum_filter(longest, size=side, mode="constant", cval=np.inf)
        sure = full & (reach < (eps / r * _SURE) ** 2)
        core = sure.reshape(-1)[grid_index]
    unsure = np.flatnonzero(~core)
    if unsure.size:
        count = _window_counts(x, y, z, valid, row[unsure], col[unsure], eps)
        core[unsure] = count >= min_points
        short = unsure[count < min_points]
        if short.size and len(p) >= min_points:
            near = _near_cells(p, p[short], eps)      # every point closer than eps to one of them
            dist, _ = cKDTree(p[near]).query(p[short], k=min_points, workers=1)
            core[short] = dist.reshape(len(short), -1)[:, -1] < eps
    rows = np.concatenate([a for a, _ in pairs]) if pairs else np.zeros(0, np.int64)
    cols = np.concatenate([b for _, b in pairs]) if pairs else np.zeros(0, np.int64)
    both = core[rows] & core[cols]
    return core, rows[both], cols[both]


def _near_cells(points: np.ndarray, around: np.ndarray, eps: float) -> np.ndarray:
    """(K,) int64 indices of the ``points`` (N, 3) in the cubes of side 2·eps that hold a point of
    ``around`` (M, 3) or touch one that does: a superset of every point closer than ``eps`` to one
    of them (coordinates that close differ by less than half a cube, so their cubes touch). A KD-tree
    of these answers the same as one of all the points for queries of ``around`` within ``eps``."""
    cell = 2.0 * eps
    origin = points.min(axis=0)
    ijk = np.floor((points - origin) / cell).astype(np.int64) + 1      # ≥ 1: room for a −1 offset
    span = ijk.max(axis=0) + 2
    key = (ijk[:, 0] * span[1] + ijk[:, 1]) * span[2] + ijk[:, 2]
    near = np.floor((around - origin) / cell).astype(np.int64) + 1
    steps = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)])
    cells = (near[:, None, :] + steps[None]).reshape(-1, 3)
    wanted = np.unique((cells[:, 0] * span[1] + cells[:, 1]) * span[2] + cells[:, 2])
    return np.flatnonzero(np.isin(key, wanted, assume_unique=False))


def _window_counts(x: np.ndarray, y: np.ndarray, z: np.ndarray, valid: np.ndarray, rows: np.ndarray,
                   cols: np.ndarray, eps: float) -> np.ndarray:
    """(U,) int64: how many points of the (2r + 1)² window around each pixel (``rows``, ``cols``)
    are closer than ``eps`` to its point, itself included. Few pixels: their windows gathered;
    many: whole-grid distances per window offset (each pair once, counted at both ends)."""
    h, w = valid.shape
    r = GRID_WINDOW
    if len(rows) * 6 < h * w:
        offsets = np.array([(dr, dc) for dr in range(-r, r + 1) for dc in range(-r, r + 1) if (dr, dc) != (0, 0)])
        nr, nc = rows[:, None] + offsets[:, 0], cols[:, None] + offsets[:, 1]     # (U, side² − 1)
        inside = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
        there = np.where(inside, nr * w + nc, 0)
        here = np.broadcast_to((rows * w + cols)[:, None], there.shape)
        d2 = _grid_squared_distance(x.reshape(-1), y.reshape(-1), z.reshape(-1), here, there)
        return 1 + ((d2 < eps * eps) & inside & valid.reshape(-1)[there]).sum(axis=1)
    count = valid.astype(np.int64)
    for dr, dc in _HALF_WINDOW:
        here, there = _pair_slices(dr, dc, h, w)
        close = (_grid_squared_distance(x, y, z, here, there) < eps * eps) & valid[here] & valid[there]
        count[here] += close
        count[there] += close
    return count[rows, cols]


MAX_JOINED_GROUPS = 64      # grid DBSCAN: more groups than this from 8-neighbour links: link the whole window


def dbscan_labels(points: np.ndarray, eps: float = DBSCAN_EPS, min_points: int = DBSCAN_MIN_POINTS,
                  grid_index: np.ndarray | None = None, grid_shape: tuple[int, int] | None = None) -> np.ndarray:
    """(M,) int64 DBSCAN labels of (M, 3) ``points`` as Open3D's ``cluster_dbscan`` numbers them:
    a point is core with at least ``min_points`` points (itself included) closer than ``eps``;
    clusters are the connected groups of core points, numbered in the order of their first
    point; a non-core point within ``eps`` of a core point joins the lowest-numbered such
    cluster; the others are noise (−1).

    Computed without listing every neighbourhood: core points are linked to some of their
    neighbours closer than ``eps`` (their ``min_points`` nearest; for an organized scan, given by
    ``grid_index`` (M,) into ``grid_shape``, those in a pixel window), and the groups that leaves
    apart are joined when any two of their points are closer than ``eps``: exactly the DBSCAN
    clusters."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    p = np.asarray(points, dtype=np.float64)
    m = len(p)
    labels = np.full(m, -1, dtype=np.int64)
    if m == 0:
        return labels

    def groups_of(links: tuple[np.ndarray, np.ndarray, np.ndarray]):
        core, rows, cols = links
        core_ids = np.flatnonzero(core)
        graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(m, m))
        _, comp = connected_components(graph, directed=False)
        return (core_ids, *np.unique(comp[core_ids], return_inverse=True))

    # 1. components of the links
    if grid_index is not None:
        grid_index = np.asarray(grid_index, np.int64)
        core_ids, groups, group_of = groups_of(_core_and_links_grid(p, grid_index, grid_shape, eps, min_points))
        if len(groups) > MAX_JOINED_GROUPS:
            core_ids, groups, group_of = groups_of(_core_and_links_grid(p, grid_index, grid_shape, eps, min_points,
                                                                         window_links=True))
    else:
        core_ids, groups, group_of = groups_of(_core_and_links_kd(p, eps, min_points))
    if core_ids.size == 0:
        return labels
    parent = np.arange(len(groups))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    # 2. join groups that come closer than eps anywhere
    if len(groups) > 1:
        order = np.argsort(group_of, kind="stable")                 # each group's core points, ascending
        members = np.split(core_ids[order], np.cumsum(np.bincount(group_of, minlength=len(groups)))[:-1])
        coords = [p[mem] for mem in members]
        lo = np.array([c.min(axis=0) for c in coords]) - 2 * eps   # boxes grown by 2·eps: a point
        hi = np.array([c.max(axis=0) for c in coords]) + 2 * eps   # closer than eps lies inside
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if find(a) == find(b) or np.any(lo[a] > hi[b]) or np.any(lo[b] > hi[a]):
                    continue
                # only the points of each group inside the other's grown box can be a pair closer
                # than eps: the same pairs, the same cKDTree distances, far fewer points
                near_a = coords[a][np.all((coords[a] >= lo[b]) & (coords[a] <= hi[b]), axis=1)]
                near_b = coords[b][np.all((coords[b] >= lo[a]) & (coords[b] <= hi[a]), axis=1)]
                if len(near_a) == 0 or len(near_b) == 0:
                    continue
                small, big = (near_a, near_b) if len(near_a) <= len(near_b) else (near_b, near_a)
                d, _ = cKDTree(big).query(small, k=1, distance_upper_bound=eps, workers=1)
                if np.any(d < eps):
                    parent[find(a)] = find(b)
    root = np.array([find(g) for g in range(len(groups))])[group_of]
    # 3. clusters numbered by their first core point, as Open3D's scan in point order does
    roots, first = np.unique(root, return_index=True)            # core_ids ascend: first = lowest index
    rank = np.empty(len(roots), np.int64)
    rank[np.argsort(first)] = np.arange(len(roots))
    labels[core_ids] = rank[np.searchsorted(roots, root)]
    # 4. border points: the lowest-numbered cluster with a core point within eps (a non-core point
    # has fewer than min_points neighbours: its min_points nearest core points include them all)
    core = np.zeros(m, dtype=bool)
    core[core_ids] = True
    others = np.flatnonzero(~core)
    if others.size:
        k = min(min_points, core_ids.size)
        dist, near = cKDTree(p[core_ids]).query(p[others], k=k, workers=1)
        dist, near = dist.reshape(len(others), k), near.reshape(len(others), k)
        cand = np.where(dist < eps, labels[core_ids[np.minimum(near, core_ids.size - 1)]], np.iinfo(np.int64).max)
        best = cand.min(axis=1)
        labels[others] = np.where(best < np.iinfo(np.int64).max, best, -1)
    return labels


def largest_cluster(points: np.ndarray, grid_index: np.ndarray | None = None,
                    grid_shape: tuple[int, int] | None = None) -> np.ndarray:
    """(M,) bool: the points of the largest DBSCAN label of (M, 3) ``points``, noise counted as a
    label of its own, the lowest label on a tie (``np.unique`` + ``argmax`` in the official
    ``connected_components_cleaning``); ``grid_index``/``grid_shape``: see :func:`dbscan_labels`."""
    labels = dbscan_labels(points, grid_index=grid_index, grid_shape=grid_shape)
    values, counts = np.unique(labels, return_counts=True)
    return labels == values[int(np.argmax(counts))]


def preprocess_mvtec(xyz: np.ndarray, rgb: np.ndarray | None, mask: np.ndarray | None, seed: int
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, list[str]]:
    """The official MVTec 3D-AD preprocessing of one scan (module doc, steps 1–3).

    - ``xyz``: (H, W, 3) float32 grid (zeros = no measurement); ``rgb``: (H, W, 3) uint8 or None;
      ``mask``: (H, W) uint8 or None

    Returns the padded, cleaned ``xyz`` (S, S, 3) float32, ``rgb`` (S, S, 3) uint8, ``mask``
    (S, S) uint8 (padded only, as the official code leaves it) and notes for the summary.
    """
    notes: list[str] = []
    grid = np.array(xyz, dtype=np.float32)
    image = None if rgb is None else np.array(rgb, dtype=np.uint8)
    edges, coverage = border_points(grid)
    if coverage >= PLANE_MIN_BORDER_COVERAGE and len(edges) >= RANSAC_N:
        plane = ransac_plane(edges, seed)
        flat = grid.reshape(-1, 3).astype(np.float64)
        on_plane = np.abs(flat @ plane[:3] + plane[3]) < PLANE_DISTANCE
        grid.reshape(-1, 3)[on_plane] = 0
        if image is not None:
            image.reshape(-1, 3)[on_plane] = 0
    else:
        notes.append("no support plane on the image border (background already removed): no plane fitted")
    grid = pad_to_square(grid)
    image = None if image is None else pad_to_square(image)
    mask = None if mask is None else pad_to_square(np.asarray(mask))
    flat = grid.reshape(-1, 3)
    valid = np.flatnonzero((flat != 0).all(axis=1))
    if valid.size:
        drop = valid[~largest_cluster(flat[valid], valid, grid.shape[:2])]
        flat[drop] = 0
        if image is not None:
            image.reshape(-1, 3)[drop] = 0
    return grid, image, mask, notes


# ------------------------------------------------------------------------- resizing, labels
def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """(n_out,) int64 source indices of ``torch.nn.functional.interpolate(mode="nearest")``:
    floor(i · (n_in / n_out)) computed in float32, at most n_in − 1."""
    if n_in == n_out:
        return np.arange(n_out)
    if n_out == 2 * n_in:
        return np.arange(n_out) >> 1
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)


def resize_nearest(grid: np.ndarray, size: int = GRID) -> np.ndarray:
    """An (H, W, …) array resized to (size, size, …) by nearest neighbour (torch's rule)."""
    rows = nearest_indices(grid.shape[0], size)
    cols = nearest_indices(grid.shape[1], size)
    return np.asarray(grid)[rows][:, cols]


def resize_image(image: np.ndarray, size: int, resample: str) -> np.ndarray:
    """A uint8 image resized to (size, size) with PIL's ``resample`` filter ("bicubic" or
    "bilinear", antialiased: torchvision's ``Resize`` on a PIL image)."""
    from PIL import Image

    filt = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[resample]
    pil = Image.fromarray(np.ascontiguousarray(image))
    if pil.size == (size, size):
        return np.asarray(pil)
    return np.asarray(pil.resize((size, size), filt))


def mask_labels(mask: np.ndarray, resample: str) -> np.ndarray:
    """(336, 336) uint8 {0, 1}: a (H, W) uint8 mask resized to 336 and thresholded at 0.5.
    ``"bilinear"``: ``dataset.py``'s target (mask > 0 as 0/255, bilinear); ``"bicubic"``: the
    multiview script's ground-truth colours (the mask's own values, bicubic)."""
    m = np.asarray(mask, dtype=np.uint8)
    if resample == "bilinear":
        m = np.where(m > 0, 255, 0).astype(np.uint8)
    return (resize_image(m, GRID, resample) > 127).astype(np.uint8)


# ------------------------------------------------------------------------------ the readers
def _organized_files(ref: SampleRef) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    from .organized import check_normal_without_mask, read_image, read_xyz_tiff

    xyz = read_xyz_tiff(ref.path)
    h, w = xyz.shape[:2]
    if not np.isfinite(xyz).all():
        raise PadError("the xyz grid holds NaN or Inf values; --style pointad reproduces scripts that "
                       "assume finite coordinates", ref.path)
    rgb_path, gt_path = ref.extra_path("rgb"), ref.extra_path("gt")
    rgb = read_image(rgb_path, (h, w), "RGB") if rgb_path else None
    mask = read_image(gt_path, (h, w), "L") if gt_path else None
    if mask is None:
        check_normal_without_mask(ref)
    return xyz, rgb, mask


def _grid_sample(ref: SampleRef, grid: np.ndarray, keep: np.ndarray, point_labels: np.ndarray,
                 script_labels: np.ndarray, rgb: np.ndarray | None, notes: list[str]) -> Sample:
    flat = grid.reshape(-1, 3)
    index = np.flatnonzero(keep)
    if index.size == 0:
        raise PadError("no point is left on the 336×336 grid the official script renders", ref.path)
    return Sample(id=ref.id, cls=ref.cls, split=ref.split, points=np.ascontiguousarray(flat[index], dtype=np.float32),
                  point_labels=point_labels.reshape(-1)[index].astype(np.uint8), source_path=ref.path,
                  rgb=None if rgb is None else resize_image(rgb, GRID, "bicubic"),
                  grid_index=index.astype(np.int32), grid_shape=(GRID, GRID), warnings=notes,
                  script_labels=script_labels.reshape(-1)[index].astype(np.uint8))


def _load_organized(ref: SampleRef, layout: str, xyz: np.ndarray, rgb: np.ndarray | None,
                    mask: np.ndarray | None, seed: int) -> Sample:
    return (_mvtec_sample if layout == "mvtec3d" else _eyecandies_sample)(ref, xyz, rgb, mask, seed)


def load_mvtec(ref: SampleRef, seed: int) -> Sample:
    """One MVTec 3D-AD sample as ``multiview_mvtec.py`` reads it after the preprocessing."""
    return _mvtec_sample(ref, *_organized_files(ref), seed)


def _mvtec_sample(ref: SampleRef, xyz: np.ndarray, rgb: np.ndarray | None, mask: np.ndarray | None,
                  seed: int) -> Sample:
    grid, rgb, mask, notes = preprocess_mvtec(xyz, rgb, mask, seed)
    small = resize_nearest(grid)
    keep = small[..., 2].reshape(-1) != 0
    if mask is None:
        mask = np.zeros(grid.shape[:2], dtype=np.uint8)
    return _grid_sample(ref, small, keep, mask_labels(mask, "bilinear"), mask_labels(mask, "bicubic"), rgb, notes)


def eyecandies_background(points: np.ndarray) -> np.ndarray:
    """(N,) bool: the points of a flattened 336² Eyecandies grid that
    ``remove_point_cloud_background`` keeps. The support direction comes from rows 256 and
    −256 of the flattened grid; the points are rotated by it about x and translated to the
    second of them, then dropped when y > −0.02, z > 1.8 or |x| > 1."""
    p = np.asarray(points, dtype=np.float64)
    dz = p[256, 1] - p[-256, 1]
    dy = p[256, 2] - p[-256, 2]
    norm = math.sqrt(dz * dz + dy * dy)
    if norm == 0:
        raise PadError("the grid's rows 256 and -256 coincide: the background direction is undefined")
    start = np.array([0.0, p[-256, 1], p[-256, 2]])
    c, s = dy / norm, dz / norm
    r = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    q = (p - start) @ r.T
    return ~((q[:, 1] > -0.02) | (q[:, 2] > 1.8) | (q[:, 0] > 1) | (q[:, 0] < -1))


def load_eyecandies(ref: SampleRef, seed: int) -> Sample:
    """One Eyecandies sample as ``multiview_eyecandies.py`` reads it (module doc)."""
    return _eyecandies_sample(ref, *_organized_files(ref), seed)


def _eyecandies_sample(ref: SampleRef, xyz: np.ndarray, rgb: np.ndarray | None, mask: np.ndarray | None,
                       seed: int) -> Sample:
    small = resize_nearest(xyz)
    keep = eyecandies_background(small.reshape(-1, 3))
    if mask is None:
        mask = np.zeros(xyz.shape[:2], dtype=np.uint8)
    script = resize_nearest((np.asarray(mask) > 127).astype(np.uint8)[..., None])[..., 0]
    return _grid_sample(ref, small, keep, mask_labels(mask, "bilinear"), script, rgb, [])


# ------------------------------------------------------------------ Real3D-AD resampling
FPS_BLOCK = 1024


def farthest_point_sampling(points: np.ndarray, n: int, start: int) -> np.ndarray:
    """(n,) int64 indices of (N, 3) ``points`` chosen by farthest point sampling from index
    ``start``: each next point is the one farthest (squared distance, float32 as the official
    torch code) from those chosen, the first such on a tie.

    Exact, and faster than the plain O(N·n) loop: a new point only lowers the distances of the
    points closer to it than their current distance, all within the current largest distance
    of it; those are found with a KD-tree, and the maximum is kept per block of points."""
    p = np.ascontiguousarray(points, dtype=np.float32)
    m = len(p)
    chosen = np.empty(n, dtype=np.int64)
    dist = np.full(m, np.float32(1e10), dtype=np.float32)
    tree = cKDTree(p.astype(np.float64))
    n_blocks = (m + FPS_BLOCK - 1) // FPS_BLOCK
    block_max = np.full(n_blocks, np.float32(1e10), dtype=np.float32)
    current = int(start)
    for i in range(n):
        chosen[i] = current
        c = p[current]
        radius = math.sqrt(float(block_max.max())) * (1 + 1e-6) + 1e-12
        near = np.asarray(tree.query_ball_point(p[current].astype(np.float64), radius), dtype=np.int64)
        if near.size:
            d = ((p[near] - c) ** 2).sum(axis=1, dtype=np.float32)
            lower = d < dist[near]
            upd = near[lower]
            dist[upd] = d[lower]
            for b in np.unique(upd // FPS_BLOCK):
                block_max[b] = dist[b * FPS_BLOCK:(b + 1) * FPS_BLOCK].max()
        best_block = int(np.argmax(block_max))
        current = best_block * FPS_BLOCK + int(np.argmax(dist[best_block * FPS_BLOCK:(best_block + 1) * FPS_BLOCK]))
    return chosen


def interpolate_points(points: np.ndarray, labels: np.ndarray, target: int, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The official ``interpolation_points_with_gt_colors``: for every point and each of its 3
    nearest other points, new points at 1/4, 1/2, 3/4 of the way, labelled as the nearer end;
    when that makes more than ``target − N`` new points, a random subset (from ``seed``) of that
    size. Returns (M, 3) float64 points (the originals first) and (M,) uint8 labels."""
    p = np.asarray(points, dtype=np.float64)
    lab = np.asarray(labels).reshape(-1)
    n = len(p)
    k = min(4, n)
    _, idx = cKDTree(p).query(p, k=k, workers=1)
    idx = idx.reshape(n, k)[:, 1:]
    ratios = np.array([0.25, 0.5, 0.75])
    nb = idx.reshape(-1)
    start = np.repeat(np.arange(n), idx.shape[1])
    new = (p[start][:, None, :] * (1 - ratios)[None, :, None] + p[nb][:, None, :] * ratios[None, :, None]).reshape(-1, 3)
    new_lab = np.where(ratios[None, :] <= 0.5, lab[start][:, None], lab[nb][:, None]).reshape(-1)
    need = target - n
    if len(new) > need:
        pick = np.random.default_rng(seed).choice(len(new), size=need, replace=False)
        new, new_lab = new[pick], new_lab[pick]
    return np.vstack([p, new]), np.concatenate([lab, new_lab]).astype(np.uint8)


def load_real3d(sample: Sample, seed: int) -> Sample:
    """A Real3D-AD / Anomaly-ShapeNet sample (read by pad's reader) resampled to 336² points as
    ``multiview_real3d.py`` does (module doc)."""
    target = GRID * GRID
    p = np.asarray(sample.points, dtype=np.float64)
    lab = np.asarray(sample.point_labels).reshape(-1)
    if len(p) >= target:
        start = int(np.random.default_rng(seed).integers(len(p)))
        pick = farthest_point_sampling(p, target, start)
        points, labels = p[pick], lab[pick].astype(np.uint8)
    else:
        points, labels = interpolate_points(p, lab, target, seed)
    # float64: the interpolated points are rendered (and their normals estimated) unrounded, as the
    # script does; rounding them to float32 here would break the exact ties of equidistant
    # neighbours differently
    return Sample(id=sample.id, cls=sample.cls, split=sample.split, points=points,
                  point_labels=labels, source_path=sample.source_path, warnings=list(sample.warnings),
                  n_dropped_nonfinite=sample.n_dropped_nonfinite)


def load_pointad_sample(ref: SampleRef, seed: int) -> Sample:
    """The sample of ``ref`` as the official script of its layout reads it (module doc)."""
    if ref.format == "mvtec3d":
        return load_mvtec(ref, seed)
    if ref.format == "eyecandies":
        return load_eyecandies(ref, seed)
    if ref.format in ("real3d", "shapenet"):
        from .loaders import load_sample
        return load_real3d(load_sample(ref), seed)
    raise PadError(f"--style pointad has no official script for the '{ref.format}' layout", ref.path)




# ----------------------------------------------------------------------- single files (predict)
ORGANIZED_LAYOUTS = ("mvtec3d", "eyecandies")


def organized_ref(path: str, layout: str, cls: str | None = None) -> SampleRef:
    """A :class:`SampleRef` for one organized xyz ``.tiff`` given on its own, with the companions
    MVTec 3D-AD keeps beside it (``../rgb/<stem>.png``, ``../gt/<stem>.png``) when they exist.
    Its class (the scripts size points per class): ``cls`` when given, else inside a dataset tree
    (``<class>/<split>/<defect>/xyz/<stem>.tiff``) that directory's name, else ``predict``."""
    import os

    full = os.path.abspath(path)
    stem = os.path.splitext(os.path.basename(full))[0]
    group = os.path.dirname(os.path.dirname(full))
    extra = tuple((role, p) for role, p in (("rgb", os.path.join(group, "rgb", stem + ".png")),
                                             ("gt", os.path.join(group, "gt", stem + ".png"))) if os.path.isfile(p))
    parts = full.split(os.sep)
    in_tree = len(parts) >= 6 and parts[-2] == "xyz" and parts[-4] in ("train", "validation", "test")
    cls = cls or (parts[-5] if in_tree else "predict")
    return SampleRef(id=f"{cls}/predict/{stem}", cls=cls, split="train", path=full, format=layout, extra=extra)


def warm_up_grid(layout: str) -> np.ndarray:
    """(H, W, 3) float32 organized scan that ``layout``'s script keeps an object of (zeros: no
    measurement): a dome on its support, the support where that layout's background removal
    drops it. For ``pad serve``'s start-up, which must read a file as the run reads scans.

    - mvtec3d: 200×200 pixels of 0.4 mm, the support a plane 0.45 m from the camera, a dome of
      25 mm radius toward it (the plane fit removes the support, DBSCAN keeps the dome);
    - eyecandies: 512×512, the support tilted about x (as the script's rule expects it, from the
      rows it reads), a dome of radius 0.3 below it in the script's frame."""
    if layout == "mvtec3d":
        n, pitch, depth, radius = 200, 4e-4, 0.45, 0.025
        rows, cols = np.mgrid[0:n, 0:n].astype(np.float64)
        x, y = (cols - n / 2) * pitch, (rows - n / 2) * pitch
        z = depth - np.sqrt(np.maximum(radius * radius - x * x - y * y, 0.0))
        return np.stack([x, y, z], axis=-1).astype(np.float32)
    if layout == "eyecandies":
        n, radius, angle = 512, 0.3, 0.45
        rows, cols = np.mgrid[0:n, 0:n].astype(np.float64)
        x, along = (cols - n / 2) / n * 1.6, 1.6 - rows / n * 1.4
        dome = np.sqrt(np.maximum(radius * radius - x * x - (along - 0.9) ** 2, 0.0))
        height = -np.where(dome > 0, dome + 0.03, 0.0)          # the object below −0.02, the support at 0
        c, s = math.cos(angle), math.sin(angle)
        return np.stack([x, c * height + s * along, -s * height + c * along + 0.2], axis=-1).astype(np.float32)
    raise ValueError(f"no organized scan for layout '{layout}'")


def load_for_prediction(path: str, layout: str, seed: int, cls: str | None = None
                        ) -> tuple[Sample, np.ndarray, np.ndarray, int]:
    """One file read as the official script of ``layout`` reads a sample (``pad predict`` on a run
    rendered with ``--style pointad``), and how its points map back to the file's rows.

    Returns the :class:`Sample`, (R,) int64 for each row of the file the point that stands for it
    (−1: none), (R, 3) float32 coordinates of the rows (NaN where the file has no valid one) and
    the number of rows dropped as non-finite. Organized layouts read an xyz ``.tiff`` (rows: its
    pixels, row-major; a pixel takes the point of the 336×336 cell it falls in, after the
    official padding for MVTec 3D-AD, if that cell holds one). Unorganized layouts read any point
    file (rows: its points; a row takes the nearest of the resampled points, itself when kept).
    ``cls``: the sample's class (the scripts' point size), see :func:`organized_ref`."""
    import os

    if layout in ORGANIZED_LAYOUTS:
        if os.path.splitext(path)[1].lower() not in ORGANIZED_EXTENSIONS:
            raise PadError(f"this run was rendered with --style pointad from {layout} scans: its official script "
                           "reads organized scans, so pad predict needs an xyz .tiff grid (as in the dataset)", path)
        ref = organized_ref(path, layout, cls)
        xyz, rgb, mask = _organized_files(ref)
        sample = _load_organized(ref, layout, xyz, rgb, mask, seed)
        h, w = xyz.shape[:2]
        if layout == "mvtec3d":
            side, top, left = square_padding(h, w)
            full_h = full_w = side
        else:
            top, left, full_h, full_w = 0, 0, h, w
        cell_row = np.searchsorted(nearest_indices(full_h, GRID), np.arange(h) + top, side="right") - 1
        cell_col = np.searchsorted(nearest_indices(full_w, GRID), np.arange(w) + left, side="right") - 1
        owner = np.full(GRID * GRID, -1, np.int64)
        owner[np.asarray(sample.grid_index, np.int64)] = np.arange(sample.n_points)
        back = owner[(cell_row[:, None] * GRID + cell_col[None, :]).reshape(-1)]
        rows = xyz.reshape(-1, 3).astype(np.float32)
        measured = (rows != 0).any(axis=1)
        rows[~measured] = np.nan
        return sample, np.where(measured, back, -1), rows, 0
    from .pointfiles import read_cloud

    cloud = read_cloud(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    labels = cloud.labels if cloud.labels is not None else np.zeros(len(cloud.points), np.uint8)
    raw = Sample(id=f"predict/test/{stem}", cls=cls or "predict", split="test", points=cloud.points,
                 point_labels=labels, source_path=os.path.abspath(path), n_dropped_nonfinite=cloud.n_dropped_nonfinite)
    sample = load_real3d(raw, seed)
    _, nearest = cKDTree(np.asarray(sample.points, np.float64)).query(np.asarray(cloud.points, np.float64), k=1,
                                                                       workers=1)
    kept = cloud.kept if cloud.kept is not None else np.ones(len(cloud.points), bool)
    back = np.full(len(kept), -1, np.int64)
    back[kept] = nearest
    rows = np.full((len(kept), 3), np.nan, np.float32)
    rows[kept] = cloud.points
    return sample, back, rows, int(cloud.n_dropped_nonfinite)
