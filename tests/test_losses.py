"""Training losses against formulas written out by hand on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import (binary_local_2d_loss, contrastive_loss, dice_loss, focal_loss, geometry_loss,
                            local_2d_loss, local_3d_loss, mil_global_loss, view_global_loss)


def close(a, b, tol=1e-6):
    return abs(float(a) - float(b)) < tol


def test_dice_matches_formula_per_instance_then_mean():
    pred = torch.tensor([[0.9, 0.2, 0.0, 0.5], [0.1, 0.1, 0.1, 0.1]])
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    # instance 1: inter = 0.9 + 0.5 = 1.4; sums = 1.6 + 2 -> 1 - (2.8 + 1) / (3.6 + 1)
    d1 = 1 - 3.8 / 4.6
    # instance 2: inter = 0; sums = 0.4 + 0 -> 1 - 1 / 1.4
    d2 = 1 - 1.0 / 1.4
    assert close(dice_loss(pred, target), (d1 + d2) / 2)
    assert close(dice_loss(pred, target, eps=0.5), ((1 - 3.3 / 4.1) + (1 - 0.5 / 0.9)) / 2)


def test_dice_perfect_prediction_is_zero_and_shapes_checked():
    t = torch.tensor([0.0, 1.0, 1.0, 0.0])
    assert close(dice_loss(t.clone(), t), 0.0)
    assert close(dice_loss(torch.zeros(4), torch.zeros(4)), 0.0)   # eps keeps empty masks at 0
    with pytest.raises(ValueError):
        dice_loss(torch.zeros(3), torch.zeros(4))


def test_focal_matches_formula():
    # (B=1, C=2, 1, 3): p(anomalous) = 0.8, 0.3, 0.6; targets 1, 0, 0
    pa = torch.tensor([0.8, 0.3, 0.6])
    probs = torch.stack([1 - pa, pa]).reshape(1, 2, 1, 3)
    target = torch.tensor([[[1, 0, 0]]])
    # Focal loss of the official loss.py: one-hot clamped to [s, 1 - s], p_t = onehot . p + s, s = 1e-5
    s = 1e-5
    pt = [(1 - s) * p + s * (1 - p) + s for p in (0.8, 0.7, 0.4)]
    expected = sum(-(1 - p) ** 2 * math.log(p) for p in pt) / 3
    assert close(focal_loss(probs, target), expected)
    expected_g0 = sum(-math.log(p) for p in pt) / 3
    assert close(focal_loss(probs, target, gamma=0.0), expected_g0)
    plain = sum(-(1 - p) ** 2 * math.log(p) for p in (0.8, 0.7, 0.4)) / 3   # no smoothing: Lin et al.
    assert close(focal_loss(probs, target, smooth=0.0), plain)


def test_focal_from_logits_equals_probability_path():
    logits = torch.tensor([[[[0.3, -1.0], [2.0, 0.1]], [[-0.2, 0.5], [1.0, 1.0]]]])    # (1, 2, 2, 2)
    target = torch.tensor([[[1, 0], [0, 1]]])
    assert close(focal_loss(logits, target, from_logits=True), focal_loss(logits.softmax(1), target))


def _ce(logits, label):
    return -logits[label] + math.log(sum(math.exp(x) for x in logits))


def test_mil_global_loss_is_ce_of_mean_view_logits():
    view_logits = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]],
                                [[-2.0, 1.0], [0.0, 4.0], [1.0, 1.0]]])                # (2, 3, 2)
    labels = torch.tensor([1, 0])
    m0 = [(1 + 3 + 0.5) / 3, (2 - 1 + 0.5) / 3]
    m1 = [(-2 + 0 + 1) / 3, (1 + 4 + 1) / 3]
    assert close(mil_global_loss(view_logits, labels), (_ce(m0, 1) + _ce(m1, 0)) / 2)


def test_view_global_loss_is_mean_ce_over_views():
    view_logits = torch.tensor([[[1.0, 2.0], [3.0, -1.0]], [[-2.0, 1.0], [0.0, 4.0]]])
    view_labels = torch.tensor([[1, 0], [0, 1]])
    expected = (_ce([1, 2], 1) + _ce([3, -1], 0) + _ce([-2, 1], 0) + _ce([0, 4], 1)) / 4
    assert close(view_global_loss(view_logits, view_labels), expected)


def test_local_2d_loss_is_focal_plus_two_dice():
    g = torch.Generator().manual_seed(0)
    pa = torch.rand(2, 3, 4, 5, generator=g)
    maps = torch.stack([1 - pa, pa], dim=2)                                            # (B, V, 2, H, W)
    gt = (torch.rand(2, 3, 4, 5, generator=g) > 0.7).float()
    expected = (focal_loss(maps.reshape(6, 2, 4, 5), gt.reshape(6, 4, 5))
                + sum(dice_loss(pa[b, v].reshape(-1), gt[b, v].reshape(-1)) for b in range(2) for v in range(3)) / 6
                + sum(dice_loss(1 - pa[b, v].reshape(-1), 1 - gt[b, v].reshape(-1)) for b in range(2)
                      for v in range(3)) / 6)
    assert close(local_2d_loss(maps, gt), expected, 1e-5)
    layered = torch.stack([maps, maps.flip(-1)], dim=2)                                # (B, V, L, 2, H, W)
    assert close(local_2d_loss(layered, gt), local_2d_loss(maps, gt) + local_2d_loss(maps.flip(-1), gt), 1e-5)


def _official_2d_local_loss(pa: torch.Tensor, gt: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """The official 2D local loss written out (loss.py FocalLoss with smooth 1e-5, BinaryDiceLoss with
    smooth 1): maps (I, 2, P) = [1 - pa, pa], the one-hot target clamped to [1e-5, 1 - 1e-5],
    p_t = sum(onehot * p) + 1e-5, focal = mean(-(1 - p_t)^gamma log p_t); Dice per view of each channel."""
    s = 1e-5
    p = torch.stack([1 - pa, pa], dim=1)
    onehot = torch.stack([1 - gt, gt], dim=1).clamp(s, 1 - s)
    pt = (onehot * p).sum(dim=1) + s
    focal = (-torch.pow(1 - pt, gamma) * torch.log(pt)).mean()

    def dice(x, t):
        return (1 - (2 * (x * t).sum(-1) + 1) / (x.sum(-1) + t.sum(-1) + 1)).mean()
    return focal + dice(pa, gt) + dice(1 - pa, 1 - gt)


@pytest.mark.parametrize("gamma", [2.0, 1.5, 3.0])
def test_binary_local_2d_loss_is_the_official_loss_of_maps_whose_channels_sum_to_one(gamma):
    """The loss pad trains with (the anomalous channel only, normal = 1 - it) against the official
    formula written out: value and gradient in float64, gradcheck, and float32 on upsampled softmax maps."""
    g = torch.Generator().manual_seed(2)
    pa = torch.rand(2, 3, 6, 7, generator=g, dtype=torch.float64).requires_grad_(True)
    gt = torch.rand(2, 3, 6, 7, generator=g) > 0.6
    gt[0, 0] = False                                                                   # a view with no anomaly
    want = _official_2d_local_loss(pa.reshape(6, 42), gt.reshape(6, 42).double(), gamma)
    (want_grad,) = torch.autograd.grad(want, pa)
    got = binary_local_2d_loss(pa, gt, gamma)
    (got_grad,) = torch.autograd.grad(got, pa)
    assert abs(got.item() - want.item()) < 1e-12
    assert torch.allclose(got_grad, want_grad, atol=1e-14, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda m: binary_local_2d_loss(m, gt, gamma), (pa,))
    # per tapped layer: the sum over layers
    layered = torch.stack([pa, pa.flip(-1)], dim=2).detach()                           # (B, V, L, H, W)
    assert close(binary_local_2d_loss(layered, gt, gamma),
                 binary_local_2d_loss(pa.detach(), gt, gamma) + binary_local_2d_loss(pa.detach().flip(-1), gt, gamma))
    # the maps of training: a softmax of two prompts, bilinearly upsampled; both channels sum to 1, and
    # the two-channel loss gives the same value within float32 rounding
    logits = torch.randn(2, 3, 2, 4, 4, generator=g)
    up = F.interpolate(logits.softmax(dim=2).reshape(6, 2, 4, 4), size=(24, 24), mode="bilinear",
                       align_corners=False).reshape(2, 3, 2, 24, 24)
    assert torch.allclose(up.sum(dim=2), torch.ones(()), atol=1e-6)
    big_gt = torch.rand(2, 3, 24, 24, generator=g) > 0.8
    assert abs(binary_local_2d_loss(up[:, :, 1], big_gt, gamma).item() - local_2d_loss(up, big_gt, gamma).item()) < 1e-5
    with pytest.raises(ValueError):
        binary_local_2d_loss(up[:, :, 1, :12], big_gt)


def test_local_3d_and_geometry_losses():
    pa = torch.tensor([0.9, 0.8, 0.1, 0.3])
    y = torch.tensor([1, 1, 0, 0])
    # Dice(pa, y): inter 1.7, sums 2.1 + 2; Dice(1 - pa, 1 - y): inter 0.9 + 0.7 = 1.6, sums 1.9 + 2
    expected = (1 - (3.4 + 1) / 5.1) + (1 - (3.2 + 1) / 4.9)
    probs = torch.stack([1 - pa, pa], dim=-1)
    assert close(local_3d_loss(probs, y), expected)
    assert close(local_3d_loss(pa, y), expected)
    assert close(geometry_loss(probs, y), expected)
    with pytest.raises(ValueError):
        local_3d_loss(torch.rand(4, 3), y)


def _four_vectors():
    rn = torch.tensor([1.0, 0.2, 0.1])
    ra = torch.tensor([0.3, 2.0, 0.2])           # not normalized on purpose
    gn = torch.tensor([1.0, 1.0, 0.3])
    ga = torch.tensor([0.2, 1.0, 1.0])
    return rn, ra, gn, ga


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_contrastive_loss_is_the_papers_equation_on_raw_cosines():
    rn, ra, gn, ga = _four_vectors()   # every cosine positive: the paper's ratios are probabilities
    cos = _cos
    # PointAD+ eq. for L^cross, transcribed literally (CE of a ratio = -log of it)
    paper = (-math.log(cos(ga, ra) / (cos(ga, ra) + cos(ga, rn)))
             - math.log(cos(gn, rn) / (cos(gn, rn) + cos(ga, rn)))
             - math.log(cos(ra, ga) / (cos(ra, ga) + cos(ra, gn)))
             - math.log(cos(rn, gn) / (cos(rn, gn) + cos(ra, gn))))
    got = contrastive_loss(rn, ra, gn, ga)
    assert close(got, paper, 1e-5)
    # symmetric in the two layers, averaged over prompt sets
    assert close(contrastive_loss(gn, ga, rn, ra), got, 1e-5)
    batch = contrastive_loss(torch.stack([rn, rn]), torch.stack([ra, ra]), torch.stack([gn, gn]),
                             torch.stack([ga, ga]))
    assert close(batch, got, 1e-5)
    # a negative cosine is floored: the ratio stays a probability and the loss finite
    far = contrastive_loss(rn, -rn, gn, -gn)
    assert math.isfinite(float(far)) and float(far) < 1e-3


def test_contrastive_infonce_form_matches_the_four_terms():
    rn, ra, gn, ga = _four_vectors()
    tau = 0.07
    cos = _cos

    def term(pos, neg):
        return -math.log(math.exp(pos / tau) / (math.exp(pos / tau) + math.exp(neg / tau)))

    expected = (term(cos(ga, ra), cos(ga, rn)) + term(cos(gn, rn), cos(gn, ra))
                + term(cos(ra, ga), cos(ra, gn)) + term(cos(rn, gn), cos(rn, ga)))
    assert close(contrastive_loss(rn, ra, gn, ga, form="infonce", tau=tau), expected, 1e-4)


def test_contrastive_loss_prefers_aligned_prompts():
    g = torch.Generator().manual_seed(1)
    n, a = torch.randn(16, generator=g), torch.randn(16, generator=g)
    for form in ("paper", "infonce"):
        aligned = contrastive_loss(n, a, n + 0.1 * torch.randn(16, generator=g), a, form=form)
        swapped = contrastive_loss(n, a, a, n, form=form)
        assert aligned < swapped


def test_losses_are_differentiable():
    pa = torch.rand(1, 2, 3, 3, requires_grad=True)
    maps = torch.stack([1 - pa, pa], dim=2)
    loss = local_2d_loss(maps, (torch.rand(1, 2, 3, 3) > 0.5).float())
    loss = loss + local_3d_loss(pa.reshape(-1), (torch.rand(18) > 0.5).long())
    logits = torch.randn(2, 3, 2, requires_grad=True)
    loss = loss + mil_global_loss(logits, torch.tensor([0, 1])) + view_global_loss(logits, torch.ones(2, 3))
    # prompt embeddings of CLIP's text tower lie in a narrow cone: positive cosines
    emb = (torch.randn(4, 8, generator=torch.Generator().manual_seed(0)) + 2.0).requires_grad_(True)
    loss = loss + contrastive_loss(emb[0], emb[1], emb[2], emb[3])
    loss.backward()
    assert pa.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0 and emb.grad.abs().sum() > 0
