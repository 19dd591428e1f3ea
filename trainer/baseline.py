"""The "CLIP + Rendering" baseline of the PointAD papers: no training, hand-written prompts.

Each class is scored with two plain sentences through the frozen text tower of the backbone
the features came from — ``A photo of a normal [cls].`` and ``A photo of an anomalous [cls].``
(:data:`TEMPLATES`, the class name as words) — and then exactly the scoring path of a trained
PointAD run (view probabilities, patch probabilities, back-projection, smoothing, object
score): ``pad score --prompts clip`` without a checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.prompts import class_phrase
from trainer.text_encoder import FrozenTextTower

#: The baseline's (normal, anomalous) sentences; ``{}`` is the class name as words.
TEMPLATES = ("A photo of a normal {}.", "A photo of an anomalous {}.")


class ClipBaseline:
    """Stands where a trained :class:`trainer.model.PointADModel` stands in ``pad score``:
    ``style`` 'coop' (one prompt pair per class), ``variant`` 'pointad' (no geometry layer),
    :meth:`inference_text` returns {"render": (2, D)} normalized embeddings."""

    style = "coop"
    variant = "pointad"

    def __init__(self, tower: FrozenTextTower, config: dict):
        self.tower = tower
        self.config = config

    @property
    def device(self) -> torch.device:
        return self.tower.positional_embedding.device

    def prompts(self, class_name: str) -> list[str]:
        """The two sentences of ``class_name``."""
        words = class_phrase(class_name)
        return [t.format(words) for t in TEMPLATES]

    @torch.no_grad()
    def inference_text(self, class_name: str | None = None) -> dict[str, torch.Tensor]:
        """{"render": (2, D) float32} L2-normalized embeddings of the class's two sentences."""
        if class_name is None:
            raise ValueError("the CLIP baseline needs the class name")
        return {"render": F.normalize(self.tower.encode_plain(self.prompts(class_name)), dim=-1)}


def build_baseline(feature_attrs: dict, tag: str, device: str) -> ClipBaseline:
    """The baseline on the text tower of the backbone that made a feature store (its attributes
    ``backbone``, ``pretrained``, ``seed``); only the text tower is built."""
    from data_cache.backbones import create_clip
    from data_cache.errors import PadError

    backbone, pretrained = feature_attrs.get("backbone"), feature_attrs.get("pretrained")
    if not backbone or not pretrained:
        raise PadError(f"the feature store '{tag}' does not say which backbone made it")
    seed = int(feature_attrs.get("seed", 0)) if pretrained == "random" else 0
    parts = create_clip(str(backbone), str(pretrained), seed=seed, device=device, need_visual=False)
    tower = FrozenTextTower(parts.model, parts.tokenizer)
    config = {"model": "clip", "prompt_style": "clip", "training_classes": [], "feature_tag": tag,
              "backbone": str(backbone), "pretrained": str(pretrained), "backbone_seed": seed,
              "prompts": {"render": {"normal": TEMPLATES[0].format("[cls]"),
                                     "anomalous": TEMPLATES[1].format("[cls]")}}}
    return ClipBaseline(tower, config)
