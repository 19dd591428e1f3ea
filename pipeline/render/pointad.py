"""The render kernel of ``--style pointad``: what the official PointAD scripts
(``multi_view/multiview_{mvtec,eyecandies,real3d}.py`` of zqhang/PointAD) compute for one
sample, drawn without Open3D's legacy ``Visualizer`` (:class:`PointDrawer`: numpy with llvmpipe's
arithmetic on a machine without a GPU, else OpenGL points).

Input: a :class:`~pipeline.sample.Sample` whose points are the ones the script reads (made by
:mod:`pipeline.ingest.pointad`: the 336×336 grid of an organized scan, or the resampled
Real3D-AD cloud). Per layout (:data:`SCRIPTS`):

1. the script's fixed transform of the cloud (MVTec 3D-AD and Real3D-AD: π about X;
   Eyecandies: the axis swap and scale of its background removal, then π/4 about X), with
   normals as Open3D's ``estimate_normals`` gives them (:mod:`pipeline.render.open3d_normals`);
2. per view, the cloud rotated about its mean by the view's angle about X or Y, and Open3D's
   default camera for the rotated cloud (:mod:`pipeline.render.open3d_camera`; Eyecandies
   moves it back in 5 mm steps until every point projects into the window, as the script's
   ``adjust_view_to_fit_screen``);
3. the image: grey (0.7) points of the class's size, Open3D's Phong lighting
   (:mod:`pipeline.render.open3d_shading`), white background, in a window of 1024 (MVTec) or
   1036 pixels, resized to 336 bicubically as PIL does;
4. the 2D ground truth: a second render in a 1036-pixel window with the default camera,
   anomalous points white and normal ones black on black, 6 pixels, no light, resized the same
   way and binarized as ``dataset.py`` does (> 0.5). Only the points that can cover a pixel of
   an anomalous one are drawn (:func:`reach_of_marked`): the same image, a fraction of the work;
5. the point→pixel map of ``cv2.projectPoints`` with the image camera, × 336 / window,
   truncated and clipped to [0, 335]; visibility by the scripts' rule: in each 336² pixel only
   the point with the largest rotated z (the first such in point order) is seen.

Everything the store keeps besides (normalized points, kNN graph, grid index) is as for
``--style pad`` (:mod:`pipeline.render.kernel`).
"""
from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from data_cache.errors import PadError
from pipeline.render import bicubic
from pipeline.render.cameras import rotation_x, rotation_y
from pipeline.render.open3d_camera import LegacyCamera, bounding_box, legacy_camera, project_pinhole
from pipeline.render.open3d_normals import estimate_normals
from pipeline.render.open3d_shading import phong_grey
from pipeline.render.point_raster import rasterize_points
from pipeline.render.rendered import (RenderedSample, check_points, labels_of, normalize, spatial_order,
                                      without_self)
from pipeline.render.threads import render_threads, shared_pool


OUTPUT_SIZE = 336           # the scripts resize every rendering to 336×336
GREY = 0.7                  # the colour of every point in the image render
GT_WINDOW = 1036            # the ground-truth render's window (every script)
GT_POINT_SIZE = 6
IMAGE_BACKGROUND = 255       # white behind the object in the image render
GT_BACKGROUND = 0            # black in the ground-truth render
FIT_STEP = 0.005            # Eyecandies: the camera moves back by this much until the cloud fits
MAX_FIT_STEPS = 100000
REACH_MARGIN = 4.0          # pixels: see reach_of_marked

MVTEC_VIEWS = (("x", -45.0), ("x", -15.0), ("x", 0.0), ("x", 15.0), ("x", 45.0),
               ("y", -30.0), ("y", -15.0), ("y", 15.0), ("y", 30.0))
EYECANDIES_VIEWS = (("x", -30.0), ("x", -15.0), ("x", 0.0), ("x", 10.0), ("x", 20.0),
                    ("y", -30.0), ("y", -15.0), ("y", 15.0), ("y", 30.0))
REAL3D_VIEWS = tuple(("x", float(d)) for d in (-144, -108, -72, -36, 0, 36, 72, 108, 144))


