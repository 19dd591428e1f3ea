"""``pad import-checkpoint FILE.pth --cache CACHE --out RUN``: an official PointAD checkpoint as a pad run.

The official ``train.py`` saves ``torch.save({"prompt_learner": prompt_learner.state_dict()})``
(``prompt_ensemble.py`` ``AnomalyCLIP_PromptLearner``). Its learnable tensors, for E context
tokens, text width W, n deep prompts of length dl (the scripts: E = 12, n = 8, dl = 4):

- ``ctx_pos`` (1, 1, E, W): the normal prompt's context ``[V1..VE] object.``
- ``ctx_neg`` (1, 1, E, W): the anomalous prompt's context ``[W1..WE] damaged object.``
- ``compound_prompts_text.0`` .. ``.{n-1}`` (dl, W): deep prompts replacing tokens 1..dl before
  text layers 2..n+1, shared by both prompts;
- ``compound_prompt_projections.*`` and the token buffers: not used by the model, ignored.

These map one to one onto a pad PointAD run with object-agnostic prompts
(``render.ctx`` = [ctx_pos, ctx_neg] (2, E, W), ``render.deep`` (n, dl, W)); the run's
backbone and features are the cache's. The file is read with ``torch.load(weights_only=True)``
only: a pickle that needs code is refused, never executed. Every check runs before anything is
written; a bad file leaves ``--out`` untouched.
"""
from __future__ import annotations

import os
import re

import torch

from data_cache.errors import PadError
from data_cache.options import split_csv
from trainer.options import ImportCheckpointConfig

DEEP_KEY = re.compile(r"^compound_prompts_text\.(\d+)$")


