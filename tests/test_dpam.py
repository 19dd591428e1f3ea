"""DPAM over open_clip's ViT: the class token is open_clip's own, the patch tokens come from the
value-value path of the rewired blocks, and the tapped layers are exactly the requested blocks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from data_cache.backbones import create_clip, resolve_dpam, resolve_layers
from pipeline.dpam import DpamVisual


def _build(name: str):
    return create_clip(name, "random", seed=1)


@pytest.fixture(scope="module")
def tiny():
    return _build("pad-tiny")


def _images(parts, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, parts.image_size, parts.image_size, generator=g)


def _block_outputs(visual, x):
    """open_clip's own forward: (image embedding, outputs of every resblock via hooks)."""
    outs = []
    hooks = [blk.register_forward_hook(lambda m, i, o: outs.append(o)) for blk in visual.transformer.resblocks]
    try:
        pooled = visual(x)
    finally:
        for h in hooks:
            h.remove()
    return pooled, outs


def _naive_dpam_patch(visual, x, layers, dpam_blocks, outs=None):
    """Slow reference of the DPAM path: explicit per-head softmax(v vᵀ / sqrt(d)) v, no MLP."""
    if outs is None:
        outs = _block_outputs(visual, x)[1]
    n = len(visual.transformer.resblocks)
    first = n - dpam_blocks + 1
    state = None
    taps = {}
    for b, blk in enumerate(visual.transformer.resblocks, start=1):
        if b == first:
            state = outs[b - 2] if b > 1 else _embeds(visual, x)
        if state is not None:
            h = blk.ln_1(state)
            w = h.shape[-1]
            heads = blk.attn.num_heads
            v = h @ blk.attn.in_proj_weight[2 * w:].T + blk.attn.in_proj_bias[2 * w:]
            v = v.view(v.shape[0], v.shape[1], heads, w // heads).permute(0, 2, 1, 3)
            a = torch.softmax(v @ v.transpose(-1, -2) / (w // heads) ** 0.5, dim=-1)
            y = (a @ v).permute(0, 2, 1, 3).reshape(h.shape)
            state = state + blk.attn.out_proj(y)
        taps[b] = (state if state is not None else outs[b - 1])[:, 1:]
    return torch.stack([F.normalize(visual.ln_post(taps[l]) @ visual.proj, dim=-1) for l in layers], dim=1)


def _embeds(visual, x):
    x = visual.conv1(x).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    return visual.ln_pre(torch.cat([cls, x], 1) + visual.positional_embedding)


def _check_backbone(parts, n_images=2):
    visual = parts.model.visual
    n = parts.n_vision_blocks
    layers = resolve_layers("6,12,18,24", n)
    x = _images(parts, n=n_images)
    with torch.inference_mode():
        pooled, outs = _block_outputs(visual, x)   # what model.encode_image computes
        reference = F.normalize(pooled, dim=-1)
        g0, p0 = DpamVisual(visual, layers, 0)(x)
        dpam = resolve_dpam(20, n)
        g1, p1 = DpamVisual(visual, layers, dpam)(x)
        naive = _naive_dpam_patch(visual, x, layers, dpam, outs)
    gg = parts.grid * parts.grid
    assert g0.shape == (n_images, parts.embed_dim) and p0.shape == (n_images, len(layers), gg, parts.embed_dim)
    # the global embedding is open_clip's, with or without DPAM
    torch.testing.assert_close(g0, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g1, reference, atol=1e-5, rtol=1e-4)
    # without DPAM, the taps are exactly the requested blocks' outputs
    for k, layer in enumerate(layers):
        expected = F.normalize(visual.ln_post(outs[layer - 1][:, 1:]) @ visual.proj, dim=-1)
        torch.testing.assert_close(p0[:, k], expected, atol=1e-5, rtol=1e-4)
    # with DPAM the rewired layers carry the value-value path, the others the original tokens
    first = n - dpam + 1
    for k, layer in enumerate(layers):
        if layer >= first:
            assert (p1[:, k] - p0[:, k]).abs().max() > 1e-3
        else:
            torch.testing.assert_close(p1[:, k], p0[:, k])
    torch.testing.assert_close(p1, naive, atol=1e-4, rtol=1e-3)
    norms = p1.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_dpam_on_pad_tiny(tiny):
    with torch.inference_mode():
        x = _images(tiny, n=1)
        torch.testing.assert_close(tiny.model.encode_image(x), _block_outputs(tiny.model.visual, x)[0])
    _check_backbone(tiny, n_images=1)


@pytest.mark.slow  # about 10 s on a quiet machine
def test_dpam_on_vit_b_16_random_weights():
    parts = _build("ViT-B-16")
    assert (parts.image_size, parts.grid, parts.n_vision_blocks, parts.n_text_blocks) == (224, 14, 12, 12)
    assert not any(p.requires_grad for p in parts.model.parameters())
    _check_backbone(parts, n_images=1)


def test_every_block_rewired_starts_from_the_embeddings(tiny):
    visual = tiny.model.visual
    x = _images(tiny, n=1, seed=2)
    with torch.inference_mode():
        _, p = DpamVisual(visual, [1, 6], 6)(x)
        naive = _naive_dpam_patch(visual, x, [1, 6], 6)
    torch.testing.assert_close(p, naive, atol=1e-4, rtol=1e-3)


def test_images_are_independent_of_their_batch(tiny):
    net = DpamVisual(tiny.model.visual, [3, 6], 5)
    x = _images(tiny, n=3, seed=3)
    with torch.inference_mode():
        g, p = net(x)
        g1, p1 = net(x[1:2])
    torch.testing.assert_close(g[1:2], g1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p[1:2], p1, atol=1e-5, rtol=1e-4)


def test_bad_layers_are_refused(tiny):
    with pytest.raises(ValueError):
        DpamVisual(tiny.model.visual, [0], 0)
    with pytest.raises(ValueError):
        DpamVisual(tiny.model.visual, [7], 0)
    with pytest.raises(ValueError):
        DpamVisual(tiny.model.visual, [6], 7)
