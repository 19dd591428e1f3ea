"""AUPRO on images (MVTec AD style): regions are the 8-connected components of each mask."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from scoring.metrics.pro import INTEGRATION_LIMIT, area_to_limit, pro_curve_regions

#: 8-connectivity within an image, none across images of a (M, H, W) stack.
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True


def mask_regions(masks) -> np.ndarray:
    """Region id per pixel: ``masks`` (M, H, W) or (H, W) bool/0-1 → same shape int64,
    −1 on normal pixels, else the id of the pixel's 8-connected anomalous component
    (components of different images are distinct)."""
    m = np.asarray(masks)
    stack = (m.reshape((1,) + m.shape) if m.ndim == 2 else m).astype(bool)
    if stack.ndim != 3:
        raise ValueError(f"masks must be (M, H, W) or (H, W), got shape {m.shape}")
    labelled, _ = ndimage.label(stack, structure=_STRUCTURE)
    return (labelled.astype(np.int64) - 1).reshape(m.shape)


def pro_curve(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO curve over a set of images, for plotting.

    ``masks``: (M, H, W) or (H, W) bool/0-1 ground truth; ``maps``: same shape float
    anomaly maps. Returns ``(fpr, pro)`` (K,) float64 from (0, 0) to (1, 1); FPR over all
    normal pixels of all images, PRO averaged over all regions of all images. Empty when
    the masks have no anomalous pixel or no normal one.
    """
    scores = np.asarray(maps, dtype=np.float64)
    if scores.shape != np.shape(masks):
        raise ValueError(f"maps {scores.shape} and masks {np.shape(masks)} differ")
    return pro_curve_regions(mask_regions(masks), scores)


def aupro(masks, maps, integration_limit: float = INTEGRATION_LIMIT) -> float:
    """Area under the PRO curve up to FPR = ``integration_limit``, divided by the limit.

    ``masks``: (M, H, W) or (H, W) bool/0-1; ``maps``: same shape float. Returns a float in
    [0, 1] (1 = every region fully found before any false positive). NaN when no mask has
    an anomalous pixel (PRO is an average over regions, and there are none) or when there
    is no normal pixel.
    """
    return area_to_limit(*pro_curve(masks, maps), integration_limit)