def read_official(path: str) -> dict[str, torch.Tensor]:
    """The prompt learner's state dict of an official checkpoint, read without unpickling code.
    PadError (naming the file) for a file that is missing, not a torch file, needs code, or
    has no ``prompt_learner`` dict of tensors."""
    if not os.path.isfile(path):
        raise PadError("no such checkpoint file", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (code in the pickle), RuntimeError/EOFError (not a torch file)
        text = " ".join(str(exc).split())
        found = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise PadError(f"the file needs code to unpickle ({next(g for g in found.groups() if g)}; "
                           "torch.load(weights_only=True) refuses it): not a plain official PointAD checkpoint",
                           path) from None
        raise PadError(f"not a readable torch checkpoint ({type(exc).__name__})", path) from None
    if not isinstance(obj, dict) or "prompt_learner" not in obj:
        keys = ", ".join(sorted(map(str, obj))[:5]) if isinstance(obj, dict) else type(obj).__name__
        raise PadError(f"no 'prompt_learner' in the checkpoint (found: {keys or 'nothing'}); expected "
                       "torch.save({'prompt_learner': state_dict}) from the official train.py", path)
    state = obj["prompt_learner"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PadError("'prompt_learner' is not a dict of tensors", path)
    return state


def official_to_pad(state: dict[str, torch.Tensor], path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """pad's prompt tensors ({"render.ctx", "render.deep"}) and sizes {prompt_length, deep_depth,
    deep_length, width} of an official prompt-learner state dict; PadError for missing keys or
    shapes that do not fit together."""
    for key in ("ctx_pos", "ctx_neg"):
        if key not in state:
            raise PadError(f"the prompt learner has no '{key}' (not an official PointAD checkpoint)", path)
    pos, neg = state["ctx_pos"], state["ctx_neg"]
    if pos.ndim != 4 or pos.shape[:2] != (1, 1) or pos.shape != neg.shape:
        raise PadError(f"ctx_pos {tuple(pos.shape)} and ctx_neg {tuple(neg.shape)} are not both (1, 1, E, W) "
                       "(object-agnostic prompts, one normal and one anomalous template)", path)
    length, width = int(pos.shape[2]), int(pos.shape[3])
    deep_ids = sorted(int(m.group(1)) for k in state if (m := DEEP_KEY.match(k)))
    if deep_ids != list(range(len(deep_ids))):
        raise PadError(f"compound_prompts_text entries {deep_ids} are not numbered 0..n-1", path)
    deep = [state[f"compound_prompts_text.{i}"] for i in deep_ids]
    if deep and any(d.ndim != 2 or d.shape != deep[0].shape or d.shape[1] != width for d in deep):
        shapes = sorted({tuple(d.shape) for d in deep})
        raise PadError(f"compound_prompts_text shapes {shapes} are not all (dl, {width})", path)
    deep_length = int(deep[0].shape[0]) if deep else 0
    if deep and not 1 <= deep_length <= length:
        raise PadError(f"deep prompts of {deep_length} tokens for a context of {length}", path)
    tensors = {"render.ctx": torch.cat([pos[0], neg[0]], dim=0).float().contiguous()}
    if deep:
        tensors["render.deep"] = torch.stack(deep).float().contiguous()
    sizes = {"prompt_length": length, "deep_depth": len(deep) + 1, "deep_length": deep_length, "width": width}
    return tensors, sizes


def import_checkpoint(cfg: ImportCheckpointConfig) -> dict:
    """Check everything, then write the run; returns its config."""
    from data_cache import checkpoint as ckpt
    from data_cache.backbones import create_clip
    from data_cache.feature_store import FeatureStore
    from data_cache.render_record import render_record
    from data_cache.render_store import RenderStore
    from trainer.model import build_model, model_config_fields
    from trainer.prompts import describe

    path = os.path.abspath(os.path.expanduser(cfg.file))
    tensors, sizes = official_to_pad(read_official(path), path)
    if ckpt.exists(cfg.out):
        raise PadError("this run directory already holds a checkpoint; choose another --out", cfg.out)
    render = RenderStore.open(cfg.cache)
    features = FeatureStore.open(cfg.cache, cfg.features)
    features.check_render_fingerprint(render.fingerprint)
    attrs = features.attrs
    backbone, pretrained = str(attrs.get("backbone")), str(attrs.get("pretrained"))
    seed = int(attrs.get("seed", 0)) if pretrained == "random" else 0
    parts = create_clip(backbone, pretrained, seed=seed, device="cpu", need_visual=False)
    model = build_model(parts.model, parts.tokenizer, model="pointad", style="agnostic",
                        prompt_length=sizes["prompt_length"], deep_depth=sizes["deep_depth"],
                        deep_length=max(sizes["deep_length"], 1))
    if model.tower.width != sizes["width"]:
        raise PadError(f"the checkpoint's prompts are {sizes['width']} wide but the cache's backbone '{backbone}' "
                       f"has a text width of {model.tower.width} (features '{features.tag}'); import it into a "
                       "cache extracted with the backbone it was trained with (ViT-L-14-336: 768)", path)
    if sizes["deep_depth"] - 1 > model.tower.depth - 1:
        raise PadError(f"{sizes['deep_depth'] - 1} deep prompts for a text tower of {model.tower.depth} layers", path)
    model.learner.load_tensors(tensors)   # shapes checked against the configuration
    classes = split_csv(cfg.train_classes) if cfg.train_classes else [os.path.basename(os.path.dirname(path))
                                                                      or "unknown"]
    first = features.patch(render.select()[0]) if render.select() else None
    config = dict(model_config_fields(model), **{
        "deep_depth": sizes["deep_depth"], "deep_length": sizes["deep_length"], "feature_tag": features.tag,
        "backbone": backbone, "pretrained": pretrained, "backbone_seed": seed, "training_classes": classes,
        "training_splits": ["test"], "epochs": 0, "epochs_completed": 0, "seed": 0,
        "render_fingerprint": render.fingerprint, "versions": ckpt.versions(), "render": render_record(render.attrs),
        "feature_precision": str(attrs.get("precision", "fp32")),
        "image_size": render.image_size, "n_views": len(render.views),
        "grid": int(round(first.shape[2] ** 0.5)) if first is not None else int(attrs.get("grid", 0)),
        "feature_layers": list(attrs.get("layers", [])) if isinstance(attrs.get("layers"), list) else [],
        "prompts": describe("pointad", sizes["prompt_length"], "agnostic"), "g_sigma": 0.0,
        "imported_from": {"file": path, "format": "official PointAD train.py (prompt_learner state dict)"},
    })
    ckpt.save_checkpoint(cfg.out, model.learner.tensors(), config)
    return config


def run_import_checkpoint(cfg: ImportCheckpointConfig) -> int:
    """CLI runner of ``pad import-checkpoint``."""
    config = import_checkpoint(cfg)
    print(f"pad import-checkpoint: wrote {cfg.out} (PointAD, object-agnostic prompts of {config['prompt_length']} "
          f"tokens, {config['n_deep']} deep prompts; features {config['feature_tag']}; left out when scoring: "
          f"{', '.join(config['training_classes'])})")
    return 0
