"""Geometry operators of a sample, computed once and reused: by ``pad train`` every epoch, by
scoring for every chunk of points.

Everything the trainer derives from a sample's render-store arrays, except the random point
subset of a step, is a fixed function of the frozen cache (:mod:`trainer.projection`):

- ``source`` (N,) int64: whose views each point is read in (:func:`~trainer.projection.point_sources`);
- ``view_index``: where each point reads the per-view maps (:func:`~trainer.projection.view_index`);
- ``projection`` P, (N, V·G²) float32 CSR: row j samples the patch tokens at point j's pixels in
  the views of ``source[j]`` (:func:`~trainer.projection.point_rows` over all points);
- ``aggregation`` A, (N, N) float32 CSR: G-aggregation with the run's α and σ
  (:func:`~trainer.projection.aggregation_matrix` over all rows).

Both are kept as blocks of :data:`~trainer.projection.ROW_CHUNK` rows (built one block at a
time, never copied whole: an 800k-point sample's operators are ~0.2 GB). The G-aggregated
features of any points are then ``(A[index][:, m] @ P[m]) @ tokens`` with m the points those
rows reach: the same sparse products, on the same rows, in the same order as
:func:`trainer.projection.geometry_features`, so the results are bit-identical
(``tests/test_geometry_cache.py`` checks it against that straightforward path). :class:`SampleGeometry` holds one sample's operators (about 290 bytes per
point with 9 views: 14 MB for 50k points, 0.23 GB for 800k); :class:`GeometryCache` keeps those of
as many samples as fit a byte budget, admitting samples while they fit and never evicting (the
order of samples changes every epoch, so an evicted sample would be rebuilt before it is used
again); samples that do not fit take the straightforward path, which computes only the rows the
step needs. Either way the numbers are the same, so nothing depends on the budget or on which
process (DataLoader worker) holds which sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from trainer.knn_graph import median_spacing
from trainer import projection as _projection
from trainer.projection import (ALPHA, ROW_CHUNK, ViewIndex, _apply_to_patch, _check_patch, aggregation_matrix,
                                point_rows, point_sources, view_index)

#: Default byte budget of a :class:`GeometryCache` (per process: DataLoader workers share it out).
GEOMETRY_BUDGET = 512 * 2 ** 20
#: A sample may take at most this fraction (1/SHARE) of the budget: with the default budget, clouds
#: of up to ~290k points (9 views, 10 neighbours) are cached.
SHARE = 4


def bytes_per_point(views: int, k: int = 10) -> int:
    """Upper bound of :attr:`SampleGeometry.nbytes` per point, known before building: pixel
    (4·V), visible (V), view index (5·V), P (at most 4 entries of 8 bytes per view), source (8),
    labels (1), A (k + 1 entries of 8 bytes) and the two row pointers (8)."""
    return views * 4 + views + views * 5 + views * 4 * 8 + 8 + 1 + (k + 1) * 8 + 8


@dataclass
class SampleGeometry:
    """The fixed geometry of one sample (see the module docstring).

    ``pixel`` (N, V, 2) int16, ``visible`` (N, V) bool, ``labels`` (N,) uint8 tensor or None, ``source``
    (N,) int64, ``view_index`` (:class:`~trainer.projection.ViewIndex` for image_size² maps);
    ``projection`` and ``aggregation``: the row blocks (``block`` rows each, the last
    one shorter) of P (N, V·G²) and A (N, N), float32 CSR, or None when built without the
    geometry layer; ``attrs``: the sample's attributes (class, label, ...).
    """
    image_size: int
    grid: int
    pixel: np.ndarray
    visible: np.ndarray
    labels: torch.Tensor | None
    source: np.ndarray
    view_index: ViewIndex | None = None
    projection: list[sp.csr_matrix] | None = None
    aggregation: list[sp.csr_matrix] | None = None
    attrs: dict | None = None
    block: int = ROW_CHUNK

    @property
    def n_points(self) -> int:
        return int(self.pixel.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (bytes)."""
        total = self.pixel.nbytes + self.visible.nbytes + self.source.nbytes
        total += 0 if self.labels is None else self.labels.numel()
        if self.view_index is not None:
            total += self.view_index.counts.numel() + self.view_index.flat.numel() * self.view_index.flat.element_size()
        for blocks in (self.projection, self.aggregation):
            for mat in blocks or ():
                total += mat.data.nbytes + mat.indices.nbytes + mat.indptr.nbytes
        return int(total)

    def _rows(self, blocks: list[sp.csr_matrix], index: np.ndarray) -> sp.csr_matrix:
        """Rows ``index`` of the matrix stored as row ``blocks``, in that order."""
        order = np.argsort(index, kind="stable")
        ranked = index[order]
        which = ranked // self.block
        parts = []
        for b in np.unique(which):
            sel = ranked[which == b] - b * self.block
            parts.append(blocks[int(b)][sel])
        mat = parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")
        if np.any(order != np.arange(order.shape[0])):
            inverse = np.empty_like(order)
            inverse[order] = np.arange(order.shape[0])
            mat = mat[inverse]
        return mat

    def operator(self, index) -> sp.csr_matrix:
        """(n, V·G²) float32 CSR: the linear map from patch tokens to the G-aggregated features
        of the points ``index`` ((n,) int, sorted or not)."""
        if self.projection is None or self.aggregation is None:
            raise ValueError("this SampleGeometry was built without the geometry layer")
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if index.size == 0:
            return sp.csr_matrix((0, self.projection[0].shape[1]), dtype=np.float32)
        agg = self._rows(self.aggregation, index)                                      # (n, N)
        if len(self.projection) == 1:  # the same products as with the needed columns only
            return (agg @ self.projection[0]).tocsr()
        needed = np.unique(agg.indices)
        return (agg[:, needed] @ self._rows(self.projection, needed)).tocsr()

    def features(self, patch: torch.Tensor, index) -> torch.Tensor:
        """G-aggregated point features q̂ of the points ``index`` (n,): (n, L, D) float32,
        bit-identical to :func:`trainer.projection.geometry_features` with the α and σ the
        geometry was built with. ``patch``: (V, L, G·G, D) float tensor; differentiable w.r.t. it."""
        _check_patch(patch, self.pixel, self.grid)
        return _apply_to_patch(self.operator(index), patch)