@dataclass(frozen=True)
class Script:
    """One official multiview script: its views (axis, degrees), image window side, normal
    estimation (radius, max_nn), per-class point sizes and the size pad gives other classes,
    whether it fits the view to the window (Eyecandies), and its fixed transform (``pre``)."""
    name: str
    views: tuple[tuple[str, float], ...]
    window: int
    normal_radius: float
    normal_max_nn: int
    point_sizes: dict
    default_point_size: int
    fit_view: bool
    pre: str


SCRIPTS = {
    "mvtec3d": Script("multi_view/multiview_mvtec.py", MVTEC_VIEWS, 1024, 0.1, 50,
                      {"bagel": 7, "cable_gland": 12, "carrot": 7, "cookie": 6, "dowel": 10, "rope": 5,
                       "peach": 7, "foam": 8, "potato": 8, "tire": 8}, 8, False, "flip_x"),
    "eyecandies": Script("multi_view/multiview_eyecandies.py", EYECANDIES_VIEWS, 1036, 0.1, 50, {}, 10, True,
                         "eyecandies"),
    "real3d": Script("multi_view/multiview_real3d.py", REAL3D_VIEWS, 1036, 0.8, 30, {}, 12, False, "flip_x"),
}
SCRIPTS["shapenet"] = SCRIPTS["real3d"]     # no script of its own: the unorganized clouds' script


def script_for(fmt: str) -> Script:
    """The official script of dataset layout ``fmt``; PadError for a layout it never rendered."""
    script = SCRIPTS.get(fmt)
    if script is None:
        raise PadError(f"--style pointad reproduces the official scripts of MVTec 3D-AD, Eyecandies, Real3D-AD "
                       f"and Anomaly-ShapeNet; the '{fmt}' layout has none: render it with pad's renderer (the same "
                       "pad render command without --style pointad)")
    return script


def point_size_for(script: Script, cls: str, explicit: float | None) -> tuple[float, str]:
    """(window pixels, where it came from): the script's size for ``cls``, else ``explicit``
    (``--point-size``), else the layout's default."""
    if cls in script.point_sizes:
        return float(script.point_sizes[cls]), "script"
    if explicit is not None:
        return float(explicit), "--point-size"
    return float(script.default_point_size), "default"


def rotation(axis: str, degrees: float) -> np.ndarray:
    """(3, 3) float64 rotation by ``degrees`` about the world ``axis`` ("x" or "y")."""
    return (rotation_x if axis == "x" else rotation_y)(math.radians(degrees))


