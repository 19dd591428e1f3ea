"""PIL's bicubic resize of an 8-bit grey image (``Image.resize(size, Resampling.BICUBIC)``, no
box, no reducing gap), bit for bit, computed only where the image differs from its background.

The official scripts resize each 1024-1036 px rendering to 336² with PIL. Most of a rendering is
background (the object covers about half of it; the ground truth a few percent), and PIL filters
every pixel. PIL's resize is separable fixed-point arithmetic (Pillow's ``libImaging/Resample.c``):

- per axis and output pixel ``o``: ``center = (o + 0.5)·scale`` with ``scale = in / out``,
  ``support = 2·max(scale, 1)``, taps ``t`` from ``first = int(center − support + 0.5)`` (≥ 0) to
  ``int(center + support + 0.5)`` (≤ in), weights ``w_t = cubic((first + t − center + 0.5) /
  max(scale, 1))`` (Keys' cubic, a = −0.5), summed in tap order and divided by their sum, then
  rounded half away from zero to integers of 22 fractional bits;
- the rows, then the columns: ``out = clip(floor((2^21 + Σ_t pixel·k_t) / 2^22), 0, 255)``, with
  the row pass's result stored as 8 bits before the column pass.

Here every sum is of integers below 2^53, so float64 matrix products give them exactly in any order.
An output pixel whose taps (a rectangle of the input) all hold the background value ``c`` is ``c``
when the fixed-point weights of every output row and column keep a constant ``c``
(:func:`keeps_constant`, checked per table; PIL's own pass is used otherwise), so only the rows
and columns that reach a pixel of another value are filtered.

:func:`matches_pil` compares this with the installed PIL once per process and size (another
build of PIL, e.g. Pillow-SIMD, rounds differently): where it differs, PIL itself resizes.
"""
from __future__ import annotations

import functools
import math

import numpy as np

PRECISION_BITS = 22                # Pillow: 32 − 8 − 2
HALF = float(1 << (PRECISION_BITS - 1))
UNIT = float(1 << PRECISION_BITS)
CHUNK = 32                         # output pixels per matrix product (the filter's band stays narrow)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel (a = −0.5), float64, as Pillow's ``bicubic_filter``
    evaluates it (same operations in the same order)."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=8)
def fixed_point_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PIL's bicubic weights for one axis resized from ``in_size`` to ``out_size`` pixels:
    ``first`` (out,) int64 first input pixel of each output pixel, ``taps`` (out,) int64 how many,
    and ``k`` (out, ksize) int64 weights with 22 fractional bits (zero past ``taps``)."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    inv = 1.0 / filterscale
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)         # C's (int): toward zero
    last = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    taps = last - first
    t = np.arange(ksize)
    used = t[None, :] < taps[:, None]
    w = np.where(used, _cubic((((first[:, None] + t[None, :]).astype(np.float64) - center[:, None]) + 0.5) * inv), 0.0)
    total = np.zeros(out_size)
    for j in range(ksize):                     # the sum in tap order (numpy's sums pair terms)
        total += w[:, j]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    k = np.where(w < 0, -0.5 + w * UNIT, 0.5 + w * UNIT).astype(np.int64)    # half away from zero
    return first, taps, np.where(used, k, 0)


@functools.lru_cache(maxsize=16)
def keeps_constant(in_size: int, out_size: int, value: int) -> bool:
    """Whether every output pixel of an axis resized from ``in_size`` to ``out_size`` pixels
    maps a constant ``value`` (0-255) to itself."""
    s = fixed_point_weights(in_size, out_size)[2].sum(axis=1)
    return bool(np.all(np.clip(np.floor((HALF + value * s) / UNIT), 0, 255) == value))


@functools.lru_cache(maxsize=8)
def _dense(in_size: int, out_size: int) -> np.ndarray:
    """(in_size, out_size) float64 matrix of the axis's weights (column o: output pixel o)."""
    first, taps, k = fixed_point_weights(in_size, out_size)
    m = np.zeros((in_size, out_size))
    o, t = np.nonzero(np.arange(k.shape[1])[None, :] < taps[:, None])
    m[first[o] + t, o] = k[o, t]
    return m


