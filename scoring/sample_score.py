"""The scores of one sample from its cached features: point map, object score, view
probabilities and 2D maps (``pad score``, ``pad predict`` and ``pad calibrate`` all score with
:func:`score_sample`).

- the model gives the implicit point map S3d_a (N,), for PointAD+ the explicit map T_a
  (N,), the view probabilities p_k (V,) and the 2D maps (V, H, W)
  (:func:`trainer.model.predict_sample`);
- point map A = G(0.5·S3d_a + 0.5·T_a) (PointAD: G(S3d_a)), G the Gaussian smoothing of
  :func:`smooth`: on the organized grid when the sample has ``grid_index`` (σ given in pixels
  of the 336×336 grid the official code resizes scans to, i.e. σ·max(H, W)/336 native
  pixels), over the cached kNN graph otherwise (σ in median kNN distances); object score
  s = 0.5·mean_k p_k + 0.5·max_j A(j) (:func:`combine`);
- with cached RGB features (``--rgb``): the RGB image scored like one more view gives its
  global probability p_rgb and a 2D map, read at each point's grid position as A_rgb
  (:func:`fuse_rgb`). ``--fusion official`` (test.py): the RGB map is smoothed first, fused map
  G(0.5·A + 0.5·G(A_rgb)), fused score max(fused map) + 0.5·(p_rgb + mean_k p_k);
  ``--fusion paper``: G(0.5·A + 0.5·A_rgb) and 0.5·(0.5·p_rgb + 0.5·s) + 0.5·max(fused map).
  No retraining.

``--protocol pointad`` (organized scans) puts the unsmoothed map on the official 336×336 grid
(:mod:`scoring.official_grid`), smooths it as test.py (background included) and takes the
object score from it (:func:`official_grid_scores`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from data_cache.errors import PadError

SAMPLE_FIELDS = ("points", "normals", "labels", "pixel", "visible", "knn", "knn_dist", "grid_index")
FUSIONS = ("official", "paper")
PROTOCOLS = ("points", "pointad")
OFFICIAL_GRID = 336  # side of the grid the official code resizes organized scans to (scoring.official_grid)


# ---------------------------------------------------------------------------- per-sample maths
@dataclass
class SampleScore:
    """Scores of one sample.

    - ``point_map``: (N,) float32, A after smoothing; ``score``: object score
    - ``view_probs``: (V,) float32, p_k(anomalous); ``view_maps``: (V, H, W) float32 or None
    - ``multimodal_map``: (N,) float32 or None; ``multimodal_score``: float or None
    - ``grid_map`` / ``grid_multimodal``: (336, 336) float32 official-grid maps (``--protocol
      pointad`` on organized scans) or None
    """
    point_map: np.ndarray
    score: float
    view_probs: np.ndarray
    view_maps: np.ndarray | None = None
    multimodal_map: np.ndarray | None = None
    multimodal_score: float | None = None
    rgb_score: float | None = None
    grid_map: np.ndarray | None = None
    grid_multimodal: np.ndarray | None = None


def native_sigma(sigma: float, grid_shape: Sequence[int]) -> float:
    """σ in native grid pixels for σ given in pixels of the official 336×336 grid:
    ``sigma · max(H, W) / 336`` (the official code resizes the H×W scan to 336×336)."""
    return float(sigma) * max(int(grid_shape[0]), int(grid_shape[1])) / OFFICIAL_GRID


def smooth(values: np.ndarray, sample: dict, sigma: float) -> np.ndarray:
    """G_σ of point values (N,) float: on the organized grid when the sample has ``grid_index``
    and a ``grid_shape`` attribute (σ in pixels of the official 336×336 grid,
    :func:`native_sigma`), else over its cached kNN graph (σ in median kNN distances).
    σ = 0 returns the values unchanged. Returns (N,) float32."""
    from scoring.smoothing import smooth_grid, smooth_knn

    values = np.asarray(values, np.float32).reshape(-1)
    if sigma <= 0 or values.size == 0:
        return values.copy()
    grid_shape = (sample.get("attrs") or {}).get("grid_shape")
    if sample.get("grid_index") is not None and grid_shape is not None:
        return smooth_grid(values, sample["grid_index"], tuple(grid_shape),
                           native_sigma(sigma, grid_shape)).astype(np.float32)
    if sample.get("knn") is None:
        raise PadError("the sample has neither a grid index nor a kNN graph to smooth over")
    return smooth_knn(values, sample["knn"], sample["knn_dist"], sigma).astype(np.float32)


def smooth_image(image_map: np.ndarray, sigma: float) -> np.ndarray:
    """A dense 2D map (S, S) smoothed as the official test.py smooths the RGB map:
    ``gaussian_filter`` (reflect borders) with σ in pixels of a 336×336 map (σ·S/336 here)."""
    from scoring.official_grid import official_smooth

    m = np.asarray(image_map, np.float64)
    return official_smooth(m, float(sigma) * m.shape[0] / OFFICIAL_GRID).astype(np.float32)


def base_map(s3d: np.ndarray, t_a: np.ndarray | None) -> np.ndarray:
    """The unsmoothed point map (N,) float32: 0.5·S3d + 0.5·T_a (PointAD+) or S3d (PointAD)."""
    base = np.asarray(s3d, np.float32).reshape(-1)
    if t_a is not None:
        base = 0.5 * base + 0.5 * np.asarray(t_a, np.float32).reshape(-1)
    return base


def combine(s3d: np.ndarray, t_a: np.ndarray | None, view_probs: np.ndarray, sample: dict,
            sigma: float) -> tuple[np.ndarray, float]:
    """Point map A (N,) float32 and object score.

    ``s3d``: (N,) implicit anomalous map; ``t_a``: (N,) explicit map (PointAD+) or None
    (PointAD); ``view_probs``: (V,) p_k(anomalous). A = G(0.5·S3d + 0.5·T_a) or G(S3d);
    score = 0.5·mean_k p_k + 0.5·max_j A(j)."""
    point_map = smooth(base_map(s3d, t_a), sample, sigma)
    score = 0.5 * float(np.mean(view_probs)) + 0.5 * float(point_map.max(initial=0.0))
    return point_map, score


def is_organized(sample: dict) -> bool:
    """Whether a sample is an organized scan (``grid_index`` plus a ``grid_shape`` attribute)."""
    return sample.get("grid_index") is not None and (sample.get("attrs") or {}).get("grid_shape") is not None


def grid_pixels(grid_index: np.ndarray, grid_shape: Sequence[int], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel of each point in the RGB image resized to ``image_size``: the point's grid
    position (row, col) = divmod(grid_index, W) scaled from the H×W grid by its centre.
    ``grid_index``: (N,) int. Returns rows, cols: (N,) int64 in [0, image_size)."""
    h, w = int(grid_shape[0]), int(grid_shape[1])
    index = np.asarray(grid_index, np.int64).reshape(-1)
    r, c = np.divmod(index, w)
    rows = np.floor((r + 0.5) * image_size / h).astype(np.int64)
    cols = np.floor((c + 0.5) * image_size / w).astype(np.int64)
    return np.clip(rows, 0, image_size - 1), np.clip(cols, 0, image_size - 1)


