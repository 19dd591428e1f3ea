"""Metrics: scikit-learn agreement, hand-built cases, and a slow obvious AUPRO reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from scoring.metrics import (aupro, aupro_points, aupro_regions, auroc, average_precision, binary_metrics,
                             f1_max, grid_regions, mask_regions, object_metrics, point_metrics, point_regions,
                             pro_curve)


def sk_f1max(y, s):
    p, r, t = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * p * r / (p + r))[:-1]
    return f1.max(), t[np.argmax(f1)]


@pytest.mark.parametrize("seed", range(6))
def test_ranking_metrics_agree_with_sklearn_on_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 3000))
    y = rng.random(n) < rng.uniform(0.05, 0.6)
    y[0], y[1] = True, False
    s = np.round(rng.normal(size=n) + y * rng.uniform(0, 2), int(rng.integers(0, 3)))    # many ties
    if seed % 2:
        s = s.astype(np.float32)
    labels = y.astype(np.uint8) if seed % 3 == 0 else y
    assert auroc(labels, s) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert average_precision(labels, s) == pytest.approx(average_precision_score(y, s), abs=1e-9)
    f1, thr = f1_max(labels, s)
    f1_ref, thr_ref = sk_f1max(y, s)
    assert f1 == pytest.approx(f1_ref, abs=1e-9)
    assert thr == pytest.approx(thr_ref)
    pred = s >= thr
    assert 2 * (pred & y).sum() / (pred.sum() + y.sum()) == pytest.approx(f1)
    both = binary_metrics(labels, s)
    assert both == {"auroc": auroc(y, s), "ap": average_precision(y, s), "f1max": f1, "threshold": thr}


def test_hand_built_ranking_cases():
    y = np.array([0, 0, 1, 1, 0, 1])
    perfect = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.7])
    assert auroc(y, perfect) == 1.0 and average_precision(y, perfect) == 1.0
    assert f1_max(y, perfect) == (1.0, 0.7)
    assert auroc(y, -perfect) == 0.0
    assert auroc(y, np.full(6, 0.4)) == 0.5
    assert average_precision(y, np.full(6, 0.4)) == 0.5                  # precision of "all anomalous"
    assert f1_max(y, np.full(6, 0.4)) == (pytest.approx(2 * 3 / (6 + 3)), 0.4)
    # one tie across classes counts one half: pairs (pos, neg) = 9, one tied
    s = np.array([0.1, 0.5, 0.5, 0.8, 0.2, 0.9])
    assert auroc(y, s) == pytest.approx(8.5 / 9)


def test_single_class_and_malformed_inputs():
    s = np.array([0.3, 0.1, 0.7])
    assert math.isnan(auroc([0, 0, 0], s)) and math.isnan(auroc([1, 1, 1], s))
    assert math.isnan(average_precision([0, 0, 0], s))
    assert average_precision([1, 1, 1], s) == 1.0
    assert all(math.isnan(v) for v in f1_max([0, 0, 0], s))
    assert math.isnan(auroc([], []))
    with pytest.raises(ValueError):
        auroc([0, 1, 2], s)
    with pytest.raises(ValueError):
        auroc([0, 1, 0], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError):
        auroc([0, 1], s)


def test_sequences_are_concatenated():
    rng = np.random.default_rng(1)
    ys = [rng.random(n) < 0.3 for n in (10, 40, 7)]
    ss = [rng.random(n) for n in (10, 40, 7)]
    y, s = np.concatenate(ys), np.concatenate(ss)
    assert auroc(ys, ss) == auroc(y, s)
    assert f1_max(ys, ss) == f1_max(y, s)
    assert object_metrics(y, s) == {"I-AUROC": auroc(y, s), "I-AP": average_precision(y, s),
                                    "I-F1max": f1_max(y, s)[0]}


# ---------------------------------------------------------------- AUPRO

def slow_pro_curve(masks, maps):
    """Obvious version: loop over every distinct threshold, per-region overlap and FPR directly."""
    regions = []
    for mask in masks:
        lab, k = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [lab == i for i in range(1, k + 1)]
    normal = ~masks.astype(bool)
    fpr, pro = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fpr.append((pred & normal).sum() / normal.sum())
        pro.append(np.mean([(pred[i] & r).sum() / r.sum() for i, r in region_owner(masks, regions)]))
    return np.array(fpr + [1.0]), np.array(pro + [1.0])


def region_owner(masks, regions):
    """Pair each region with the image it belongs to (regions were listed image by image)."""
    out, idx = [], 0
    for i, mask in enumerate(masks):
        _, k = ndimage.label(mask, structure=np.ones((3, 3)))
        out += [(i, regions[idx + j]) for j in range(k)]
        idx += k
    return out


def slow_area(fpr, pro, limit):
    """Segment by segment: the part of each linear piece that lies in [0, limit]."""
    area = 0.0
    for x0, y0, x1, y1 in zip(fpr[:-1], pro[:-1], fpr[1:], pro[1:]):
        if x1 <= x0 or x0 >= limit:
            continue
        b = min(x1, limit)
        yb = y0 + (y1 - y0) * (b - x0) / (x1 - x0)
        area += (b - x0) * (y0 + yb) / 2
    return area / limit


def random_masks(rng, m=3, h=12, w=12):
    noise = ndimage.gaussian_filter(rng.random((m, h, w)), (0, 1.2, 1.2))
    masks = noise > np.quantile(noise, 0.85)
    masks[-1] = False                                       # an image without anomaly
    return masks


@pytest.mark.parametrize("seed", range(5))
def test_aupro_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    masks = random_masks(rng)
    maps = np.round(rng.random(masks.shape) + 0.6 * masks * rng.random(), 2)        # ties
    fpr_ref, pro_ref = slow_pro_curve(masks, maps)
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, fpr_ref, atol=1e-12)
    np.testing.assert_allclose(pro, pro_ref, atol=1e-12)
    for limit in (0.3, 0.05, 1.0):
        assert aupro(masks, maps, limit) == pytest.approx(slow_area(fpr_ref, pro_ref, limit), abs=1e-6)


def test_aupro_hand_built_cases():
    masks = np.zeros((1, 2, 3), dtype=bool)
    masks[0, 0, :2] = True                                       # one region of 2 pixels
    maps = np.zeros((1, 2, 3))
    maps[0, 0, :2] = (0.8, 0.2)
    maps[0, 0, 2], maps[0, 1] = 0.9, 0.1                         # 4 normal pixels
    # curve (0,0) (.25,0) (.25,.5) (.25,1) (1,1): area up to .3 = .05 -> normalized 1/6
    assert aupro(masks, maps) == pytest.approx(1 / 6)
    assert aupro(masks, np.where(masks, 1.0, 0.0)) == 1.0          # perfect
    assert aupro(masks, np.where(masks, 0.0, 1.0)) == 0.0          # inverted
    # PRO averages regions, not pixels: a 1-pixel region found first counts one half
    masks2 = np.zeros((1, 3, 5), dtype=bool)
    masks2[0, 0, 0] = True
    masks2[0, 2, 2:5] = True
    maps2 = np.zeros((1, 3, 5))
    maps2[0, 0, 0], maps2[0, 2, 2:5], maps2[0, 1, 0] = 1.0, 0.5, 0.7
    n_normal = 15 - 4
    expected = (0.5 * (1 / n_normal) + 1.0 * (0.3 - 1 / n_normal)) / 0.3
    assert aupro(masks2, maps2) == pytest.approx(expected)
    assert math.isnan(aupro(np.zeros((2, 4, 4)), np.random.default_rng(0).random((2, 4, 4))))


def test_regions_are_8_connected_per_image():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True           # diagonal: one region
    masks[0, 3, 3] = True                            # another
    masks[1, 0, 0] = True                            # same place, other image: a third
    reg = mask_regions(masks)
    assert reg[0, 0, 0] == reg[0, 1, 1] != reg[0, 3, 3]
    assert len({reg[0, 0, 0], reg[0, 3, 3], reg[1, 0, 0]}) == 3
    assert (reg[~masks] == -1).all()


def grid_cloud(mask):
    """A planar cloud with one point per pixel of the (H, W) mask, spacing 1."""
    h, w = mask.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    return np.stack([cols, rows, np.zeros(h * w)], axis=1).astype(np.float64), mask.reshape(-1)


def test_aupro_points_equals_image_aupro_on_a_grid_cloud():
    rng = np.random.default_rng(7)
    masks = random_masks(rng, m=2, h=16, w=16)[:1]             # the first image has anomalies
    assert mask_regions(masks).max() >= 1                          # at least two regions
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 2)
    pts, y = grid_cloud(masks[0])
    # radius 1.5 links the 8 neighbours of a pixel (distance 1 and √2) and nothing further
    assert aupro_points(y, maps.reshape(-1), pts, radius=1.5) == pytest.approx(aupro(masks, maps), abs=1e-12)
    np.testing.assert_array_equal(point_regions(y, pts, radius=1.5) >= 0, y)
    idx = np.arange(y.size)
    assert (grid_regions(y, idx, (16, 16)) == mask_regions(masks[0]).reshape(-1)).all()


def test_point_regions_default_radius_and_multi_sample():
    rng = np.random.default_rng(3)
    def patch(n_side, n, offset):                       # a jittered surface patch, spacing 0.01
        g = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), -1).reshape(-1, 2)[:n] * 0.01
        return np.c_[g + rng.normal(scale=0.001, size=g.shape), np.zeros(n)] + offset
    blob_a, blob_b = patch(8, 50, 0.0), patch(6, 30, 1.0)
    normal = rng.random((200, 3)) * 3 + 2.0
    pts = np.concatenate([blob_a, blob_b, normal])
    y = np.r_[np.ones(80), np.zeros(200)]
    reg = point_regions(y, pts)
    assert len(np.unique(reg[:50])) == 1 and len(np.unique(reg[50:80])) == 1 and reg[0] != reg[50]
    assert (reg[80:] == -1).all()
    # a class of two samples: regions per sample, one curve
    s1 = np.r_[np.full(80, 0.9), rng.random(200) * 0.5]
    s2 = rng.random(280)
    single = aupro_points(y, s1, pts)
    assert single == 1.0
    multi = aupro_points([y, y], [s1, s2], [pts, pts])
    regions = np.r_[reg, np.where(reg >= 0, reg + 2, -1)]
    assert multi == pytest.approx(aupro_regions(regions, np.r_[s1, s2]))
    assert 0.0 < multi < 1.0
    assert math.isnan(aupro_points(np.zeros(10), rng.random(10), rng.random((10, 3))))


def test_point_metrics_names_and_values():
    rng = np.random.default_rng(5)
    ys = [rng.random(50) < 0.2, rng.random(60) < 0.2]
    ss = [rng.random(50) + y for y in [ys[0]]] + [rng.random(60) + ys[1] * 0.5]
    pts = [rng.random((50, 3)), rng.random((60, 3))]
    regions = [point_regions(y, p) for y, p in zip(ys, pts)]
    got = point_metrics(ys, ss, regions)
    assert set(got) == {"P-AUROC", "P-AP", "P-F1max", "AUPRO@0.3"}
    assert got["P-AUROC"] == pytest.approx(roc_auc_score(np.concatenate(ys), np.concatenate(ss)))
    assert got["AUPRO@0.3"] == pytest.approx(aupro_points(ys, ss, pts))
    assert all(0.0 <= v <= 1.0 for v in got.values())
