"""The per-sample render kernel: one :class:`~pipeline.sample.Sample` in, everything
the render store keeps about it out (:class:`RenderedSample`).

Steps: order the points spatially (the sample's order is restored at the end)
→ normalize into the unit ball → kNN graph (one KD-tree query, shared with the
normals and the splat sizes) → normals (file, else PCA with a first
orientation) → surfel mesh → per view: render (supersampled), area-average down,
visibility from the depth buffer, point→pixel map, 2D ground truth from the
index map → estimated normals turned towards the cameras that see them.

A pure function of the sample except for the per-process renderer cache
(:func:`pipeline.render.gl.get_renderer`). KD-tree queries use one thread
(``workers=1``): the kernel runs inside Dask worker processes, one per core, and
more threads per process would oversubscribe the cores.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from data_cache.errors import PadError
from pipeline.render import normals as nrm
from pipeline.render.cameras import camera_arrays
from pipeline.render.gl import get_renderer
from pipeline.render.projection import rows
from pipeline.render.rendered import RenderedSample, check_points, knn_graph, labels_of, normalize, spatial_order
from pipeline.render.settings import RenderSettings
from pipeline.render.surfels import SPACING_K, auto_half_sizes, surfel_mesh, tangent_basis
from pipeline.render.visibility import (depth_tolerance, ground_truth_2d, min_pool, output_pixels,
                                        view_geometry, visible_from_depth)

NORMAL_K = 10          # neighbours for PCA normals (plus the point itself)
MIN_SPLAT_PX = 0.5     # smallest automatic splat half-size, output pixels


@dataclass
class Prepared:
    """A normalized cloud ready to render: ``points`` (N,3) float64, ``normals``
    (N,3) float32 unit, ``half_sizes`` (N,) float32 splat half-sizes and ``thickness``
    (N,) float32 local surface thickness along the normal (world units), ``knn`` (N,K) int64 and
    ``knn_dist`` (N,K) float64 (self excluded, K ≥ the requested k), ``center`` (3,),
    ``scale``, ``normals_source``, ``estimated`` (N,) bool: normals not from the file,
    and ``order`` (N,) int64: row j of every array is point ``order[j]`` of the sample
    (:func:`spatial_order`)."""
    points: np.ndarray
    normals: np.ndarray
    half_sizes: np.ndarray
    thickness: np.ndarray
    knn: np.ndarray
    knn_dist: np.ndarray
    center: np.ndarray
    scale: float
    normals_source: str
    estimated: np.ndarray
    order: np.ndarray


def prepare(sample, settings: RenderSettings, cameras: list[dict], timings: dict | None = None) -> Prepared:
    """Order spatially, normalize, query neighbours, get normals and splat sizes (see
    :class:`Prepared`; its arrays are in ``order``, not in the sample's order)."""
    timings = {} if timings is None else timings
    raw = check_points(sample, settings)
    t0 = time.perf_counter()
    order = spatial_order(raw)
    raw = raw[order]
    pts, center, scale = normalize(raw)
    knn, knn_dist = knn_graph(pts, max(settings.knn, NORMAL_K, SPACING_K))
    t1 = time.perf_counter()
    given = getattr(sample, "normals", None)
    if given is not None and np.shape(given) == np.shape(sample.points):
        given = np.asarray(given)[order]
    else:
        given = None
    organized = getattr(sample, "grid_index", None) is not None
    normals, source, estimated, thick = _normals(given, organized, pts, raw, knn[:, :NORMAL_K])
    t2 = time.perf_counter()
    timings["knn"] = timings.get("knn", 0.0) + t1 - t0
    timings["normals"] = timings.get("normals", 0.0) + t2 - t1
    px = settings.point_size_px
    if px is None:                                # at least MIN_SPLAT_PX: every point draws something
        half = np.maximum(auto_half_sizes(knn_dist), np.float32(_px_to_world(MIN_SPLAT_PX, cameras)))
    else:
        half = np.full(len(pts), _px_to_world(px, cameras), dtype=np.float32)
    return Prepared(pts, normals, half, thick.astype(np.float32), knn, knn_dist, center, scale, source, estimated,
                    order)


def _px_to_world(px: float, cameras: list[dict]) -> float:
    """World size of ``px`` output pixels at the scene centre of the first camera."""
    w2c, k, perspective = camera_arrays(cameras[0])
    depth = float(w2c[2, 3]) if perspective else 1.0
    return px * depth / float(k[0, 0])


def _normals(given: np.ndarray | None, organized: bool, pts: np.ndarray, raw: np.ndarray, neighbors: np.ndarray
             ) -> tuple[np.ndarray, str, np.ndarray, np.ndarray]:
    """(N, 3) float32 unit normals, where they came from ("file", "estimated",
    "file+estimated": estimated where the file's ``given`` (N, 3) are zero or not
    finite), the (N,) bool mask of estimated ones and the (N,) local thickness along
    the normals. Estimated normals are PCA normals, smoothed once over the
    neighbours, with the first orientation guess of :mod:`pipeline.render.normals`
    (away from the centre, or towards the sensor for ``organized`` clouds)."""
    n = len(pts)
    cov = nrm.local_covariance(pts, neighbors)
    usable = np.zeros(n, dtype=bool)
    if given is not None:
        given, usable = nrm.clean_normals(given)
        if usable.all():
            return given, "file", ~usable, nrm.thickness(cov, given)
    est = nrm.smooth_normals(nrm.smallest_eigenvectors(cov), neighbors)
    if organized:
        est = nrm.orient_to_viewpoint(pts, est, raw)
    else:
        est = nrm.orient_outward(pts, est, center=np.zeros(3))
    source = "estimated"
    if usable.any():
        est[usable] = given[usable]
        source = "file+estimated"
    return est, source, ~usable, nrm.thickness(cov, est)


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Area average of ``factor``×``factor`` blocks: (h, w, 3) uint8 → (h/f, w/f, 3) uint8
    (rounded). Sums strided views (much faster than a reduction over a 5-D reshape)."""
    if factor == 1:
        return np.ascontiguousarray(image)
    total = np.zeros((image.shape[0] // factor, image.shape[1] // factor, image.shape[2]), dtype=np.uint16)
    for dy in range(factor):
        for dx in range(factor):
            total += image[dy::factor, dx::factor]
    total += (factor * factor) // 2
    total //= factor * factor
    return total.astype(np.uint8)


def rasterize(prep: Prepared, cameras: list[dict], settings: RenderSettings,
              colors: np.ndarray | None = None, on_view=None) -> np.ndarray:
    """Render the surfels of ``prep`` through every camera.

    ``colors`` (N, 3) uint8 switches to flat per-point colours (no lighting; tests
    and diagnostics). ``on_view(v, depth)`` is called with each view's render
    resolution depth map (h, w) float32 (+inf = background) before the next view
    is drawn. Returns images (V, H, W, 3) uint8 at output resolution.
    """
    size, ss = settings.image_size, settings.supersample
    renderer = get_renderer(size * ss, size * ss, settings.backend)
    verts, vnormals, faces, vcolors = surfel_mesh(prep.points, prep.normals, prep.half_sizes, colors)
    renderer.set_mesh(verts, vnormals, faces, vcolors)
    images = np.empty((len(cameras), size, size, 3), dtype=np.uint8)
    try:
        for v, cam in enumerate(cameras):
            color, depth = renderer.render(cam, ss)
            images[v] = downsample(color, ss)
            if on_view is not None:
                on_view(v, depth)
    finally:
        renderer.clear()
    return images


def render_sample(sample, settings: RenderSettings, cameras: list[dict], *,
                  point_colors: np.ndarray | None = None) -> RenderedSample:
    """Render one sample through ``cameras`` (from :func:`make_cameras`).

    ``point_colors`` (N, 3) uint8 (internal: tests, diagnostics) draws every splat
    in its point's flat colour instead of the shaded grey.

    Raises :class:`PadError` for a cloud that cannot be rendered (fewer than
    max(8, knn + 1) points, non-finite coordinates) or when no OpenGL context can
    be created. With ``settings.style == "pointad"`` the official scripts' rendering is
    used instead (:func:`pipeline.render.pointad.render_pointad`; ``cameras`` unused).
    """
    if settings.style == "pointad":
        from pipeline.render.pointad import render_pointad
        return render_pointad(sample, settings)
    timings: dict[str, float] = {}
    prep = prepare(sample, settings, cameras, timings)
    n, n_views = len(prep.points), len(cameras)
    size, ss = settings.image_size, settings.supersample
    labels = labels_of(sample, n)
    anomalous = labels[prep.order].astype(bool)
    if point_colors is not None:
        point_colors = np.asarray(point_colors, dtype=np.uint8)[prep.order]
    t1, t2 = tangent_basis(prep.normals)
    pixel = np.empty((n, n_views, 2), dtype=np.int16)
    visible = np.empty((n, n_views), dtype=bool)
    gt2d = np.zeros((n_views, size, size), dtype=np.uint8)
    vis_time = [0.0]
    points_rows, normals_rows = rows(prep.points), rows(prep.normals)

    def index_view(v: int, depth: np.ndarray) -> None:
        t = time.perf_counter()
        geo = view_geometry(points_rows, normals_rows, cameras[v], ss, size, size)
        tol = depth_tolerance(geo, prep.half_sizes, prep.thickness)
        vis = visible_from_depth(geo, depth, tol)
        out_pix = output_pixels(geo, ss)
        pixel[:, v] = out_pix
        visible[:, v] = vis
        if anomalous.any():
            gt2d[v] = ground_truth_2d(prep.points, t1, t2, prep.half_sizes, tol, vis & anomalous,
                                      cameras[v], out_pix, min_pool(depth, ss))
        vis_time[0] += time.perf_counter() - t

    t = time.perf_counter()
    images = rasterize(prep, cameras, settings, colors=point_colors, on_view=index_view)
    timings["raster"] = time.perf_counter() - t - vis_time[0]
    t = time.perf_counter()
    normals = prep.normals
    if prep.normals_source != "file":                    # estimated normals: face the cameras that see them
        oriented = nrm.orient_by_views(normals, visible, _toward_cameras(prep.points, cameras))
        normals = np.where(prep.estimated[:, None], oriented, normals)
    timings["index_visibility"] = vis_time[0]
    timings["normals"] += time.perf_counter() - t

    back = np.empty_like(prep.order)                       # back to the sample's point order
    back[prep.order] = np.arange(n)
    arrays = {"points": prep.points[back].astype(np.float32), "normals": normals[back], "labels": labels,
              "pixel": pixel[back], "visible": visible[back],
              "knn": prep.order[prep.knn[back, :settings.knn]].astype(np.int32),
              "knn_dist": prep.knn_dist[back, :settings.knn].astype(np.float32)}
    attrs = {"id": sample.id, "class": sample.cls, "split": sample.split, "label": int(labels.any()),
             "n_points": n, "source_path": str(sample.source_path),
             "center": [float(c) for c in prep.center], "scale": float(prep.scale),
             "splat_half_size_px": float(np.median(prep.half_sizes) * camera_arrays(cameras[0])[1][0, 0]),
             "normals_source": prep.normals_source}
    grid_index = getattr(sample, "grid_index", None)
    if grid_index is not None:
        arrays["grid_index"] = np.asarray(grid_index, dtype=np.int32)
        if getattr(sample, "grid_shape", None) is not None:
            attrs["grid_shape"] = [int(s) for s in sample.grid_shape]
    rgb = resize_rgb(sample.rgb, size) if getattr(sample, "rgb", None) is not None else None
    return RenderedSample(arrays=arrays, attrs=attrs, images=images, gt2d=gt2d, rgb=rgb, timings=timings)


def _toward_cameras(points: np.ndarray, cameras: list[dict]) -> np.ndarray:
    """Directions from the object to each camera: (V, 3) when every camera is
    orthographic, else (N, V, 3) per point (unit vectors, float64)."""
    dirs, centers, perspective = [], [], False
    for cam in cameras:
        w2c, _, persp = camera_arrays(cam)
        perspective |= persp
        dirs.append(-w2c[2, :3])                          # the camera looks along its +z row
        centers.append(-w2c[:3, :3].T @ w2c[:3, 3])
    if not perspective:
        return np.asarray(dirs)
    toward = np.asarray(centers)[None] - np.asarray(points, dtype=np.float64)[:, None]
    return toward / np.maximum(np.linalg.norm(toward, axis=2, keepdims=True), 1e-12)


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 (or (H, W) grey) → (size, size, 3) uint8, antialiased
    (a non-square image is stretched, as the organized grid maps to it)."""
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise PadError(f"RGB image has shape {arr.shape}, expected (H, W, 3)")
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(arr[..., :3]))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)