def script_frame(points: np.ndarray, script: Script, k: int = 0, threads: int = 1
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The cloud as the script renders it: (N, 3) float64 points and normals in the script's
    frame, the (3, 3) linear map from the sample's coordinates to that frame, and the KD-tree
    query made for the normals (distances and indices of the max(``script.normal_max_nn``, ``k``)
    nearest points of each point in that frame, itself included), for reuse; ``threads``: the
    query's threads (each point's answer is its own: the same arrays on any number)."""
    p = np.asarray(points, dtype=np.float64)
    if script.pre == "flip_x":                  # o3d_pc.transform(matrix_x(pi)); then normals
        m = rotation("x", 180.0)
    else:                                       # Eyecandies: x, z, y swapped, scaled by (0.1, −0.1, 0.1)
        m = np.array([[0.1, 0.0, 0.0], [0.0, 0.0, -0.1], [0.0, 0.1, 0.0]])
    q = p @ m.T
    kk = min(max(script.normal_max_nn, k), len(q))
    from scipy.spatial import cKDTree      # here: the client plans renders without scipy

    # queried cell by cell (neighbours close in memory: ~20% faster on a Real3D-AD cloud), each
    # point's answer put back in its row: the same arrays as a query in point order
    order = spatial_order(q)
    dist, idx = np.empty((len(q), kk)), np.empty((len(q), kk), dtype=np.int64)
    d, i = cKDTree(q).query(q[order], k=kk, workers=threads)
    dist[order], idx[order] = d.reshape(len(q), kk), i.reshape(len(q), kk)
    query = (dist, idx)
    n = estimate_normals(q, script.normal_radius, script.normal_max_nn, query, threads)
    if script.pre == "eyecandies":              # normals first, then matrix_x(π/4), as the script
        r = rotation("x", 45.0)
        q, n, m = q @ r.T, n @ r.T, r @ m
    return q, n, m, query


def _moved(camera: LegacyCamera, steps: int) -> LegacyCamera:
    """``camera`` moved back along its front axis by ``steps`` × 5 mm."""
    d = FIT_STEP * steps
    eye = camera.eye + camera.front * d
    return LegacyCamera(camera.width, camera.height, eye, eye - camera.front * (camera.distance + d), camera.front,
                        camera.up, camera.right, camera.max_extent, camera.distance + d)


def _fits(points: np.ndarray, camera: LegacyCamera) -> bool:
    xy = project_pinhole(points, camera.intrinsic(), camera.extrinsic())
    return bool(((xy[:, 0] >= 0) & (xy[:, 0] < camera.width) & (xy[:, 1] >= 0) & (xy[:, 1] < camera.height)).all())


def fit_camera(points: np.ndarray, camera: LegacyCamera) -> LegacyCamera:
    """Eyecandies' ``adjust_view_to_fit_screen``: the camera moved back along its front axis in
    steps of 5 mm (at least one) until every point projects inside the window.

    Moving back only shrinks a point's offset from the principal point, so the number of steps
    follows from the point that needs the most room (computed, then checked with the projection
    itself, as the script checks, around that number)."""
    k = camera.intrinsic()
    ext = camera.extrinsic()
    cam = np.asarray(points, np.float64) @ ext[:3, :3].T + ext[:3, 3]          # x right, y down, z forward
    need = 0.0
    for axis, f, c, size in ((0, k[0, 0], k[0, 2], camera.width), (1, k[1, 1], k[1, 2], camera.height)):
        v = cam[:, axis]
        room = np.where(v > 0, f * v / (size - c), f * -v / c)                  # depth at which it fits
        need = max(need, float((room - cam[:, 2]).max()))
    steps = max(1, int(math.ceil(need / FIT_STEP)) - 1)
    while steps > 1 and _fits(points, _moved(camera, steps - 1)):
        steps -= 1
    for steps in range(steps, MAX_FIT_STEPS + 1):
        moved = _moved(camera, steps)
        if _fits(points, moved):
            return moved
    raise PadError("the cloud does not fit the window however far the camera moves back")


def correspondence(points: np.ndarray, camera: LegacyCamera, projected: np.ndarray | None = None) -> np.ndarray:
    """(N, 2) int64 (x = column, y = row) pixels of the 336² image: the pinhole projection
    × 336 / window, truncated toward zero (``astype(int)``) and clipped to [0, 335];
    ``projected``: that projection (N, 2) float64, when already made."""
    if projected is None:
        projected = project_pinhole(points, camera.intrinsic(), camera.extrinsic())
    xy = projected * (OUTPUT_SIZE / camera.width)
    return np.clip(xy.astype(np.int64), 0, OUTPUT_SIZE - 1)


def visible_by_depth_rule(pixel_xy: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(N,) bool: the scripts' ``compute_visibility_3d_to_2d``. Of the points on one pixel of
    ``pixel_xy`` (N, 2), the one with the largest ``z`` (N,) is visible; on equal z the first.

    Without sorting: the largest z of each pixel, then the first point that reaches it."""
    n = len(z)
    z = np.asarray(z, dtype=np.float64)
    key = pixel_xy[:, 1] * OUTPUT_SIZE + pixel_xy[:, 0]
    top = np.full(OUTPUT_SIZE * OUTPUT_SIZE, -np.inf)
    np.maximum.at(top, key, z)
    reach = np.flatnonzero(z == top[key])
    first = np.full(OUTPUT_SIZE * OUTPUT_SIZE, n, dtype=np.int64)
    np.minimum.at(first, key[reach], reach)
    visible = np.zeros(n, dtype=bool)
    visible[first[first < n]] = True
    return visible