def fuse_rgb(point_map: np.ndarray, score: float, rgb_map: np.ndarray, rgb_score: float, sample: dict,
             sigma: float, view_probs: np.ndarray | None = None, form: str = "official") -> tuple[np.ndarray, float]:
    """Multimodal map and score. ``point_map``: (N,) A (smoothed); ``score``: the point-cloud object
    score s; ``rgb_map``: (S, S) float, the RGB image's 2D anomaly map; ``rgb_score``: p_rgb, its
    global anomaly probability; ``view_probs``: (V,) p_k (needed by the official form).
    A_rgb(j) = the RGB map at point j's grid position.

    - ``official`` (test.py): A_rgb read from the smoothed RGB map (:func:`smooth_image`), fused
      map G(0.5·A + 0.5·A_rgb), score max(fused map) + 0.5·(p_rgb + mean_k p_k) (in [0, 2]);
    - ``paper``: A_rgb unsmoothed, fused map G(0.5·A + 0.5·A_rgb), score
      0.5·(0.5·p_rgb + 0.5·s) + 0.5·max(fused map).
    Returns (fused map (N,) float32, fused score)."""
    grid_shape = (sample.get("attrs") or {}).get("grid_shape")
    if sample.get("grid_index") is None or grid_shape is None:
        raise PadError("RGB fusion needs an organized cloud (grid_index and grid_shape)")
    if form not in FUSIONS:
        raise PadError(f"unknown --fusion '{form}' (choices: {', '.join(FUSIONS)})")
    rgb_map = np.asarray(rgb_map, np.float32)
    if form == "official":
        rgb_map = smooth_image(rgb_map, sigma)
    rows, cols = grid_pixels(sample["grid_index"], grid_shape, rgb_map.shape[0])
    a_rgb = rgb_map[rows, cols]
    fused = smooth(0.5 * np.asarray(point_map, np.float32) + 0.5 * a_rgb, sample, sigma)
    peak = float(fused.max(initial=0.0))
    if form == "official":
        if view_probs is None:
            raise ValueError("the official fusion needs the view probabilities")
        return fused, peak + 0.5 * (float(rgb_score) + float(np.mean(view_probs)))
    return fused, 0.5 * (0.5 * float(rgb_score) + 0.5 * float(score)) + 0.5 * peak


