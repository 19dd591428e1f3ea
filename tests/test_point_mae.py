"""The Point-MAE encoder (shapes, eval-mode determinism, the official train-mode inference) and
checkpoint loading (Point-MAE's prefixed keys, tensors only); DINO ViT-B/8's checkpoint and taps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_cache.backbones_pointmae import PointMAE, load_point_mae, set_point_mae_mode
from data_cache.errors import PadError


@pytest.fixture(scope="module")
def mae(one_thread):
    return load_point_mae("random", seed=3)


def _groups(b: int, m: int = 12, k: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, m, k, 3, generator=g) * 0.05, torch.randn(b, m, 3, generator=g)


def test_eval_mode_shapes_and_determinism(mae):
    nb, c = _groups(2)
    with torch.inference_mode():
        out = mae(nb, c)
        again = mae(nb, c)
        alone = mae(nb[1:], c[1:])
    assert len(out) == 3 and all(t.shape == (2, 12, 384) for t in out)
    for a, b in zip(out, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(out[2][1:], alone[2], rtol=1e-5, atol=1e-5)   # no batch statistics in eval
    # each tap went through the final LayerNorm (weight 1, bias 0 at init): zero mean, unit variance
    torch.testing.assert_close(out[0].mean(-1), torch.zeros(2, 12), atol=1e-4, rtol=0)
    assert not torch.allclose(out[0], out[1])


def test_train_mode_is_the_official_inference_and_seeded(one_thread):
    model = set_point_mae_mode(load_point_mae("random", seed=3), "train")
    assert model.drop_path_rates == pytest.approx(list(np.linspace(0, 0.1, 12)))
    nb, c = _groups(1)
    with torch.inference_mode():
        a = model(nb, c, generator=torch.Generator().manual_seed(5))
        b = model(nb, c, generator=torch.Generator().manual_seed(5))
        kept = model(nb, c, keep=torch.ones(1, 12, 2, dtype=torch.bool))
        evaluated = set_point_mae_mode(load_point_mae("random", seed=3), "eval")(nb, c)
    torch.testing.assert_close(a[2], b[2], rtol=0, atol=0)
    # nothing dropped still differs from eval: branches scaled by 1/keep and BatchNorm batch statistics
    assert not torch.allclose(kept[2], evaluated[2], atol=1e-3)
    draws = [model(nb, c, generator=torch.Generator().manual_seed(s))[2] for s in range(6)]
    assert any(not torch.allclose(draws[0], d) for d in draws[1:])
    with pytest.raises(PadError):
        set_point_mae_mode(model, "test")


def test_official_checkpoint_with_prefixed_keys_loads(tmp_path, mae):
    sd = mae.state_dict()
    ckpt = {"base_model": {("module.MAE_encoder." if i % 2 else "base_model.") + k: v for i, (k, v) in
                           enumerate(sd.items())},
            "epoch": 300}
    ckpt["base_model"]["module.MAE_decoder.blocks.0.norm1.weight"] = torch.ones(384)   # the decoder: ignored
    ckpt["base_model"]["module.mask_token"] = torch.zeros(1, 1, 384)
    path = tmp_path / "pretrain.pth"
    torch.save(ckpt, path)
    loaded = load_point_mae(str(path), seed=99)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


class Payload:   # any object: pad must not unpickle it
    pass


def test_checkpoints_holding_objects_or_other_tensors_are_refused(tmp_path, mae):
    bad = tmp_path / "evil.pth"
    torch.save({"base_model": {"norm.weight": torch.ones(384)}, "hook": Payload()}, bad)
    with pytest.raises(PadError, match="evil.pth: .*objects") as err:
        load_point_mae(str(bad))
    assert "\n" not in str(err.value)
    other = tmp_path / "other.pth"   # every key, wrong shapes (another architecture)
    torch.save({"base_model": {k: torch.zeros(1) for k in mae.state_dict()}}, other)
    with pytest.raises(PadError, match="does not fit Point-MAE .*another shape"):
        load_point_mae(str(other))
    partial = tmp_path / "partial.pth"
    torch.save({"base_model": {"module.MAE_encoder.norm.bias": torch.zeros(384)}}, partial)
    with pytest.raises(PadError, match="keys missing"):
        load_point_mae(str(partial))
    with pytest.raises(PadError, match="no such"):
        load_point_mae(str(tmp_path / "absent.pth"))


def test_dino_checkpoint_keys_and_taps(tmp_path, one_thread):
    from data_cache.backbones_dino import dino_layers, load_dino
    from pipeline.musc_inputs import rgb_input
    small = dict(embed_dim=32, num_heads=2)
    model = load_dino("random", seed=1, **small)
    sd = {"module.backbone." + k if k.startswith("blocks.0.") else k: v for k, v in model.state_dict().items()}
    sd["head.mlp.0.weight"] = torch.zeros(4, 4)          # a DINO head: not part of the backbone
    path = tmp_path / "dino_vitbase8_pretrain.pth"
    torch.save(sd, path)
    loaded = load_dino(str(path), seed=7, **small)
    rgb = np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    x = rgb_input(rgb)[None]
    assert x.shape == (1, 3, 224, 224)
    with torch.inference_mode():
        taps = dino_layers(loaded, x)
        want = model.forward_features(x)[:, 1:]           # the last block through the final norm
    assert [t.shape for t in taps] == [(1, 784, 32)] * 3
    torch.testing.assert_close(taps[2], want, rtol=1e-5, atol=1e-5)
    evil = tmp_path / "evil.pth"
    torch.save({"teacher": Payload()}, evil)
    with pytest.raises(PadError, match="objects"):
        load_dino(str(evil), **small)