def reach_of_marked(xy: np.ndarray, marked: np.ndarray, point_size: float, margin: float = REACH_MARGIN
                    ) -> np.ndarray:
    """(M,) int64 indices, ascending, of the points that can cover a pixel covered by a ``marked``
    point (N,) bool, from their window positions ``xy`` (N, 2): the points whose centre lies within
    ``point_size`` + ``margin`` pixels of the box of the marked centres (a square point reaches
    ``point_size`` / 2 around its centre; ``margin`` covers the GPU's float32 projection). Drawn in
    their order, they give every pixel the marked points can reach the colour all points give it
    (the depth test and its ties see the same points in the same order there); elsewhere only
    marked points can leave a colour other than the background, and none is drawn. Every point
    when a marked position is not finite."""
    pts = np.asarray(xy, dtype=np.float64)
    if not marked.any():
        return np.zeros(0, dtype=np.int64)
    lo, hi = pts[marked].min(axis=0), pts[marked].max(axis=0)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return np.arange(len(pts))
    reach = float(point_size) + margin
    return np.flatnonzero(((pts >= lo - reach) & (pts <= hi + reach)).all(axis=1))


def resize_bicubic(image: np.ndarray, background: int) -> np.ndarray:
    """(h, w) uint8 grey image → (336, 336) uint8 with PIL's bicubic filter (torchvision's
    ``Resize(BICUBIC)`` on a PIL image; PIL filters each channel alike, so a grey RGB image
    gives this in every channel), bit for bit; only the part that reaches a pixel other than
    ``background`` is filtered (:mod:`pipeline.render.bicubic`)."""
    return bicubic.resize_bicubic(image, (OUTPUT_SIZE, OUTPUT_SIZE), background)


@dataclass
class ScriptViews:
    """The script's outputs for one sample: ``images`` (V, 336, 336, 3) uint8, ``gt2d``
    (V, 336, 336) uint8 in {0, 1}, ``pixel`` (N, V, 2) int16 (row, col), ``visible`` (N, V)
    bool, ``normals`` (N, 3) float64 in the sample's frame, ``timings``, and ``neighbours``:
    (indices (N, k) int64, distances (N, k) float64 in the sample's units) or None."""
    images: np.ndarray
    gt2d: np.ndarray
    pixel: np.ndarray
    visible: np.ndarray
    normals: np.ndarray
    timings: dict
    neighbours: tuple | None = None


@functools.lru_cache(maxsize=1)
def llvmpipe_fuses_multiply_add() -> bool:
    """Whether this CPU has the fused multiply-add that llvmpipe's viewport transform compiles to
    (x86-64 with FMA3, or 64-bit ARM), as the numpy rasterizer assumes (read once per process: every
    sample asks)."""
    import platform

    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    try:
        with open("/proc/cpuinfo") as fh:
            return any(line.startswith("flags") and " fma " in f"{line} " for line in fh)
    except OSError:
        return False


#: OpenGL draws of this process, one at a time: the numpy rasterizer draws on several threads (views
#: of a sample, samples of a worker), and a draw it leaves to OpenGL shares the process's one context
#: (made current by the thread that draws, which OSMesa allows).
_GL_DRAWS = threading.Lock()


