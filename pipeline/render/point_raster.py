"""OpenGL points drawn in numpy as Mesa's llvmpipe draws them, bit for bit (``--style pointad``).

The official scripts draw each view with Open3D's legacy renderer: square ``GL_POINTS`` of a fixed
size, one flat colour each, ``GL_LESS`` depth test into a 24-bit depth buffer, no multisampling.
On a machine without a GPU that is Mesa's llvmpipe. :func:`rasterize_points` computes the same
image without OpenGL, from the arithmetic llvmpipe does (Mesa 22.3, x86-64; measured against the
GL draws of :class:`pipeline.render.gl.PointRenderer`, ``tests/test_point_raster.py``):

1. **vertex**: ``clip = P · (x, y, z, 1)`` in float32; for the legacy camera ``P`` is axis-aligned
   (:func:`axis_aligned`), so each clip coordinate is one float32 product and one sum, and
   whether the compiler fuses them into an FMA cannot change a bit;
2. **viewport** (Mesa's draw module): ``inv = 1 / w`` (IEEE division), ``ndc = clip · inv`` and
   the window coordinate ``fma(ndc, scale, translate)``, rounded once (:func:`fma_f32`). The
   state tracker flips window-system framebuffers, so y runs down from the framebuffer's top:
   scale −h/2, translate ``fb_height`` − h/2;
3. **point setup** (``lp_setup_point.c``): the centre minus the half-pixel offset in 1/256 pixel
   (``util_iround``: halves away from zero), minus half the width; the point covers the ``size``
   columns from the first whose left edge is at or right of that corner, and the ``size`` rows
   from the first strictly below it (GL's bottom-left fill rule on the flipped buffer);
4. **depth**: the window z as a 24-bit unsigned normalized value, ``rint(float32(z · (2²⁴ − 1)))``
   (``lp_build_clamped_float_to_unsigned_norm``, round half to even); ``GL_LESS`` keeps, on each
   pixel, the smallest value and on equal values the point drawn first.

So a pixel shows the point with the smallest key (depth, draw index) among those covering it.
Every point covers the same ``size``² block from its own corner, so the image is a sliding
minimum: each point's key goes into a grid at its corner (the smallest key per corner), and a
``size`` × ``size`` window minimum of that grid (separable, by doubling widths) gives every
pixel's winner. That is O(pixels · log size) whole-array operations instead of one fragment per
covered pixel, and no GL context at all.

:func:`rasterize_points` returns None where this model is not known to hold (a projection that
is not axis-aligned, a point size that is not a whole number of pixels, a point outside the clip
volume, which GL would clip); the caller draws with OpenGL then.
"""
from __future__ import annotations

import threading

import numpy as np

SUBPIXEL = 256                  # llvmpipe's fixed point: 1/256 pixel (FIXED_ORDER 8)
DEPTH_MAX = 16777215.0          # 2^24 - 1: the 24-bit depth buffer's largest value
MAX_POINT_SIZE = 255            # llvmpipe clamps wider points (LP_MAX_POINT_WIDTH): left to OpenGL
_F32, _F64 = np.float32, np.float64
_NONE = np.iinfo(np.int32).max  # the rank of a pixel no point covers
LAZY_OVERDRAW = 4               # rasterize_points: points' area over the drawn block's above which
                                # only the winners' levels are computed
_SCRATCH = threading.local()


def fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a · b + c`` rounded once (a fused multiply-add), elementwise.

    The product of two float32 is exact in float64; the sum is made exact by TwoSum and rounded
    to odd in float64 (53 ≥ 24 + 2 bits), so the final rounding to float32 is the correct one."""
    p = np.asarray(a, _F32).astype(_F64) * np.asarray(b, _F32).astype(_F64)
    c64 = np.asarray(c, _F32).astype(_F64)
    s = p + c64
    back = s - p
    err = (p - (s - back)) + (c64 - back)
    inexact_even = (err != 0) & ((s.view(np.int64) & 1) == 0)
    if inexact_even.any():
        s = np.where(inexact_even, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(_F32)


def axis_aligned(mvp: np.ndarray) -> bool:
    """Whether the (4, 4) matrix maps x, y and z each on their own (the legacy camera's form):
    clip x from x, clip y from y, clip z and w from z only."""
    m = np.asarray(mvp)
    off = [m[0, 1], m[0, 2], m[1, 0], m[1, 2], m[2, 0], m[2, 1], m[3, 0], m[3, 1]]
    return not np.any(off)


def window_coordinates(points: np.ndarray, mvp: np.ndarray, width: int, height: int, fb_height: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """llvmpipe's window coordinates of (N, 3) ``points`` through an axis-aligned float32 ``mvp``
    in a ``width`` × ``height`` viewport at the bottom of a framebuffer ``fb_height`` rows tall:
    (N,) float32 x (from the left), y (from the framebuffer's top row), z in [0, 1], and (N,) bool
    whether each point lies inside the clip volume."""
    p = np.asarray(points, dtype=_F32)
    m = np.asarray(mvp, dtype=_F32)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    cx = m[0, 0] * x + m[0, 3]
    cy = m[1, 1] * y + m[1, 3]
    cz = m[2, 2] * z + m[2, 3]
    cw = m[3, 2] * z + m[3, 3]
    inside = (np.abs(cx) <= cw) & (np.abs(cy) <= cw) & (np.abs(cz) <= cw)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = _F32(1.0) / cw
        nx, ny, nz = cx * inv, cy * inv, cz * inv
    half_w, half_h = _F32(width / 2.0), _F32(height / 2.0)
    wx = fma_f32(nx, half_w, half_w)
    wy = fma_f32(ny, -half_h, _F32(fb_height - height / 2.0))
    wz = fma_f32(nz, _F32(0.5), _F32(0.5))
    return wx, wy, wz, inside & np.isfinite(wx) & np.isfinite(wy) & np.isfinite(wz)


def _iround(v: np.ndarray) -> np.ndarray:
    """llvmpipe's ``util_iround`` of float32 ``v``: to the nearest integer, halves away from zero."""
    return np.where(v >= 0, np.trunc(v + _F32(0.5)), np.trunc(v - _F32(0.5))).astype(np.int64)


def point_corners(wx: np.ndarray, wy: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int64 first column and first row (from the framebuffer's top) of the ``size`` ×
    ``size`` pixels that points at window coordinates ``wx``, ``wy`` (float32) cover."""
    half = size * SUBPIXEL // 2
    x0 = _iround((wx - _F32(0.5)) * _F32(SUBPIXEL)) - half
    y0 = _iround((wy - _F32(0.5)) * _F32(SUBPIXEL)) - half
    return -((-x0) >> 8), -((-(y0 + 1)) >> 8)


def depth_24(wz: np.ndarray) -> np.ndarray:
    """(N,) int64 24-bit depth values of float32 window depths ``wz`` in [0, 1]."""
    scaled = (np.clip(np.asarray(wz, _F32), 0, 1).astype(_F64) * DEPTH_MAX).astype(_F32)
    return np.rint(scaled).astype(np.int64)


def depth_order(depth: np.ndarray) -> np.ndarray:
    """(N,) int64 permutation sorting (N,) int64 24-bit ``depth`` values ascending, equal ones in
    their order: the order of the keys (depth << 32 | position). Two stable passes over 12-bit
    digits (numpy's radix sort of 16-bit keys), about twice as fast as sorting the 64-bit keys."""
    if len(depth) == 0 or depth.min() < 0 or depth.max() > DEPTH_MAX:
        return np.argsort((depth << 32) | np.arange(len(depth)))
    low = np.argsort((depth & 0xFFF).astype(np.uint16), kind="stable")
    return low[np.argsort((depth[low] >> 12).astype(np.uint16), kind="stable")]


def _scratch(n: int) -> list[np.ndarray]:
    """Three int32 buffers of at least ``n`` entries, this thread's, reused from draw to draw
    (fresh large arrays cost a page fault per 4 KiB on every draw)."""
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None or len(bufs[0]) < n:
        bufs = _SCRATCH.bufs = [np.empty(max(n, 1 << 20), dtype=np.int32) for _ in range(3)]
    return bufs


def _window_min(a: np.ndarray, size: int, step: int, out: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, int]:
    """The minimum of every ``size`` entries of the 1-D ``a`` that are ``step`` apart (the result
    is (``size`` − 1) · ``step`` shorter), written into the buffers ``out`` by turns, ``out[0]``
    first (neither may hold ``a``): windows of 1, 2, 4 … p ≤ ``size`` by doubling, then two
    windows of p that together cover ``size``. Returns the result and how many passes wrote it
    (0: ``a`` itself, for ``size`` 1)."""
    shifts, width = [], 1
    while 2 * width <= size:
        shifts.append(width)
        width *= 2
    if width < size:
        shifts.append(size - width)
    for k, shift in enumerate(shifts):
        n = len(a) - shift * step
        a = np.minimum(a[:n], a[shift * step:], out=out[k % 2][:n])
    return a, len(shifts)


def block_min(grid: np.ndarray, size: int, out: list[np.ndarray]) -> np.ndarray:
    """(R − ``size`` + 1, C − ``size`` + 1): the minimum of every ``size`` × ``size`` block of the
    (R, C) C-contiguous ``grid`` (at its top-left corner), computed in the two 1-D buffers ``out``
    of at least R·C entries, neither holding ``grid`` (the result may be a view of either, or of
    ``grid`` for ``size`` 1). Rows first, as whole rows; then columns on the flattened array (a
    window that runs into the next row ends in the last ``size`` − 1 columns, which are dropped):
    both passes walk memory in order."""
    rows, cols = grid.shape
    if size == 1:
        return grid
    by_rows, passes = _window_min(grid.reshape(-1), size, cols, (out[0], out[1]))
    free, held = (out[0], out[1]) if passes % 2 == 0 else (out[1], out[0])     # ``held`` holds by_rows
    by_cols, passes = _window_min(by_rows, size, 1, (free, held))
    full = (free if passes % 2 else held)[:(rows - size + 1) * cols]
    full[len(by_cols):] = _NONE                         # the last row's dropped columns
    return full.reshape(rows - size + 1, cols)[:, :cols - size + 1]


def winners(cols: np.ndarray, rows: np.ndarray, ranks: np.ndarray, size: int, width: int, height: int
            ) -> tuple[np.ndarray, tuple[int, int]]:
    """Per pixel, the smallest of ``ranks`` (N,) int32 among the points whose ``size`` × ``size``
    blocks start at (``rows``, ``cols``) and cover it, inside a ``width`` × ``height`` image.

    Returns the winners' ranks over the image rows and columns the points can reach, (R, C) int32
    (``np.iinfo(np.int32).max`` where no point covers a pixel; a view of this thread's scratch
    buffers, valid until the next call), and (first row, first column) of that block in the image.
    (int32, not a wider key: numpy's minimum of int32 is vectorized.)"""
    s = int(size)
    reach = (cols > -s) & (cols < width) & (rows > -s) & (rows < height)
    cols, rows, ranks = cols[reach], rows[reach], ranks[reach]
    if len(ranks) == 0:
        return np.zeros((0, 0), np.int32), (0, 0)
    r0, r1 = max(int(rows.min()), 1 - s), int(rows.max())
    c0, c1 = max(int(cols.min()), 1 - s), int(cols.max())
    t0, t1 = max(r0, 0), min(r1 + s - 1, height - 1)            # image rows the points reach
    u0, u1 = max(c0, 0), min(c1 + s - 1, width - 1)
    # corner grid: corner (t0 - s + 1 + i, u0 - s + 1 + j) at [i, j]; pixel (t, u) sees corners
    # t - s + 1 .. t and u - s + 1 .. u, i.e. the window of ``s`` starting at [t - t0, u - u0]
    shape = (t1 - t0 + s, u1 - u0 + s)
    grid_buf, *out = _scratch(shape[0] * shape[1])
    grid = grid_buf[:shape[0] * shape[1]]
    grid.fill(_NONE)
    np.minimum.at(grid, (rows - (t0 - s + 1)) * shape[1] + (cols - (u0 - s + 1)), ranks)
    return block_min(grid.reshape(shape), s, out), (t0, u0)


def rasterize_points(points: np.ndarray, levels, mvp: np.ndarray, point_size: float,
                     width: int, height: int, background: int, fb_height: int | None = None
                     ) -> np.ndarray | None:
    """The (height, width) uint8 image (row 0 at the top) of (N, 3) ``points`` drawn in order as
    ``point_size``-pixel OpenGL points in their (N,) uint8 grey ``levels`` over a ``background``
    grey, through the float32 ``mvp``, in a ``width`` × ``height`` window at the bottom of a
    framebuffer ``fb_height`` rows tall (default: the window's), as llvmpipe draws them (module
    doc). None where the model does not hold; draw with OpenGL then.

    ``levels`` may also be a function of (M,) int64 point indices giving their (M,) uint8 levels,
    each point's level its own (not a function of the others): it is then asked only for the
    points that win a pixel where the points overdraw each other many times over
    (:data:`LAZY_OVERDRAW`; a dense cloud of wide points, of which few stay in sight), else for
    every point drawn."""
    fb = int(height if fb_height is None else fb_height)
    size = float(point_size)
    whole = bool(np.isfinite(size)) and size == int(size) and 1 <= size <= MAX_POINT_SIZE
    if not whole or fb < height or not axis_aligned(mvp):
        return None
    s = int(size)
    n = len(points)
    image = np.full((height, width), background, dtype=np.uint8)
    if n == 0:
        return image
    wx, wy, wz, inside = window_coordinates(points, mvp, width, height, fb)
    drawn = np.flatnonzero(inside)                                # GL clips a point outside the clip volume
    cols, rows = point_corners(wx[drawn], wy[drawn], s)
    order = depth_order(depth_24(wz[drawn]))                      # nearer, then drawn first
    m = len(drawn)
    ranks = np.empty(m, dtype=np.int32)
    ranks[order] = np.arange(m, dtype=np.int32)
    best, (t0, u0) = winners(cols, rows - (fb - height), ranks, s, width, height)
    by_rank = np.empty(m + 1, dtype=np.uint8)                    # grey of each rank; then the background
    by_rank[m] = background
    won = np.minimum(best, m)
    if not callable(levels):
        by_rank[:m] = np.asarray(levels, dtype=np.uint8)[drawn[order]]
    elif m * s * s > LAZY_OVERDRAW * max(best.size, 1):          # only the winners' levels are read
        seen = np.zeros(m + 1, dtype=bool)
        seen[won.reshape(-1)] = True
        ranks_won = np.flatnonzero(seen[:m])
        by_rank[ranks_won] = levels(drawn[order[ranks_won]])
    else:
        by_rank[:m] = levels(drawn[order])
    image[t0:t0 + best.shape[0], u0:u0 + best.shape[1]] = by_rank[won]
    return image