def _reached(first: np.ndarray, taps: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """[start, stop) of the output pixels whose taps reach input pixels lo..hi (inclusive)."""
    hit = np.flatnonzero((first <= hi) & (first + taps - 1 >= lo))
    return int(hit[0]), int(hit[-1]) + 1


def _pass(src: np.ndarray, dense: np.ndarray, first: np.ndarray, taps: np.ndarray, src_offset: int,
          start: int, stop: int) -> np.ndarray:
    """One axis's filter along the last axis of ``src`` (…, n) float64 whose index 0 is input pixel
    ``src_offset``, for output pixels ``start``..``stop``: (…, stop − start) uint8 as float64."""
    out = np.empty(src.shape[:-1] + (stop - start,))
    for a in range(start, stop, CHUNK):
        b = min(stop, a + CHUNK)
        lo, hi = int(first[a]), int((first[a:b] + taps[a:b]).max())
        out[..., a - start:b - start] = src[..., lo - src_offset:hi - src_offset] @ dense[lo:hi, a:b]
    out += HALF
    out *= 1.0 / UNIT
    np.floor(out, out=out)
    return np.clip(out, 0.0, 255.0, out=out)


def resize_bicubic_numpy(image: np.ndarray, size: tuple[int, int], background: int) -> np.ndarray | None:
    """(h, w) uint8 ``image`` → (size[1], size[0]) uint8, PIL's bicubic resize (module doc),
    filtering only the output rows and columns that reach a pixel other than ``background``.
    None where the weights do not keep ``background`` (the caller then uses PIL)."""
    h, w = image.shape
    out_w, out_h = size
    if not (keeps_constant(w, out_w, background) and keeps_constant(h, out_h, background)):
        return None
    fx, tx, _ = fixed_point_weights(w, out_w)
    fy, ty, _ = fixed_point_weights(h, out_h)
    out = np.full((out_h, out_w), background, dtype=np.uint8)
    other = image != background
    rows, cols = np.flatnonzero(other.any(axis=1)), np.flatnonzero(other.any(axis=0))
    if rows.size == 0:
        return out
    y0, y1 = _reached(fy, ty, int(rows[0]), int(rows[-1]))
    x0, x1 = _reached(fx, tx, int(cols[0]), int(cols[-1]))
    r0, r1 = int(fy[y0]), int((fy[y0:y1] + ty[y0:y1]).max())            # input rows those outputs read
    c0, c1 = int(fx[x0]), int((fx[x0:x1] + tx[x0:x1]).max())
    across = _pass(image[r0:r1, c0:c1].astype(np.float64), _dense(w, out_w), fx, tx, c0, x0, x1)   # (rows, x)
    down = _pass(np.ascontiguousarray(across.T), _dense(h, out_h), fy, ty, r0, y0, y1)              # (x, y)
    out[y0:y1, x0:x1] = down.T
    return out


def resize_bicubic_pil(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL's own bicubic resize of (h, w) uint8 ``image`` to ``size`` (width, height)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


@functools.lru_cache(maxsize=8)
def matches_pil(shape: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether :func:`resize_bicubic_numpy` equals the installed PIL on a seeded random image of
    ``shape`` (every weight of both axes at work, with values across 0-255) and on a sparse one."""
    rng = np.random.default_rng(336)
    dense = rng.integers(0, 256, size=shape, dtype=np.uint8)
    sparse = np.full(shape, 255, dtype=np.uint8)
    sparse[shape[0] // 3:shape[0] // 2, shape[1] // 4:shape[1] // 2] = dense[:shape[0] // 2 - shape[0] // 3,
                                                                             :shape[1] // 2 - shape[1] // 4]
    for img, background in ((dense, 0), (sparse, 255)):
        mine = resize_bicubic_numpy(img, size, background)
        if mine is None or not np.array_equal(mine, resize_bicubic_pil(img, size)):
            return False
    return True


def resize_bicubic(image: np.ndarray, size: tuple[int, int], background: int) -> np.ndarray:
    """(h, w) uint8 grey ``image`` → (size[1], size[0]) uint8, equal to PIL's bicubic resize:
    in numpy where it matches this PIL (:func:`matches_pil`) and keeps ``background``, else PIL."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if matches_pil(image.shape, tuple(size)):
        out = resize_bicubic_numpy(image, size, background)
        if out is not None:
            return out
    return resize_bicubic_pil(image, size)