# ---------------------------------------------------------------------------- one sample
def score_sample(model, global_: np.ndarray, patch: np.ndarray, sample: dict, image_size: int, sigma: float,
                 text: dict | None = None, rgb: tuple[np.ndarray, np.ndarray] | None = None,
                 with_maps: bool = False, fusion: str = "official", protocol: str = "points") -> SampleScore:
    """Score one sample from its cached features.

    ``global_``: (V, D) and ``patch``: (V, L, G·G, D) float16/32 (feature store); ``sample``:
    the render store's arrays and ``attrs`` (see :data:`SAMPLE_FIELDS`); ``rgb``: optional
    (rgb_global (D,), rgb_patch (L, G·G, D)) to fuse (needs ``grid_index``); ``text``: the
    model's :meth:`inference_text` for the sample's class (computed once per class);
    ``fusion``: see :func:`fuse_rgb`; ``protocol`` 'pointad' on an organized sample also fills
    ``grid_map`` / ``grid_multimodal`` (the official 336×336 maps) and takes the object scores
    from them (:func:`official_grid_scores`)."""
    from trainer.model import predict_sample, predict_views

    if protocol not in PROTOCOLS:
        raise PadError(f"unknown --protocol '{protocol}' (choices: {', '.join(PROTOCOLS)})")
    pred = predict_sample(model, global_, patch, sample, image_size, text=text, with_maps=with_maps)
    point_map, score = combine(pred.implicit, pred.explicit, pred.view_probs, sample, sigma)
    out = SampleScore(point_map=point_map, score=score, view_probs=np.asarray(pred.view_probs, np.float32),
                      view_maps=pred.view_maps)
    rgb_maps = None
    if rgb is not None:
        probs, maps = predict_views(model, np.asarray(rgb[0])[None], np.asarray(rgb[1])[None], image_size, text=text)
        out.rgb_score = float(probs[0])
        out.multimodal_map, out.multimodal_score = fuse_rgb(point_map, score, maps[0], out.rgb_score, sample, sigma,
                                                            view_probs=out.view_probs, form=fusion)
        rgb_maps = maps[0]
    if protocol == "pointad" and is_organized(sample):
        official_grid_scores(out, base_map(pred.implicit, pred.explicit), sample, sigma, rgb_maps, fusion)
    return out


def official_grid_scores(out: SampleScore, base: np.ndarray, sample: dict, sigma: float,
                         rgb_map: np.ndarray | None, fusion: str) -> None:
    """Fill ``out`` with the official test.py's maps and scores on the 336×336 grid.

    ``base``: (N,) unsmoothed point map; ``rgb_map``: (S, S) RGB anomaly map or None. The map is
    G(grid(base)) with the official filter (background zeros included), the object score
    0.5·max(map) + 0.5·mean_k p_k; with RGB, the RGB map at 336×336 fused as :func:`fuse_rgb`
    says (official: G(0.5·G(rgb) + 0.5·map), score max + 0.5·(p_rgb + mean_k p_k))."""
    from scoring.official_grid import grid_lookup, official_smooth, to_grid

    attrs = sample["attrs"]
    lookup = grid_lookup(sample["grid_index"], attrs["grid_shape"])
    grid_map = official_smooth(to_grid(base, lookup), sigma)
    out.grid_map = grid_map.astype(np.float32)
    mean_p = float(np.mean(out.view_probs))
    out.score = 0.5 * float(grid_map.max()) + 0.5 * mean_p
    if rgb_map is None:
        return
    import torch
    import torch.nn.functional as F

    color = np.asarray(rgb_map, np.float32)
    if color.shape[0] != OFFICIAL_GRID:  # the official RGB map is made at 336 x 336
        color = F.interpolate(torch.from_numpy(color)[None, None], size=(OFFICIAL_GRID, OFFICIAL_GRID),
                              mode="bilinear", align_corners=False)[0, 0].numpy()
    if fusion == "official":
        fused = official_smooth(0.5 * official_smooth(color, sigma) + 0.5 * grid_map, sigma)
        out.multimodal_score = float(fused.max()) + 0.5 * (float(out.rgb_score) + mean_p)
    else:
        fused = official_smooth(0.5 * color + 0.5 * grid_map, sigma)
        out.multimodal_score = 0.5 * (0.5 * float(out.rgb_score) + 0.5 * out.score) + 0.5 * float(fused.max())
    out.grid_multimodal = fused.astype(np.float32)