def sample_geometry(sample: dict, image_size: int, grid: int, *, alpha: float = ALPHA,
                    sigma: float | None = None, geometry: bool = True, source: np.ndarray | None = None,
                    attrs: dict | None = None) -> SampleGeometry:
    """Build a sample's :class:`SampleGeometry` from its render-store arrays.

    ``sample``: ``pixel`` (N, V, 2), ``visible`` (N, V), optional ``labels`` (N,), and with ``geometry``
    ``knn`` (N, k) / ``knn_dist`` (N, k); ``grid``: G of the patch tokens; ``sigma``: G-aggregation width
    (None: the cloud's median kNN spacing, as :func:`~trainer.projection.aggregation_matrix`);
    ``source``: a precomputed :func:`~trainer.projection.point_sources`.
    """
    pixel = np.ascontiguousarray(sample["pixel"], dtype=np.int16)
    visible = np.ascontiguousarray(sample["visible"], dtype=bool)
    knn = sample.get("knn")
    if source is None:
        source = point_sources(pixel, visible, image_size)
    source = np.asarray(source, dtype=np.int64)
    labels = sample.get("labels")
    labels = None if labels is None else torch.from_numpy(np.ascontiguousarray(labels, dtype=np.uint8))
    geom = SampleGeometry(image_size=int(image_size), grid=int(grid), pixel=pixel, visible=visible, labels=labels,
                          source=source, view_index=view_index(pixel, visible, image_size, image_size, source),
                          attrs=dict(attrs if attrs is not None else sample.get("attrs") or {}))
    if geometry:
        if knn is None or sample.get("knn_dist") is None:
            raise ValueError("the geometry layer needs the sample's kNN graph (knn, knn_dist)")
        knn_dist = sample["knn_dist"]
        if sigma is None:  # what aggregation_matrix computes for sigma=None, once for all blocks
            sigma = median_spacing(knn, knn_dist)
        n, chunk = pixel.shape[0], _projection.ROW_CHUNK
        blocks = [np.arange(a, min(n, a + chunk), dtype=np.int64) for a in range(0, n, chunk)]
        geom.block = chunk
        geom.aggregation = [aggregation_matrix(knn, knn_dist, alpha, sigma, rows=b) for b in blocks]
        geom.projection = [point_rows(pixel, visible, source, b, image_size, grid) for b in blocks]
    return geom


