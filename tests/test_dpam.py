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


def _mha(blk, h, mode: str):
    """Multi-head attention of block ``blk`` on (B, T, W) ``h``, written out: ``mode`` 'qk' is
    softmax(q kᵀ / sqrt(d)) v, 'vv' is softmax(v vᵀ / sqrt(d)) v; then the output projection."""
    w = h.shape[-1]
    heads = blk.attn.num_heads
    d = w // heads
    wq, wk, wv = blk.attn.in_proj_weight.split(w)
    bq, bk, bv = blk.attn.in_proj_bias.split(w)

    def split(t):
        return t.view(t.shape[0], t.shape[1], heads, d).permute(0, 2, 1, 3)   # (B, heads, T, d)

    q, k, v = split(h @ wq.T + bq), split(h @ wk.T + bk), split(h @ wv.T + bv)
    left, right = (q, k) if mode == "qk" else (v, v)
    a = torch.softmax(left @ right.transpose(-1, -2) / d ** 0.5, dim=-1)
    y = (a @ v).permute(0, 2, 1, 3).reshape(h.shape)
    return y @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias


def _transcribed_dpam(visual, x, layers, dpam_blocks):
    """The DPAM equations, transcribed plainly (official AnomalyCLIP/PointAD dual path):

    x_l = x_{l-1} + A_qk(ln_1(x_{l-1})),  x_l = x_l + MLP(ln_2(x_l))        (original path, every block)
    d_l = d_{l-1} + A_vv(ln_1(x_{l-1})),  d_{f-1} = x_{f-1}               (DPAM path, blocks l >= f)

    with f = n - dpam_blocks + 1; global = ln_post(x_n[cls]) @ proj; the patch tokens of layer l
    come from d_l when l >= f, else from x_l; everything L2-normalized.
    Returns (global (B, D), patch (B, L, G*G, D))."""
    n = len(visual.transformer.resblocks)
    first = n - dpam_blocks + 1
    state = _embeds(visual, x)
    dpam = None
    taps = {}
    for b, blk in enumerate(visual.transformer.resblocks, start=1):
        if b >= first:
            dpam = (state if dpam is None else dpam) + _mha(blk, blk.ln_1(state), "vv")
        state = state + _mha(blk, blk.ln_1(state), "qk")
        state = state + blk.mlp.c_proj(blk.mlp.gelu(blk.mlp.c_fc(blk.ln_2(state))))
        taps[b] = (dpam if dpam is not None else state)[:, 1:]
    glob = F.normalize(visual.ln_post(state[:, 0]) @ visual.proj, dim=-1)
    patch = torch.stack([F.normalize(visual.ln_post(taps[l]) @ visual.proj, dim=-1) for l in layers], dim=1)
    return glob, patch


def _naive_dpam_patch(visual, x, layers, dpam_blocks, outs=None):
    return _transcribed_dpam(visual, x, layers, dpam_blocks)[1]


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


def _three_block_vit():
    """A random 3-block open_clip ViT in float64 (16 patch tokens, 4 heads)."""
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(7)
    visual = VisionTransformer(image_size=32, patch_size=8, width=64, layers=3, heads=4, mlp_ratio=4.0,
                               output_dim=32).double().eval()
    with torch.no_grad():  # non-trivial layer norms and biases
        for name, p in visual.named_parameters():
            if "ln" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    return visual


@pytest.mark.parametrize("dpam_blocks", [1, 2, 3])
def test_dpam_equals_the_transcribed_equations_on_a_three_block_vit(dpam_blocks):
    visual = _three_block_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.inference_mode():
        glob, patch = DpamVisual(visual, [1, 2, 3], dpam_blocks)(x)
        ref_glob, ref_patch = _transcribed_dpam(visual, x, [1, 2, 3], dpam_blocks)
    assert (glob.double() - ref_glob).abs().max() <= 1e-6
    assert (patch.double() - ref_patch).abs().max() <= 1e-6
    # the DPAM path reads the original path: feeding it its own tokens (pad 0.1) gives other patches
    if dpam_blocks >= 2:
        visual_blocks = visual.transformer.resblocks
        own = _embeds(visual, x)
        for blk in visual_blocks[:3 - dpam_blocks]:
            own = blk(own)
        for blk in visual_blocks[3 - dpam_blocks:]:
            own = own + _mha(blk, blk.ln_1(own), "vv")
        old = F.normalize(visual.ln_post(own[:, 1:]) @ visual.proj, dim=-1)
        assert (old - ref_patch[:, 2]).abs().max() > 1e-3


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
