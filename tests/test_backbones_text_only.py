"""create_clip(need_visual=False): the text tower alone, the vision tower never materialized, the
text weights those of the full build (random ones included), only text tensors read from files."""
from __future__ import annotations

import pytest
import torch

from data_cache import backbones
from data_cache.backbones import _load_state_dict, create_clip, is_vision_key


def _text_part(state: dict) -> dict:
    return {k: v for k, v in state.items() if not is_vision_key(k)}


@pytest.mark.parametrize("name", ["pad-tiny", "ViT-B-16"])
def test_text_only_build_has_the_full_builds_text_weights_and_no_vision_weights(name, monkeypatch):
    import open_clip

    built = []
    real_init = open_clip.transformer.VisionTransformer.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append({p.device.type for p in self.parameters()})

    monkeypatch.setattr(open_clip.transformer.VisionTransformer, "__init__", spy)
    text = create_clip(name, "random", seed=7, need_visual=False)
    assert built == [{"meta"}]                                  # the vision tower only ever existed on meta
    monkeypatch.undo()
    full = create_clip(name, "random", seed=7)
    mine, want = text.model.state_dict(), _text_part(full.model.state_dict())
    assert text.model.visual is None and mine.keys() == want.keys()
    assert all(torch.equal(mine[k], want[k]) for k in want)
    for field in ("grid", "image_size", "n_vision_blocks", "n_text_blocks", "embed_dim", "mean", "std"):
        assert getattr(text, field) == getattr(full, field), field
    tokens = text.tokenizer(["a damaged object"])
    assert torch.equal(text.model.encode_text(tokens), full.model.encode_text(tokens))


def _module_tree(state: dict) -> torch.nn.Module:
    """A module whose state dict is ``state`` (float16, as OpenAI's archives store CLIP)."""
    root = torch.nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, torch.nn.Parameter(value.half(), requires_grad=False))
    root.register_buffer("input_resolution", torch.tensor(336))
    return root


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("weights")
    full = create_clip("pad-tiny", "random", seed=5)
    state = {k: v.contiguous() for k, v in full.model.state_dict().items()}
    files = {"safetensors": folder / "w.safetensors", "zip": folder / "w.pt", "legacy": folder / "legacy.pt",
             "wrapped": folder / "wrapped.bin", "torchscript": folder / "ViT-openai.pt"}
    save_file(state, str(files["safetensors"]))
    torch.save(state, files["zip"])
    torch.save(state, files["legacy"], _use_new_zipfile_serialization=False)
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, files["wrapped"])
    torch.jit.save(torch.jit.script(_module_tree(state)), str(files["torchscript"]))
    return state, files


@pytest.mark.parametrize("kind", ["safetensors", "zip", "legacy", "wrapped", "torchscript"])
def test_weight_files_load_the_text_tower_alone(weight_files, kind):
    state, files = weight_files
    path = str(files[kind])
    want = {k: (v.half().float() if kind == "torchscript" else v) for k, v in state.items()}
    read = _load_state_dict(path, text_only=True)
    assert read and not any(is_vision_key(k) for k in read) and set(read) == set(_text_part(state))
    text = create_clip("pad-tiny", path, seed=99, need_visual=False).model.state_dict()
    assert text.keys() == _text_part(want).keys() and all(torch.equal(text[k], want[k]) for k in text)
    full = create_clip("pad-tiny", path, seed=99).model.state_dict()
    assert full.keys() == want.keys() and all(torch.equal(full[k], want[k]) for k in want)


def test_safetensors_vision_tensors_are_never_read(weight_files, monkeypatch):
    import safetensors

    state, files = weight_files
    asked = []
    real = safetensors.safe_open

    class Recording:
        def __init__(self, *args, **kwargs):
            self.inner = real(*args, **kwargs)

        def __enter__(self):
            self.handle = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.handle.keys()

        def get_tensor(self, key):
            asked.append(key)
            return self.handle.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Recording)
    create_clip("pad-tiny", str(files["safetensors"]), need_visual=False)
    assert asked and not any(is_vision_key(k) for k in asked)
    assert set(asked) == set(_text_part(state))


def test_a_text_checkpoint_missing_a_text_tensor_is_refused(weight_files, tmp_path):
    from safetensors.torch import save_file

    state, _ = weight_files
    partial = {k: v for k, v in state.items() if k != "ln_final.weight"}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(backbones.PadError, match="does not fit backbone 'pad-tiny'.*ln_final.weight"):
        create_clip("pad-tiny", str(tmp_path / "partial.safetensors"), need_visual=False)