class PointDrawer:
    """Draws one window of square points as Open3D's legacy renderer does: with the numpy
    rasterizer of :mod:`pipeline.render.point_raster` where pad would draw with Mesa's llvmpipe
    (``--backend auto`` on a machine without a GPU: the same images, bit for bit, without an OpenGL
    context), else with OpenGL (:class:`pipeline.render.gl.PointRenderer`; also where the numpy
    model does not hold, e.g. a point size that is not a whole number of pixels). Every window is
    its own framebuffer, as the script's window is."""

    def __init__(self, backend: str = "auto"):
        from pipeline.dask_cluster import gl_platform

        self.backend = backend
        self.numpy = backend == "auto" and gl_platform(backend) == "osmesa" and llvmpipe_fuses_multiply_add()

    def draw(self, points: np.ndarray, levels, mvp: np.ndarray, point_size: float, window: int,
             background: int) -> np.ndarray:
        """(window, window) uint8 image (row 0 at the top) of (N, 3) ``points`` in their (N,) uint8
        grey ``levels`` over a ``background`` of 0 or 255, drawn in order through the float32
        ``mvp``, ``point_size`` pixels wide. ``levels`` may be a function of point indices
        (:func:`~pipeline.render.point_raster.rasterize_points`)."""
        if self.numpy:
            image = rasterize_points(points, levels, mvp, point_size, window, window, background)
            if image is not None:
                return image
        if callable(levels):
            levels = levels(np.arange(len(points)))
        from pipeline.render.gl import get_point_renderer

        with _GL_DRAWS:
            return get_point_renderer(window, window, self.backend).render(points, levels, mvp, point_size,
                                                                            background)


def draws_without_gl(backend: str = "auto") -> bool:
    """Whether ``--style pointad`` draws every point with numpy in this process (:class:`PointDrawer`:
    ``--backend auto`` on a machine without a GPU, a CPU with FMA): samples may then be rendered on
    several threads at once, no OpenGL context being shared but for the rare draw left to OpenGL,
    which :data:`_GL_DRAWS` serializes."""
    return PointDrawer(backend).numpy


def render_views(points: np.ndarray, gt_labels: np.ndarray, script: Script, point_size: float,
                 backend: str = "auto", knn: int = 0, threads: int = 1) -> ScriptViews:
    """Everything the script renders for (N, 3) ``points`` (the sample's coordinates) whose
    ground-truth render colours are (N,) ``gt_labels`` (1 = anomalous); with ``knn`` > 0 also
    the ``knn`` nearest other points of each point (for the stored kNN graph, from the normals'
    KD-tree query).

    ``threads`` > 1: the normals' KD-tree query runs on that many threads and, when the numpy
    rasterizer draws (no OpenGL context is shared), the views are rendered in the process's pool of
    that many threads (:func:`pipeline.render.threads.shared_pool`), each into its own slots of the
    outputs: the same arrays as one thread. The ``raster`` and ``index_visibility`` timings are
    then the views' seconds summed over the threads."""
    timings = {"normals": 0.0, "raster": 0.0, "index_visibility": 0.0}
    t = time.perf_counter()
    q, normals, frame, (dist, idx) = script_frame(points, script, knn + 1 if knn else 0, threads)
    timings["normals"] += time.perf_counter() - t
    n, n_views = len(q), len(script.views)
    images = np.empty((n_views, OUTPUT_SIZE, OUTPUT_SIZE, 3), dtype=np.uint8)
    gt2d = np.zeros((n_views, OUTPUT_SIZE, OUTPUT_SIZE), dtype=np.uint8)
    pixel = np.empty((n, n_views, 2), dtype=np.int16)
    visible = np.empty((n, n_views), dtype=bool)
    # light off: Open3D draws each point in its own colour (white = anomalous, black = normal)
    gt_grey = np.where(np.asarray(gt_labels) != 0, 255, 0).astype(np.uint8)
    any_gt = bool(gt_grey.any())
    drawer = PointDrawer(backend)
    center = q.mean(axis=0)

    def view(v: int) -> tuple[float, float]:
        """Renders view ``v`` into its slots; (raster, index/visibility) seconds."""
        t = time.perf_counter()
        axis, degrees = script.views[v]
        r = rotation(axis, degrees)
        rq = (q - center) @ r.T + center
        box = bounding_box(rq)
        camera = legacy_camera(rq, script.window, script.window, box)
        if script.fit_view:
            camera = fit_camera(rq, camera)
        shade = functools.partial(phong_grey, rq, normals @ r.T, GREY, camera)    # levels of the given points
        full = drawer.draw(rq, shade, camera.mvp(), point_size, script.window, IMAGE_BACKGROUND)
        images[v] = resize_bicubic(full, IMAGE_BACKGROUND)[..., None]   # grey: the three channels are equal
        projected = project_pinhole(rq, camera.intrinsic(), camera.extrinsic())
        if any_gt:
            gt_camera = legacy_camera(rq, GT_WINDOW, GT_WINDOW, box)
            if script.fit_view:                                 # the image's camera was moved back
                gt_xy = project_pinhole(rq, gt_camera.intrinsic(), gt_camera.extrinsic())
            else:                                               # the same camera in a wider window
                gt_xy = (projected + 0.5) * (GT_WINDOW / camera.width) - 0.5
            near = reach_of_marked(gt_xy, gt_grey != 0, GT_POINT_SIZE)
            gt_full = drawer.draw(rq[near], gt_grey[near], gt_camera.mvp(), GT_POINT_SIZE, GT_WINDOW, GT_BACKGROUND)
            if gt_full.any():                                   # else the resize is black too
                gt2d[v] = resize_bicubic(gt_full, GT_BACKGROUND) > 127
        t2 = time.perf_counter()
        xy = correspondence(rq, camera, projected)
        pixel[:, v, 0], pixel[:, v, 1] = xy[:, 1], xy[:, 0]
        visible[:, v] = visible_by_depth_rule(xy, rq[:, 2])
        return t2 - t, time.perf_counter() - t2

    if threads > 1 and drawer.numpy:
        spans = list(shared_pool(threads).map(view, range(n_views)))
    else:
        spans = [view(v) for v in range(n_views)]
    timings["raster"] += sum(s[0] for s in spans)
    timings["index_visibility"] += sum(s[1] for s in spans)
    back = normals @ frame                      # normals map back by the transpose of the frame's map
    back /= np.linalg.norm(back, axis=1, keepdims=True)
    neighbours = None
    if knn:
        k_idx, k_dist = without_self(idx, dist, min(knn, n - 1))
        neighbours = (k_idx, k_dist / abs(float(np.linalg.det(frame))) ** (1 / 3))   # in the sample's units
    return ScriptViews(images, gt2d, pixel, visible, back, timings, neighbours)