def explicit_features(patch: torch.Tensor, sample: dict, image_size: int, *, alpha: float = ALPHA,
                      sigma: float | None = None, source: np.ndarray | None = None, chunk: int = 16384):
    """Yield ``(index, q̂)`` for consecutive chunks of all the points of one sample: ``index``
    (n,) int64, ``q̂`` (n, L, D) float32, each chunk bit-identical to
    :func:`trainer.projection.geometry_features` on that ``index`` (the scoring loop of
    :func:`trainer.model.predict_sample`), with the operators built once for the sample instead of
    once per chunk. ``patch``: (V, L, G·G, D) float tensor; other arguments as
    :func:`sample_geometry`; memory: the sample's operators plus one chunk's."""
    grid = int(round(patch.shape[2] ** 0.5))
    geom = sample_geometry(sample, image_size, grid, alpha=alpha, sigma=sigma, source=source)
    n = geom.n_points
    for start in range(0, n, chunk):
        index = np.arange(start, min(n, start + chunk), dtype=np.int64)
        yield index, geom.features(patch, index)


class GeometryCache:
    """Sample geometries kept in memory within ``budget`` bytes, keyed by store index.

    :meth:`admits` says, before building, whether a sample may be kept;
    :meth:`put` keeps it when its actual size still fits. Nothing is ever evicted.
    """

    def __init__(self, budget: int = GEOMETRY_BUDGET):
        self.budget = max(0, int(budget))
        self.used = 0
        self._items: dict[int, SampleGeometry] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: int) -> bool:
        return int(key) in self._items

    def get(self, key: int) -> SampleGeometry | None:
        return self._items.get(int(key))

    def admits(self, n_points: int, views: int, k: int = 10, geometry: bool = True) -> bool:
        """Whether a sample of ``n_points`` points, ``views`` views and ``k`` neighbours fits the
        remaining budget (:func:`bytes_per_point`; without the geometry layer: pixel, visible,
        source and labels only) and at most 1/:data:`SHARE` of the whole budget (one huge cloud
        does not take the room of many small ones, and a class of 800k-point clouds, which no
        budget of a few hundred MB could hold, is streamed at no extra memory)."""
        per_point = bytes_per_point(views, k) if geometry else 10 * views + 9
        size = int(n_points) * per_point
        return int(n_points) > 0 and size <= self.budget // SHARE and self.used + size <= self.budget

    def put(self, key: int, geom: SampleGeometry) -> bool:
        """Keep ``geom`` if it fits the remaining budget; True when kept."""
        size = geom.nbytes
        if int(key) in self._items or self.used + size > self.budget:
            return False
        self._items[int(key)] = geom
        self.used += size
        return True

    def stats(self) -> dict[str, Any]:
        return {"samples": len(self._items), "bytes": self.used, "budget": self.budget}


__all__: Sequence[str] = ("GEOMETRY_BUDGET", "SampleGeometry", "GeometryCache", "sample_geometry",
                          "explicit_features", "bytes_per_point")
