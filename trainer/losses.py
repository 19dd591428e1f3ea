"""Training losses of PointAD (rendering layer) and PointAD+ (geometry layer, cross-hierarchy).

Pure torch, differentiable in the predictions. Conventions:

- class axis: index 0 = *normal*, index 1 = *anomalous* (the prompt order everywhere);
- ``logits`` are cosine similarities divided by the temperature τ (0.07), as produced by
  the model; probability maps are their softmax over the class axis;
- labels and ground truth are 0/1 (any integer, bool or float dtype);
- every loss returns a 0-dim float tensor, averaged as stated (never summed over the batch).

The paper (PointAD+, section 3.5) sums four terms for the rendering layer,
``L_I-3d^global + L_I-3d^local + L_I-2d^global + L_I-2d^local``, plus ``L_E-3d^local``
(:func:`geometry_loss`) and ``L^cross`` (:func:`contrastive_loss`) for PointAD+; the
training loop adds them with weight 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: Dice smoothing term (AnomalyCLIP / PointAD use 1): keeps the loss defined — and equal
#: to 0 for an all-zero prediction of an all-zero target — on instances without positives.
DICE_EPS = 1.0
#: Focal loss label smoothing of the official code (``FocalLoss(smooth=1e-5)``).
FOCAL_SMOOTH = 1e-5
#: Floor of each cosine in the paper's cross-hierarchy ratios (see :func:`contrastive_loss`).
COSINE_FLOOR = 1e-4
#: CLIP temperature.
TAU = 0.07


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    """Soft Dice loss, one Dice per instance, averaged over instances.

    ``pred``: (..., N) float, probabilities in [0, 1]; ``target``: (..., N) 0/1, same shape.
    The last axis is one instance (a flattened map, or the points of one cloud); leading
    axes are instances. Per instance: ``1 - (2·Σ p·t + eps) / (Σ p + Σ t + eps)``, where
    ``eps`` (default 1, as AnomalyCLIP's BinaryDiceLoss) smooths instances with tiny masks.
    Returns a 0-dim tensor: the mean over instances.
    """
    if pred.shape != target.shape:
        raise ValueError(f"dice_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    target = target.to(pred.dtype)
    inter = (pred * target).sum(dim=-1)
    total = pred.sum(dim=-1) + target.sum(dim=-1)
    return (1.0 - (2.0 * inter + eps) / (total + eps)).mean()


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               from_logits: bool = False, smooth: float = FOCAL_SMOOTH) -> torch.Tensor:
    """Focal loss on a class-probability map, in AnomalyCLIP's / PointAD's form (``loss.py``
    ``FocalLoss``: no class weights, label smoothing ``smooth``).

    ``probs``: (B, C, ...) float — class probabilities along axis 1 (C = 2: normal,
    anomalous), or logits when ``from_logits``; ``target``: (B, ...) integer class per
    element (0/1 for C = 2). Per element, with the one-hot target clamped to
    [smooth / (C - 1), 1 - smooth] and ``p_t = Σ_c onehot_c · p_c + smooth`` (the official
    code's smoothed probability of the true class): ``-(1 - p_t)^gamma · log p_t``; returns the
    mean over all elements. ``smooth = 0`` and ``gamma = 0`` give the cross-entropy.
    """
    if probs.shape[0] != target.shape[0] or probs.shape[2:] != target.shape[1:]:
        raise ValueError(f"focal_loss: probs {tuple(probs.shape)} does not match target {tuple(target.shape)}")
    p = torch.softmax(probs, dim=1) if from_logits else probs
    c = p.shape[1]
    onehot = F.one_hot(target.long(), c).movedim(-1, 1).to(p.dtype)
    if smooth:
        onehot = onehot.clamp(smooth / (c - 1), 1.0 - smooth)
    pt = (onehot * p).sum(dim=1) + smooth
    return (-(1.0 - pt).clamp(min=0.0).pow(gamma) * pt.log()).mean()


def mil_global_loss(view_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """3D global loss (multiple-instance over views): ``CE(mean_k logits_k, object label)``.

    ``view_logits``: (B, V, 2) float (cos/τ per view, normal then anomalous);
    ``labels``: (B,) 0/1 object labels. Returns the mean over the B objects.
    """
    if view_logits.ndim != 3 or view_logits.shape[:1] != labels.shape:
        raise ValueError(f"mil_global_loss: expected (B, V, 2) and (B,), got {tuple(view_logits.shape)}"
                         f" and {tuple(labels.shape)}")
    return F.cross_entropy(view_logits.mean(dim=1), labels.long())


def view_global_loss(view_logits: torch.Tensor, view_labels: torch.Tensor) -> torch.Tensor:
    """2D global loss: ``mean over objects and views of CE(logits_k, view label_k)``.

    ``view_logits``: (B, V, 2) float; ``view_labels``: (B, V) 0/1 — 1 when the view's 2D
    ground truth has any anomalous pixel. Returns the mean over the B·V views.
    """
    if view_logits.shape[:-1] != view_labels.shape:
        raise ValueError(f"view_global_loss: expected (B, V, 2) and (B, V), got {tuple(view_logits.shape)}"
                         f" and {tuple(view_labels.shape)}")
    return F.cross_entropy(view_logits.reshape(-1, view_logits.shape[-1]), view_labels.reshape(-1).long())


def local_2d_loss(maps: torch.Tensor, gt: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """2D local loss: ``mean_k [Focal(S_k, Y_k) + Dice(S_k,a, Y_k) + Dice(S_k,n, 1 - Y_k)]``.

    ``maps``: (B, V, 2, H, W) float class probabilities per pixel (softmax over axis 2), or
    (B, V, L, 2, H, W) with one map per tapped layer L — then the loss is summed over
    layers, as AnomalyCLIP and PointAD do; ``gt``: (B, V, H, W) 0/1 2D ground truth.
    Focal is the mean over all pixels of all views, Dice the mean over views (each view
    one instance), which equals the mean over views of the per-view sum.

    The value is :func:`focal_loss` + two :func:`dice_loss` of the two channels, for any two
    channels (they need not sum to 1). Training uses :func:`binary_local_2d_loss`, the same loss
    of maps whose channels sum to 1 computed in one pass from the anomalous channel.
    """
    if maps.ndim == 6:
        return sum(local_2d_loss(layer, gt, gamma) for layer in maps.unbind(2))
    if maps.ndim != 5 or maps.shape[2] != 2 or maps.shape[:2] + maps.shape[3:] != gt.shape:
        raise ValueError(f"local_2d_loss: expected maps (B, V, 2, H, W) and gt (B, V, H, W), got "
                         f"{tuple(maps.shape)} and {tuple(gt.shape)}")
    b, v, _, h, w = maps.shape
    flat = maps.reshape(b * v, 2, h * w)
    y = (gt.reshape(b * v, h * w) > 0).to(maps.dtype)
    loss = focal_loss(flat, y, gamma=gamma)
    loss = loss + dice_loss(flat[:, 1], y)
    return loss + dice_loss(flat[:, 0], 1.0 - y)


def binary_local_2d_loss(anomalous: torch.Tensor, gt: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """:func:`local_2d_loss` of two-class maps given by their anomalous channel alone.

    ``anomalous``: (B, V, H, W) float, S_k,a, or (B, V, L, H, W) one map per tapped layer
    (summed over layers); the normal channel is ``1 - anomalous``, as it is for the softmax
    of two prompts and for its bilinear upsampling (the interpolation weights of a pixel sum
    to 1). ``gt``: (B, V, H, W) 0/1. Equal to ``local_2d_loss(stack([1 - a, a]), gt)`` (within
    float rounding), for half the memory traffic: computed by :class:`_BinaryLocalLoss2D`.
    """
    if anomalous.ndim == 5:
        return sum(binary_local_2d_loss(layer, gt, gamma) for layer in anomalous.unbind(2))
    if anomalous.shape != gt.shape or anomalous.ndim != 4:
        raise ValueError(f"binary_local_2d_loss: expected maps and gt (B, V, H, W), got "
                         f"{tuple(anomalous.shape)} and {tuple(gt.shape)}")
    b, v, h, w = anomalous.shape
    flat = anomalous.reshape(b * v, h * w)
    target = gt.reshape(b * v, h * w) > 0
    if gamma >= 1.0:
        return _BinaryLocalLoss2D.apply(flat, target, float(gamma), FOCAL_SMOOTH, DICE_EPS)
    return local_2d_loss(torch.stack([1.0 - anomalous, anomalous], dim=2), gt, gamma)


class _BinaryLocalLoss2D(torch.autograd.Function):
    """Focal (label smoothing ``s``, exponent ``gamma`` ≥ 1) + Dice(a, y) + Dice(1 - a, 1 - y),
    as :func:`focal_loss` + :func:`dice_loss` with the normal channel ``1 - a``: ``a`` (I, P) float,
    ``target`` (I, P) bool, ``u = max(0, 1 - p_t)``, per instance ``D = 1 - (N + e) / (M + e)``
    (``N = 2 Σ p·t``, ``M = Σ p + Σ t``). Then ``p_y = a`` where y else ``1 - a``, ``p_t = (1 - 2s)·p_y + 2s``, and every
    Dice sum of the normal channel follows from ``Σ a``, ``Σ y`` and ``Σ a·y`` per instance:
    ``Σ n = P - Σ a``, ``Σ n (1 - y) = P - Σ a - Σ y + Σ a·y``. Gradient with respect to ``a``:
    ``±(1 - 2s) · u^(gamma-1) (gamma log p_t - u / p_t) / (I·P)`` (+ where y) plus, per
    instance, ``(-2 y / M_a + N_a / M_a² + 2 (1 - y) / M_n - N_n / M_n²) / I``.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, target: torch.Tensor, gamma: float, s: float, e: float) -> torch.Tensor:
        inst, n_pix = a.shape
        y = target.to(a.dtype)
        pt = torch.where(target, a, 1.0 - a).mul_(1.0 - 2.0 * s).add_(2.0 * s)   # (I, P)
        log_pt = pt.log()
        u = (1.0 - pt).clamp_(min=0.0)
        w = u * log_pt if gamma == 2.0 else u.pow(gamma - 1.0).mul_(log_pt)      # u^(gamma-1) log p_t
        focal = -torch.dot(w.reshape(-1), u.reshape(-1)) / (inst * n_pix)
        del w
        sum_a = a.sum(dim=-1)
        sum_y = y.sum(dim=-1)
        sum_ay = torch.linalg.vecdot(a, y)                                      # Σ a·y per instance
        num_a, den_a = 2.0 * sum_ay + e, sum_a + sum_y + e
        num_n = 2.0 * (n_pix - sum_a - sum_y + sum_ay) + e
        den_n = (n_pix - sum_a) + (n_pix - sum_y) + e
        ctx.save_for_backward(target, y, pt, log_pt, u, num_a, den_a, num_n, den_n)
        ctx.gamma, ctx.s = gamma, s
        return focal + (1.0 - num_a / den_a).mean() + (1.0 - num_n / den_n).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        target, y, pt, log_pt, u, num_a, den_a, num_n, den_n = ctx.saved_tensors
        gamma, s = ctx.gamma, ctx.s
        inst, n_pix = pt.shape
        d = torch.div(u, pt).sub_(log_pt, alpha=gamma).neg_()                    # gamma log p_t - u / p_t
        d.mul_(u if gamma == 2.0 else u.pow(gamma - 1.0))
        k = torch.tensor((1.0 - 2.0 * s) / (inst * n_pix), dtype=d.dtype, device=d.device)
        d.mul_(torch.where(target, k, -k))                                      # (python scalars: float32)
        c1 = (-2.0 / den_a - 2.0 / den_n) / inst                                 # (I,) coefficient of y
        c0 = (num_a / den_a ** 2 + 2.0 / den_n - num_n / den_n ** 2) / inst
        d.add_(c0[:, None]).addcmul_(y, c1[:, None].expand_as(d))
        return d.mul_(grad), None, None, None, None


def _two_class_dice(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``Dice(P_a, y) + Dice(P_n, 1 - y)`` over the point axis; see :func:`local_3d_loss`."""
    if probs.shape == labels.shape:               # anomalous probability only
        anomalous, normal = probs, 1.0 - probs
    elif probs.shape[:-1] == labels.shape and probs.shape[-1] == 2:
        normal, anomalous = probs[..., 0], probs[..., 1]
    else:
        raise ValueError(f"expected point probabilities (..., N, 2) or (..., N) for labels (..., N), got "
                         f"{tuple(probs.shape)} and {tuple(labels.shape)}")
    y = labels.to(anomalous.dtype)
    return dice_loss(anomalous, y) + dice_loss(normal, 1.0 - y)


def local_3d_loss(point_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """3D local loss (rendering layer): ``Dice(S3d_a, y) + Dice(S3d_n, 1 - y)``.

    ``point_probs``: (..., N, 2) float (normal, anomalous) back-projected point scores
    S3d, or (..., N) — the anomalous score alone, the normal one taken as ``1 - S3d_a``;
    ``labels``: (..., N) 0/1 point labels. One Dice per cloud (last axis); leading axes
    are clouds of equal N, averaged. For clouds of different sizes call once per cloud
    and average.
    """
    return _two_class_dice(point_probs, labels)


def geometry_loss(point_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Geometry-layer loss (PointAD+): ``Dice(T_a, y) + Dice(T_n, 1 - y)``.

    ``point_probs``: (..., N, 2) float — T, the softmax of the G-aggregated point features
    against the geometry prompts (or (..., N) anomalous only); ``labels``: (..., N) 0/1.
    Computing it on a random subset of a cloud's points per step is fine (Dice is a ratio
    of sums). Same reduction as :func:`local_3d_loss`.
    """
    return _two_class_dice(point_probs, labels)


def contrastive_loss(render_normal: torch.Tensor, render_anomalous: torch.Tensor,
                     geo_normal: torch.Tensor, geo_anomalous: torch.Tensor,
                     form: str = "paper", tau: float = TAU) -> torch.Tensor:
    """Cross-hierarchy contrastive alignment of PointAD+ (its ``L^cross``).

    Inputs: the text embeddings of the four prompts, each (D,) float (or (M, D) for M
    prompt sets, e.g. one per class with CoOp prompts: the loss is then averaged over M);
    they need not be normalized. The paper's four terms are (anchor, positive, negative)
    triples, each embedding an anchor once, its positive the other layer's prompt of the same
    state and its negative the other layer's prompt of the opposite state::

        (g_a^g, g_a^r, g_n^r), (g_n^r, g_n^g, g_a^g), (g_a^r, g_a^g, g_n^g), (g_n^g, g_n^r, g_a^r)

    (read literally, the paper's second and fourth ratios are anchored at g_n^r and g_n^g; the
    "each layer's normal prompt as anchor" reading swaps those two terms, so the sum is the same).

    ``form="paper"``: the paper's equation, ``Σ -log(cos⁺ / (cos⁺ + cos⁻))`` on raw cosines.
    The ratio is a probability only for positive cosines, so each cosine is floored at
    :data:`COSINE_FLOOR` first (a no-op when both are positive, as for CLIP text embeddings of
    prompts that differ by a word; a negative already pushed below 0 then contributes ~0).
    ``form="infonce"``: ``Σ CE(softmax([cos⁺, cos⁻] / τ), positive)``, CLIP's InfoNCE over the
    same triples (pad 0.1's form).
    """
    if form not in ("paper", "infonce"):
        raise ValueError(f"contrastive_loss: unknown form {form!r} (paper, infonce)")

    def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(a, b, dim=-1)

    triples = ((geo_anomalous, render_anomalous, render_normal), (render_normal, geo_normal, geo_anomalous),
               (render_anomalous, geo_anomalous, geo_normal), (geo_normal, render_normal, render_anomalous))
    total = 0.0
    for anchor, positive, negative in triples:
        pos, neg = cos(anchor, positive), cos(anchor, negative)
        if form == "paper":
            pos, neg = pos.clamp(min=COSINE_FLOOR), neg.clamp(min=COSINE_FLOOR)
            term = -torch.log(pos / (pos + neg))
        else:
            term = -torch.log_softmax(torch.stack([pos, neg], dim=-1) / tau, dim=-1)[..., 0]
        total = total + term
    return total.mean()