def render_pointad(sample, settings) -> RenderedSample:
    """Render one sample read by :func:`pipeline.ingest.pointad.load_pointad_sample` as its
    layout's official script does (module doc); ``settings``: a
    :class:`~pipeline.render.settings.RenderSettings` with ``style="pointad"`` and ``layout``.

    Returns the :class:`~pipeline.render.rendered.RenderedSample` the store keeps, its points
    normalized like every pad sample and the script's outputs as they are."""

    timings: dict[str, float] = {}
    raw = check_points(sample, settings)
    labels = labels_of(sample, len(raw))
    script = script_for(settings.layout)
    size, source = point_size_for(script, sample.cls, settings.point_size_px)
    gt = sample.script_labels if getattr(sample, "script_labels", None) is not None else labels
    out = render_views(raw, gt, script, size, settings.backend, knn=settings.knn, threads=render_threads())
    timings.update(out.timings)
    pts, center, scale = normalize(raw)
    knn, knn_dist = out.neighbours[0], out.neighbours[1] / scale
    arrays = {"points": pts.astype(np.float32), "normals": out.normals.astype(np.float32), "labels": labels,
              "pixel": out.pixel, "visible": out.visible, "knn": knn.astype(np.int32),
              "knn_dist": knn_dist.astype(np.float32)}
    attrs = {"id": sample.id, "class": sample.cls, "split": sample.split, "label": int(labels.any()),
             "n_points": len(pts), "source_path": str(sample.source_path),
             "center": [float(c) for c in center], "scale": float(scale),
             "point_size_window_px": size, "point_size_source": source, "normals_source": "open3d"}
    if sample.grid_index is not None:
        arrays["grid_index"] = np.asarray(sample.grid_index, dtype=np.int32)
        attrs["grid_shape"] = [int(s) for s in sample.grid_shape]
    return RenderedSample(arrays=arrays, attrs=attrs, images=out.images, gt2d=out.gt2d,
                          rgb=getattr(sample, "rgb", None), timings=timings)
