"""The model side of pad train: prompt templates, the frozen text tower with learnable and deep
prompts, view/patch probabilities and point scores from cached features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_cache.backbones import create_clip
from data_cache.errors import PadError
from _cache_fixtures import make_features, make_sample, view_matrices
from trainer import prompts
from trainer.model import (build_model, explicit_scores, patch_probabilities, predict_sample, predict_views,
                           upsample_maps, view_logits)
from trainer.projection import geometry_features, projection_matrix
from trainer.prompt_learner import PromptShape

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip():
    return create_clip("pad-tiny", "random", seed=0, need_visual=False)


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(3)
    views = view_matrices(3)
    s = make_sample(rng, 300, True, views, 48)
    direction = rng.normal(size=128)
    direction /= np.linalg.norm(direction)
    g, p = make_features(rng, s["gt2d"], 6, 128, 2, direction, np.eye(128)[0])
    s["global"], s["patch"] = g, p
    return s


def test_prompt_texts():
    assert prompts.prompt_pair("render", 2) == ["X X object.", "X X damaged object."]
    assert prompts.prompt_pair("geometry", 1) == ["X point cloud.", "X damaged point cloud."]
    assert prompts.prompt_pair("render", 1, "coop", "cable_gland") == ["X cable gland.", "X damaged cable gland."]
    assert prompts.readable("geometry", "anomalous", 3) == "[W1] [W2] [W3] damaged point cloud."
    assert prompts.layers_for("pointad") == ("render",)
    with pytest.raises(PadError, match="class name"):
        prompts.prompt_text("render", "normal", 3, "coop")


def test_text_tower_reproduces_open_clip_encode_text(clip):
    model = build_model(clip.model, clip.tokenizer, model="pointad", prompt_length=3, deep_length=2)
    texts = ["a photo of a damaged object.", "X X X point cloud."]
    ours = model.tower.encode_plain(texts)
    ref = clip.model.encode_text(clip.tokenizer(texts))
    assert torch.allclose(ours, ref, atol=1e-5)
    # context equal to the placeholders' own embeddings, no deep prompts: the plain template
    ids, emb = model.tower.prompt_tokens(["X X X damaged object."], 3)
    out = model.tower(ids, emb, emb[:, 1:4].clone())
    assert torch.allclose(out, clip.model.encode_text(clip.tokenizer(["X X X damaged object."])), atol=1e-5)


def test_prompt_shapes_and_deep_depth_clamped_to_the_text_tower(clip):
    model = build_model(clip.model, clip.tokenizer, model="pointad+", prompt_length=5, deep_depth=99,
                        deep_length=2)
    depth = len(clip.model.transformer.resblocks)
    assert model.learner.shape.expected() == {
        "render.ctx": (2, 5, 128), "render.deep": (depth - 1, 2, 128),
        "geometry.ctx": (2, 5, 128), "geometry.deep": (depth - 1, 2, 128)}
    assert PromptShape.from_options("pointad", 4, 1, 4, 128, 12).expected() == {"render.ctx": (2, 4, 128)}
    with pytest.raises(PadError, match="deep-length"):
        PromptShape.from_options("pointad", 4, 9, 5, 128, 12)


def test_only_the_prompts_receive_gradients_and_every_prompt_does(clip):
    model = build_model(clip.model, clip.tokenizer, model="pointad+", prompt_length=4, deep_depth=4, deep_length=2)
    text = model.text_features()
    assert text["render"].shape == (1, 2, 128) and text["geometry"].shape == (1, 2, 128)
    (text["render"][0, 1].sum() + text["geometry"][0, 0].sum()).backward()
    for name, p in model.learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in clip.model.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"learner.{n}" for n, _ in model.learner.named_parameters()}


def test_coop_prompts_differ_per_class_and_need_a_class(clip):
    model = build_model(clip.model, clip.tokenizer, model="pointad", style="coop", prompt_length=2, deep_depth=2,
                        deep_length=1)
    text = model.text_features(["bagel", "cable_gland"])["render"]
    assert text.shape == (2, 2, 128) and not torch.allclose(text[0], text[1])
    with pytest.raises(PadError, match="class name"):
        model.inference_text(None)


def test_probabilities_are_normalized():
    rng = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(2, 2, 16, generator=rng), dim=-1)
    logits = view_logits(torch.randn(2, 3, 16, generator=rng), text)
    assert logits.shape == (2, 3, 2) and logits.abs().max() <= 1 / 0.07 + 1e-4
    probs = patch_probabilities(torch.randn(2, 3, 2, 16, 16, generator=rng).half(), text)
    assert probs.shape == (2, 3, 2, 2, 4, 4)
    assert torch.allclose(probs.sum(dim=3), torch.ones(2, 3, 2, 4, 4))


def test_upsampled_maps_follow_the_projection_sampling_convention():
    """A map upsampled to H×W and read at a pixel equals the bilinear sample that
    projection_matrix takes for point features at that pixel (one convention for S3d and q)."""
    rng = np.random.default_rng(0)
    grid, size, n = 6, 48, 200
    tokens = rng.random((1, grid * grid)).astype(np.float32)
    up = upsample_maps(torch.from_numpy(tokens.reshape(1, grid, grid)), size)[0].numpy()
    pixel = rng.integers(0, size, size=(n, 1, 2)).astype(np.int16)
    mat = projection_matrix(pixel, np.ones((n, 1), bool), size, grid)
    np.testing.assert_allclose(mat @ tokens[0], up[pixel[:, 0, 0], pixel[:, 0, 1]], atol=1e-5)


def test_predict_sample_shapes_ranges_and_chunking(clip, sample):
    model = build_model(clip.model, clip.tokenizer, model="pointad+", prompt_length=3, deep_depth=3, deep_length=2)
    text = model.inference_text()
    a = predict_sample(model, sample["global"], sample["patch"], sample, 48, text=text, chunk=64)
    b = predict_sample(model, sample["global"], sample["patch"], sample, 48, text=text, chunk=10_000)
    n = sample["points"].shape[0]
    assert a.implicit.shape == (n,) and a.explicit.shape == (n,) and a.view_probs.shape == (3,)
    assert a.view_maps.shape == (3, 48, 48)
    for arr in (a.implicit, a.explicit, a.view_probs, a.view_maps):
        assert arr.dtype == np.float32 and np.all((arr >= 0) & (arr <= 1))
    np.testing.assert_allclose(a.explicit, b.explicit, atol=1e-5)
    np.testing.assert_array_equal(a.implicit, b.implicit)
    # explicit scores equal the training path's (geometry_features on a subset + explicit_scores)
    idx = np.array([0, 5, 17, 123])
    q = geometry_features(torch.from_numpy(sample["patch"]).float(), sample["pixel"], sample["visible"],
                          sample["knn"], sample["knn_dist"], 48, 6, index=idx)
    np.testing.assert_allclose(explicit_scores(q, text["geometry"])[:, 1].numpy(), a.explicit[idx], atol=1e-5)
    # view probabilities: the same as scoring the views alone (used for the RGB image)
    probs, maps = predict_views(model, sample["global"], sample["patch"], 48, text=text)
    np.testing.assert_array_equal(probs, a.view_probs)


def test_pointad_has_no_explicit_map(clip, sample):
    model = build_model(clip.model, clip.tokenizer, model="pointad", prompt_length=3, deep_depth=1)
    pred = predict_sample(model, sample["global"], sample["patch"], sample, 48, with_maps=False)
    assert pred.explicit is None and pred.view_maps is None
    assert pred.implicit.shape == (sample["points"].shape[0],)


def test_reduced_loss_size_changes_only_the_2d_local_term(clip, tmp_path):
    from _cache_fixtures import make_cache
    from trainer.data import TrainDataset, collate, open_training_data
    from trainer.objective import batch_losses

    tiny = make_cache(str(tmp_path), {"ring": (1, 1)}, points=(100, 120), image_size=48)
    data = open_training_data(tiny.cache, None, ["ring"], splits=("test", "train"))
    batch = collate([TrainDataset(tiny.cache, tiny.tag, data.indices, geometry_points=64)[k] for k in range(2)])
    model = build_model(clip.model, clip.tokenizer, model="pointad+", prompt_length=3, deep_depth=2, deep_length=1)
    with torch.no_grad():
        full = batch_losses(model, batch)
        small = batch_losses(model, batch, loss_size=24)
    assert set(full) == {"total", "global_3d", "local_3d", "global_2d", "local_2d", "geometry", "cross"}
    for term in ("global_3d", "local_3d", "global_2d", "geometry", "cross"):
        assert torch.equal(full[term], small[term]), term
    assert abs(float(full["local_2d"]) - float(small["local_2d"])) < 0.1
    assert torch.isclose(full["total"], sum(v for k, v in full.items() if k != "total"))
