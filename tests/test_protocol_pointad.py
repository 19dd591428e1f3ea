"""``--protocol pointad``: the official test.py + metrics.py computations, transcribed plainly here,
against pad's vectorized implementation, on hand-built maps."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from sklearn.metrics import auc, roc_auc_score

from scoring.metrics.aupro_thresholds import official_aupro
from scoring.official_grid import grid_lookup, grid_regions_2d, mask_to_grid, nearest_source, official_smooth, to_grid
from scoring.sample_score import SampleScore, official_grid_scores
from scoring.score import class_metrics


def _cal_pro_score(masks, amaps, max_step=200, expect_fpr=0.3):
    """metrics.py's cal_pro_score, written out (skimage's measure.label = 8-connected labelling)."""
    binary_amaps = np.zeros_like(amaps, dtype=bool)
    min_th, max_th = amaps.min(), amaps.max()
    delta = (max_th - min_th) / max_step
    pros, fprs = [], []
    for th in np.arange(min_th, max_th, delta):
        binary_amaps[amaps <= th], binary_amaps[amaps > th] = 0, 1
        pro = []
        for binary_amap, mask in zip(binary_amaps, masks):
            labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
            for k in range(1, n + 1):
                coords = np.argwhere(labels == k)
                pro.append(binary_amap[coords[:, 0], coords[:, 1]].sum() / len(coords))
        inverse_masks = 1 - masks
        fprs.append(np.logical_and(inverse_masks, binary_amaps).sum() / inverse_masks.sum())
        pros.append(np.array(pro).mean())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < expect_fpr
    fprs = fprs[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return auc(fprs, pros[keep])


def _masks_and_maps(seed, n=3, side=24):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, side, side), np.uint8)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):                 # a few rectangular defects per image
            r, c = rng.integers(0, side - 6, size=2)
            h, w = rng.integers(2, 7, size=2)
            masks[i, r:r + h, c:c + w] = 1
    maps = ndimage.gaussian_filter(rng.random((n, side, side)), (0, 1.5, 1.5)) + 0.4 * masks
    return masks, maps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_official_aupro_equals_cal_pro_score(seed):
    masks, maps = _masks_and_maps(seed)
    regions = np.concatenate([grid_regions_2d(m, offset=1000 * i) for i, m in enumerate(masks)])
    assert official_aupro(maps.reshape(-1), regions) == pytest.approx(_cal_pro_score(masks, maps), abs=1e-12)


def test_official_aupro_undefined_cases_are_nan():
    assert math.isnan(official_aupro(np.ones(10), np.r_[np.zeros(3, np.int64), -np.ones(7, np.int64)]))
    assert math.isnan(official_aupro(np.arange(5.0), -np.ones(5, np.int64)))


def test_class_metrics_on_official_grid_pixels_match_sklearn_and_cal_pro_score():
    masks, maps = _masks_and_maps(5)
    labels = [m.reshape(-1) for m in masks]
    scores = [m.reshape(-1) for m in maps]
    regions = [grid_regions_2d(m) for m in masks]
    metrics, _ = class_metrics(np.array([1, 1, 1, 0]), np.array([0.9, 0.8, 0.7, 0.75]), labels, scores, regions,
                               aupro="official")
    assert metrics["P-AUROC"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert metrics["AUPRO@0.3"] == pytest.approx(_cal_pro_score(masks, maps), abs=1e-12)
    assert metrics["I-AUROC"] == pytest.approx(roc_auc_score([1, 1, 1, 0], [0.9, 0.8, 0.7, 0.75]))


@pytest.mark.parametrize("in_size", [800, 400, 513, 336, 100])
def test_nearest_source_is_torchs_nearest_resize(in_size):
    ramp = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1).expand(1, 1, in_size, 2)
    picked = F.interpolate(ramp, size=(336, 2), mode="nearest")[0, 0, :, 0].long().numpy()
    np.testing.assert_array_equal(nearest_source(336, in_size), picked)


def _organized(h, w, seed):
    """A native H x W scan with missing measurements: (grid_index (N,), values (N,), labels (N,))."""
    rng = np.random.default_rng(seed)
    present = rng.random(h * w) > 0.3
    grid_index = np.flatnonzero(present).astype(np.int32)
    values = rng.random(grid_index.size)
    rr, cc = np.divmod(grid_index, w)
    labels = ((rr - h / 2) ** 2 + (cc - w / 3) ** 2 < (h / 6) ** 2).astype(np.uint8)
    return grid_index, values, labels


def test_values_reach_the_grid_as_the_official_resized_point_cloud():
    """multi_view/utils.py resize_organized_pc (torch nearest) then back_to_3d: a missing point is 0."""
    h, w = 200, 260
    grid_index, values, _ = _organized(h, w, 0)
    native = np.zeros(h * w)
    native[grid_index] = values
    expected = F.interpolate(torch.from_numpy(native.reshape(1, 1, h, w)), size=(336, 336), mode="nearest")[0, 0]
    got = to_grid(values, grid_lookup(grid_index, (h, w)))
    np.testing.assert_array_equal(got, expected.numpy())


def test_mask_is_the_official_target_transform():
    """utils.py target_transform: Resize((336, 336)) (PIL bilinear) + ToTensor, then > 0.5."""
    from torchvision import transforms

    h, w = 180, 240
    grid_index, _, labels = _organized(h, w, 1)
    png = np.zeros(h * w, np.uint8)
    png[grid_index[labels > 0]] = 255
    transform = transforms.Compose([transforms.Resize((336, 336)), transforms.CenterCrop(336), transforms.ToTensor()])
    expected = transform(Image.fromarray(png.reshape(h, w), mode="L"))[0].numpy() > 0.5
    np.testing.assert_array_equal(mask_to_grid(labels, grid_index, (h, w)), expected)


def test_official_grid_scores_follow_test_py():
    """test.py: anomaly_map = G(back_to_3d map); pr_sp = 0.5 max + 0.5 mean view probability;
    integrate = G((G(color) + anomaly_map) / 2); integrate_pr_sp = max + (color prob + view prob) / 2."""
    from scipy.ndimage import gaussian_filter

    h, w = 120, 150
    grid_index, values, _ = _organized(h, w, 2)
    sample = {"grid_index": grid_index, "attrs": {"grid_shape": [h, w]}}
    out = SampleScore(point_map=values.astype(np.float32), score=0.0, view_probs=np.array([0.2, 0.6], np.float32),
                      rgb_score=0.9)
    color = np.random.default_rng(3).random((336, 336))
    official_grid_scores(out, values, sample, 4.0, color, "official")
    native = np.zeros(h * w)
    native[grid_index] = values
    pc = F.interpolate(torch.from_numpy(native.reshape(1, 1, h, w)), size=(336, 336), mode="nearest")[0, 0].numpy()
    anomaly_map = gaussian_filter(pc, sigma=4)
    np.testing.assert_allclose(out.grid_map, anomaly_map, atol=1e-6)
    assert out.score == pytest.approx(0.5 * anomaly_map.max() + 0.5 * 0.4, rel=1e-6)
    integrate = gaussian_filter((gaussian_filter(color, sigma=4) + anomaly_map) / 2, sigma=4)
    np.testing.assert_allclose(out.grid_multimodal, integrate, atol=1e-6)
    assert out.multimodal_score == pytest.approx(integrate.max() + (0.9 + 0.4) / 2, rel=1e-6)
    # official_smooth is scipy's gaussian_filter with its defaults
    np.testing.assert_array_equal(official_smooth(pc, 4), gaussian_filter(pc, 4))
