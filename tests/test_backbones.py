"""The backbone registry and factory: every entry builds, random weights are seeded, checkpoints
load, and unavailable or unfit weights give one PadError line (never the network for long)."""
from __future__ import annotations

import os
import time

import pytest
import torch

from data_cache import backbones
from data_cache.backbones import (REGISTRY, create_clip, get_backbone, resolve_dpam, resolve_layers,
                                  weights_available)
from data_cache.errors import PadError

# Built here with random weights: pad-tiny (ViT-B-16 is built in test_dpam.py; ViT-L-14-336 is checked
# from its config only, building it takes too long for the suite).
CHEAP = ("pad-tiny",)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, empty weight caches (Hugging Face, ~/.cache/clip, $PAD_CLIP_WEIGHTS)."""
    import huggingface_hub.constants as hf_constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PAD_CLIP_WEIGHTS", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


@pytest.fixture(scope="module")
def tiny():
    return create_clip("pad-tiny", "random", seed=3)


@pytest.mark.parametrize("name", [n for n, b in REGISTRY.items() if b.family == "clip"])
def test_every_registry_entry_resolves_to_a_vit_with_the_promised_input_and_grid(name):
    entry = get_backbone(name)
    import open_clip
    backbones._register_configs()
    cfg = open_clip.get_model_config(entry.model_name)
    assert cfg["vision_cfg"]["image_size"] == entry.image_size
    assert resolve_layers(entry.layers, cfg["vision_cfg"]["layers"])[-1] <= cfg["vision_cfg"]["layers"]
    if name in CHEAP:
        parts = create_clip(name, "random", seed=0)
        assert parts.image_size == entry.image_size
        assert parts.grid == entry.image_size // parts.model.visual.patch_size[0]
        assert parts.n_vision_blocks == cfg["vision_cfg"]["layers"]
        assert parts.n_text_blocks >= 9  # deep text prompts go into text layers 2..9
        assert not parts.model.training
        assert not any(p.requires_grad for p in parts.model.parameters())
        image = torch.zeros(1, 3, parts.image_size, parts.image_size)
        with torch.inference_mode():
            assert parts.model.encode_image(image).shape == (1, parts.embed_dim)
            assert parts.model.encode_text(parts.tokenizer(["a photo of an object"])).shape == (1, parts.embed_dim)


def test_pad_tiny_keeps_the_papers_24x24_grid(tiny):
    assert (tiny.image_size, tiny.grid) == (336, 24)
    assert tiny.n_text_blocks >= 9


def test_random_weights_depend_on_the_seed_only_and_leave_the_global_rng_alone(tiny):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    same = create_clip("pad-tiny", "random", seed=3).model.state_dict()
    assert torch.equal(torch.rand(3), before)
    other = create_clip("pad-tiny", "random", seed=4).model.state_dict()
    ref = tiny.model.state_dict()
    assert all(torch.equal(ref[k], same[k]) for k in ref)
    assert not all(torch.equal(ref[k], other[k]) for k in ref)


def test_a_checkpoint_file_loads_the_saved_weights(tiny, tmp_path):
    from safetensors.torch import save_file
    sd = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pt"):
        save_file(sd, str(path)) if path.suffix == ".safetensors" else torch.save(sd, path)
        loaded = create_clip("pad-tiny", str(path), seed=99).model.state_dict()
        assert all(torch.equal(sd[k], loaded[k]) for k in sd)
        assert weights_available("pad-tiny", str(path))


def test_text_only_parts_drop_the_vision_tower():
    parts = create_clip("pad-tiny", "random", need_visual=False)
    assert parts.model.visual is None
    assert (parts.grid, parts.image_size) == (24, 336)
    assert parts.model.encode_text(parts.tokenizer(["x"])).shape == (1, parts.embed_dim)


def test_unknown_and_unsupported_backbones_list_the_choices():
    with pytest.raises(PadError, match="pad-tiny, ViT-B-16, ViT-L-14-336"):
        get_backbone("ViT-Q-99")
    with pytest.raises(PadError, match="not a plain open_clip CLIP ViT"):
        get_backbone("RN50")
    assert get_backbone("ViT-B-32").image_size == 224  # any open_clip ViT is accepted


def _one_line(exc: PadError) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_missing_weights_file_says_how_to_supply_weights(offline):
    with pytest.raises(PadError) as err:
        create_clip("ViT-B-16", str(offline / "nope.safetensors"))
    text = _one_line(err.value)
    assert "nope.safetensors" in text and "--pretrained PATH" in text and "PAD_CLIP_WEIGHTS" in text


def test_garbage_checkpoint_is_refused_in_one_line(offline):
    path = offline / "garbage.pt"
    path.write_bytes(os.urandom(2000))
    with pytest.raises(PadError, match="not a readable checkpoint"):
        create_clip("pad-tiny", str(path))


def test_checkpoint_of_another_architecture_is_refused(offline, tiny):
    sd = tiny.model.state_dict()
    sd["visual.proj"] = sd["visual.proj"][:, :64]   # another embedding width
    path = offline / "other.pt"
    torch.save(sd, path)
    with pytest.raises(PadError, match="does not fit backbone 'pad-tiny'"):
        create_clip("pad-tiny", str(path))
    del sd["visual.proj"]
    torch.save(sd, path)
    with pytest.raises(PadError, match="does not fit backbone 'pad-tiny'.*visual.proj"):
        create_clip("pad-tiny", str(path))


def test_uncached_tag_offline_fails_fast_and_names_where_it_looked(offline):
    t0 = time.perf_counter()
    assert not weights_available("ViT-L-14-336", "openai")
    assert not weights_available("ViT-L-14-336")
    assert time.perf_counter() - t0 < 2.0
    t0 = time.perf_counter()
    with pytest.raises(PadError) as err:
        create_clip("ViT-L-14-336", "openai")
    assert time.perf_counter() - t0 < 10.0
    text = _one_line(err.value)
    assert "offline" in text and "ViT-L-14-336px.pt" in text and "--pretrained PATH" in text


def test_offline_weights_error_names_both_ways_out_in_one_line(offline, monkeypatch):
    """Where the real weights go ($PAD_CLIP_WEIGHTS and the file names, or --pretrained PATH), and
    the tiny backbone for a quick run."""
    with pytest.raises(PadError) as err:
        create_clip("ViT-L-14-336")  # the default weights, openai
    text = _one_line(err.value)
    assert "$PAD_CLIP_WEIGHTS" in text and "ViT-L-14-336_openai.safetensors or ViT-L-14-336px.pt" in text
    assert "--pretrained PATH" in text and "--backbone pad-tiny" in text
    monkeypatch.setenv("PAD_CLIP_WEIGHTS", str(offline / "w"))
    with pytest.raises(PadError) as err:
        create_clip("ViT-B-16", "openai")
    text = _one_line(err.value)
    assert f"as ViT-B-16_openai.safetensors or ViT-B-16.pt in $PAD_CLIP_WEIGHTS ({offline / 'w'})" in text
    assert "--backbone pad-tiny" in text


def test_pad_tiny_defaults_to_its_random_weights():
    assert backbones.default_pretrained("pad-tiny") == "random"
    assert backbones.default_pretrained("ViT-L-14-336") == "openai"
    parts = create_clip("pad-tiny", "auto", seed=3)
    assert parts.pretrained == "random" and weights_available("pad-tiny", "auto")


def test_weights_under_pad_clip_weights_are_found(offline, monkeypatch):
    folder = offline / "weights"
    folder.mkdir()
    assert not weights_available("ViT-B-16", "openai")
    (folder / "ViT-B-16_openai.safetensors").write_bytes(b"")  # found by name; loading is tested above
    (folder / "ViT-L-14-336px.pt").write_bytes(b"")             # OpenAI's download name
    monkeypatch.setenv("PAD_CLIP_WEIGHTS", str(folder))
    assert weights_available("ViT-B-16", "openai") and weights_available("ViT-L-14-336")
    assert backbones.locate_weights("ViT-B-16", "openai") == str(folder / "ViT-B-16_openai.safetensors")
    assert backbones.locate_weights("ViT-L-14-336", "openai") == str(folder / "ViT-L-14-336px.pt")
    # openai weights were trained with QuickGELU: the model is built with it
    assert backbones._quick_gelu_for("ViT-B-16", "openai", str(folder / "ViT-B-16_openai.safetensors"))
    assert backbones._quick_gelu_for("ViT-L-14-336", str(folder / "ViT-L-14-336px.pt"),
                                     str(folder / "ViT-L-14-336px.pt"))


def test_unknown_tag_lists_the_tags(offline):
    with pytest.raises(PadError, match="tags: openai"):
        create_clip("ViT-B-16", "no_such_tag")
    with pytest.raises(PadError, match="random"):
        create_clip("pad-tiny", "openai")


def test_resolve_layers_scales_the_24_block_reference():
    assert resolve_layers("24", 24) == [24]
    assert resolve_layers("6,12,18,24", 24) == [6, 12, 18, 24]
    assert resolve_layers("24", 6) == [6]
    assert resolve_layers("6,12,18,24", 6) == [2, 3, 5, 6]
    assert resolve_layers("6,12,18,24", 12) == [3, 6, 9, 12]
    assert resolve_layers([24, 1, 1], 12) == [1, 12]
    for bad in ("0", "25", "a,b", ""):
        with pytest.raises(PadError):
            resolve_layers(bad, 12)


def test_resolve_dpam_matches_the_reference_and_scales():
    assert resolve_dpam(20, 24) == 19   # DPAM_layer=20 rewires the last 19 of ViT-L's 24
    assert resolve_dpam(20, 12) == 10
    assert resolve_dpam(20, 6) == 5
    assert resolve_dpam(0, 24) == resolve_dpam(1, 24) == 0
    assert resolve_dpam(25, 12) == 12
    with pytest.raises(PadError):
        resolve_dpam(-1, 12)
