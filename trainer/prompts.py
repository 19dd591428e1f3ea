"""Prompt templates of PointAD / PointAD+ (text only; no tensors here).

Two *layers* of prompts, each a normal / anomalous pair:

- rendering layer (PointAD):  ``[V1]..[VE] object.``       / ``[W1]..[WE] damaged object.``
- geometry layer (PointAD+):  ``[V1]..[VE] point cloud.``  / ``[W1]..[WE] damaged point cloud.``

Prompt *styles*: ``agnostic`` (AnomalyCLIP's object-agnostic text, the same for every class)
and ``coop`` (the class name takes the place of ``object`` / ``point cloud``).

The learnable tokens ``[V*]`` / ``[W*]`` are written as ``X`` placeholders; the tokenizer
turns each ``X`` into one token whose embedding the prompt learner replaces.
"""
from __future__ import annotations

from typing import Sequence

from data_cache.errors import PadError

LAYERS = ("render", "geometry")
STATES = ("normal", "anomalous")  # order of the two prompts of a pair everywhere in the trainer
STYLES = ("agnostic", "coop")
PLACEHOLDER = "X"

# The words after the learnable context, per layer: {state: text with '{}' for the object word}.
_TEMPLATES = {
    "render": {"normal": "{}.", "anomalous": "damaged {}."},
    "geometry": {"normal": "{}.", "anomalous": "damaged {}."},
}
_OBJECT_WORD = {"render": "object", "geometry": "point cloud"}


def layers_for(model: str) -> tuple[str, ...]:
    """Prompt layers of a model variant: ``pointad`` -> ('render',), ``pointad+`` -> both."""
    if model == "pointad":
        return ("render",)
    if model == "pointad+":
        return LAYERS
    raise PadError(f"unknown model variant '{model}' (choices: pointad, pointad+)")


def class_phrase(class_name: str) -> str:
    """A class name as words: ``cable_gland`` -> ``cable gland``."""
    words = " ".join(class_name.replace("_", " ").replace("-", " ").split())
    if not words:
        raise PadError(f"class name '{class_name}' has no letters to put in a CoOp prompt")
    return words


def object_word(layer: str, style: str, class_name: str | None = None) -> str:
    """The word(s) after the context: ``object`` / ``point cloud`` (agnostic) or the class name
    (coop; the geometry layer says ``<class> point cloud``)."""
    if style not in STYLES:
        raise PadError(f"unknown prompt style '{style}' (choices: {', '.join(STYLES)})")
    if style == "agnostic":
        return _OBJECT_WORD[layer]
    if class_name is None:
        raise PadError("CoOp prompts need the class name")
    phrase = class_phrase(class_name)
    return phrase if layer == "render" else f"{phrase} point cloud"


def prompt_text(layer: str, state: str, length: int, style: str = "agnostic",
                class_name: str | None = None) -> str:
    """The text fed to the tokenizer, ``length`` placeholders first.

    >>> prompt_text("render", "anomalous", 3)
    'X X X damaged object.'
    """
    if layer not in LAYERS or state not in STATES:
        raise ValueError(f"layer {layer!r} / state {state!r}")
    if length < 1:
        raise PadError(f"prompt length must be at least 1 (got {length})")
    words = _TEMPLATES[layer][state].format(object_word(layer, style, class_name))
    return " ".join([PLACEHOLDER] * length + [words])


def prompt_pair(layer: str, length: int, style: str = "agnostic",
                class_name: str | None = None) -> list[str]:
    """``[normal text, anomalous text]`` of one layer."""
    return [prompt_text(layer, s, length, style, class_name) for s in STATES]


def readable(layer: str, state: str, length: int, style: str = "agnostic",
             class_name: str | None = None) -> str:
    """Human-readable form with ``[V1]..`` / ``[W1]..`` (for logs and config.json)."""
    text = prompt_text(layer, state, length, style, class_name)
    letter = "V" if state == "normal" else "W"
    words = text.split(" ")[length:]
    return " ".join([f"[{letter}{i + 1}]" for i in range(length)] + words)


def describe(model: str, length: int, style: str, class_names: Sequence[str] = ()) -> dict:
    """{layer: {state: readable text}} (CoOp: the first class name stands in)."""
    example = class_names[0] if class_names else "<class>"
    return {layer: {s: readable(layer, s, length, style, example if style == "coop" else None)
                    for s in STATES}
            for layer in layers_for(model)}
