"""The learnable tensors of PointAD / PointAD+ — and nothing else.

Per prompt layer (``render``; PointAD+ adds ``geometry``), with E = prompt length, W = text
width, n_deep = clamp(deep_depth, 1, text depth) - 1, dl = deep length:

- ``<layer>.ctx``   float32 (2, E, W): context vectors [V1..VE] (normal, row 0) and
  [W1..WE] (anomalous, row 1);
- ``<layer>.deep``  float32 (n_deep, dl, W): deep text prompts for text layers 2..1+n_deep,
  shared by the layer's normal and anomalous prompt (as in AnomalyCLIP); absent when n_deep = 0.

The two layers are independent. Initialised N(0, 0.02²) from a seeded generator. These are the
only trainable tensors of the model and the only ones a checkpoint stores.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from data_cache.errors import PadError
from trainer.prompts import layers_for

INIT_STD = 0.02


@dataclass(frozen=True)
class PromptShape:
    """Sizes of the learnable prompts (derived from the options and the text tower)."""
    model: str          # "pointad" | "pointad+"
    length: int         # E, context tokens per prompt
    width: int          # W, text token width
    n_deep: int         # deep prompts per layer (text layers 2..1+n_deep)
    deep_length: int    # dl, tokens per deep prompt

    @classmethod
    def from_options(cls, model: str, length: int, deep_depth: int, deep_length: int,
                     width: int, text_depth: int) -> "PromptShape":
        """Clamp ``deep_depth`` to the text tower's depth; validate the sizes."""
        layers_for(model)  # validates the variant
        if length < 1:
            raise PadError(f"--prompt-length must be at least 1 (got {length})")
        n_deep = max(0, min(int(deep_depth), int(text_depth)) - 1)
        if n_deep and not 1 <= deep_length <= length:
            raise PadError(f"--deep-length must be between 1 and --prompt-length ({length}), got {deep_length}")
        return cls(model, int(length), int(width), n_deep, int(deep_length) if n_deep else 0)

    def expected(self) -> dict[str, tuple[int, ...]]:
        """{tensor name: shape} of every learnable tensor."""
        out: dict[str, tuple[int, ...]] = {}
        for layer in layers_for(self.model):
            out[f"{layer}.ctx"] = (2, self.length, self.width)
            if self.n_deep:
                out[f"{layer}.deep"] = (self.n_deep, self.deep_length, self.width)
        return out


class PromptLearner(nn.Module):
    """Holds the learnable prompt tensors (see the module docstring). ``state_dict()`` keys are
    ``<layer>.ctx`` / ``<layer>.deep``."""

    def __init__(self, shape: PromptShape, seed: int = 0):
        super().__init__()
        self.shape = shape
        gen = torch.Generator().manual_seed(int(seed))
        self.layers = nn.ModuleDict()
        for name, size in shape.expected().items():
            layer, kind = name.split(".")
            if layer not in self.layers:
                self.layers[layer] = nn.Module()
            tensor = torch.randn(size, generator=gen) * INIT_STD
            self.layers[layer].register_parameter(kind, nn.Parameter(tensor))

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(self.layers.keys())

    def ctx(self, layer: str) -> torch.Tensor:
        """(2, E, W) context of one layer (normal, anomalous)."""
        return self.layers[layer].ctx

    def deep(self, layer: str) -> torch.Tensor | None:
        """(n_deep, dl, W) deep prompts of one layer, or None."""
        return getattr(self.layers[layer], "deep", None)

    def tensors(self) -> dict[str, torch.Tensor]:
        """{"<layer>.ctx": ..., "<layer>.deep": ...}, detached float32 on the CPU (for saving)."""
        return {k.replace("layers.", "", 1): v.detach().float().cpu().contiguous()
                for k, v in self.state_dict().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy saved tensors in; a missing, extra or wrongly shaped tensor raises PadError."""
        expected = self.shape.expected()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise PadError(f"the prompt tensors do not match the configuration "
                           f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'})")
        for name, size in expected.items():
            if tuple(tensors[name].shape) != size:
                raise PadError(f"prompt tensor '{name}' has shape {tuple(tensors[name].shape)}, "
                               f"the configuration expects {size}")
        with torch.no_grad():
            for name in expected:
                layer, kind = name.split(".")
                getattr(self.layers[layer], kind).copy_(tensors[name].to(torch.float32))
