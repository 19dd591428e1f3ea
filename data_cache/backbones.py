"""The backbone registry and factory (shared by feature extraction and the trainer's text tower).

Families (``Backbone.family``): ``clip`` (open_clip ViTs, this module; CLIP feature stores),
``point-mae`` (:mod:`data_cache.backbones_pointmae`) and ``dino`` (:mod:`data_cache.backbones_dino`),
the two last filling the token stores of :mod:`data_cache.token_store` (``store_kind``) for MuSc-V2's
training-free scoring. :func:`create_backbone` is the one factory over all of them.

One :class:`Backbone` entry per backbone: open_clip model name, default pretrained tag, default
tapped layers, DPAM depth and input size. :func:`create_clip` returns the open_clip model with
its matching tokenizer and normalization (:class:`ClipParts`). Architectures come from open_clip's
JSON configs plus ``data_cache/model_configs/`` (``pad-tiny``: a narrow 6-block ViT with the
paper's 336 px input and 24×24 grid, random weights only, for tests and timing).

Weights (``pretrained``):
- an open_clip tag (``openai``, ``laion2b_s34b_b88k``, ...): taken from the local caches only when
  present (Hugging Face hub cache, ``~/.cache/clip``, the directory named by ``$PAD_CLIP_WEIGHTS``),
  downloaded otherwise unless ``HF_HUB_OFFLINE=1`` / ``PAD_OFFLINE=1``;
- a local checkpoint file (``.safetensors``, ``.bin``/``.pt`` state dict, or an OpenAI TorchScript archive);
- ``random``: seeded random initialization (same seed, same weights);
- ``auto`` (or None): the entry's default (:func:`default_pretrained`: ``openai`` for the CLIP
  backbones, ``random`` for pad-tiny, which has no other).

Layer and DPAM numbers follow the reference 24-block ViT-L-14-336 (:func:`resolve_layers`,
:func:`resolve_dpam` scale them to other depths).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import socket
import threading
import zipfile
from dataclasses import dataclass
from typing import Any, Callable

from data_cache.errors import PadError

REFERENCE_BLOCKS = 24  # depth of ViT-L-14-336, the paper's backbone; layer/DPAM numbers are on this scale
MODEL_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_configs")
WEIGHTS_ENV = "PAD_CLIP_WEIGHTS"
OFFLINE_ENVS = ("PAD_OFFLINE", "HF_HUB_OFFLINE")
CHECKPOINT_EXTS = (".safetensors", ".bin", ".pt", ".pth")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Backbone:
    """One registry entry. ``layers``/``dpam_layers`` are on the 24-block reference scale."""
    name: str                       # pad name (also the open_clip model name unless ``open_clip_name``)
    pretrained: str                 # default weights: open_clip tag or 'random'
    layers: str = "24"              # default tapped layers (comma-separated, 1-based, reference scale)
    dpam_layers: int = 20           # default DPAM depth (reference scale; 0 = off)
    image_size: int = 336           # model input side in pixels
    random_only: bool = False       # no pretrained weights exist (pad-tiny)
    open_clip_name: str | None = None
    description: str = ""
    family: str = "clip"            # clip (open_clip, CLIP feature store), point-mae or dino (token stores)
    store_kind: str = "clip"        # the feature store it fills: clip, point-tokens or image-tokens

    @property
    def model_name(self) -> str:
        return self.open_clip_name or self.name


REGISTRY: dict[str, Backbone] = {b.name: b for b in (
    Backbone("pad-tiny", "random", image_size=336, random_only=True,
             description="6 narrow vision blocks, 336 px, 24x24 grid, random weights: tests and timing"),
    Backbone("ViT-B-16", "openai", image_size=224, description="CLIP ViT-B/16, 224 px, 14x14 grid"),
    Backbone("ViT-L-14-336", "openai", image_size=336,
             description="CLIP ViT-L/14 @ 336 px, 24x24 grid (the paper's backbone)"),
    Backbone("point-mae", "random", layers="4,8,12", dpam_layers=0, image_size=0, family="point-mae",
             store_kind="point-tokens",
             description="MuSc-V2's point branch: Point-MAE on 1024 groups of 128 points, blocks 4, 8, 12 "
                         "(data_cache.backbones_pointmae); weights: random or Point-MAE's pretrain checkpoint"),
    Backbone("dino-vitb8", "random", layers="4,8,12", dpam_layers=0, image_size=224, family="dino",
             store_kind="image-tokens",
             description="MuSc-V2's RGB branch: DINO ViT-B/8 at 224 px, blocks 4, 8, 12 (data_cache.backbones_dino); "
                         "weights: random or dino_vitbase8_pretrain.pth"),
)}
FAMILIES = ("clip", "point-mae", "dino")
DEFAULT_BACKBONE = "ViT-L-14-336"


@dataclass
class ClipParts:
    """What :func:`create_clip` returns: matched model, tokenizer and preprocessing.

    ``model`` is an ``open_clip.CLIP`` in eval mode with ``requires_grad`` False everywhere
    (``model.visual`` is None when created with ``need_visual=False``). ``mean``/``std`` are the
    per-channel RGB normalization for images in [0, 1]; ``grid`` is the patch grid side G
    (G*G patch tokens); ``dtype`` the compute dtype of the weights.
    """
    name: str
    pretrained: str
    model: Any
    tokenizer: Callable
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    grid: int
    embed_dim: int
    n_vision_blocks: int
    n_text_blocks: int
    device: str
    precision: str
    weights_path: str | None = None

    @property
    def dtype(self):
        import torch
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]


# --------------------------------------------------------------------------- registry
_CONFIGS_ADDED = False


def _register_configs() -> None:
    """Add ``data_cache/model_configs`` to open_clip's config registry (once)."""
    global _CONFIGS_ADDED
    if not _CONFIGS_ADDED:
        import open_clip
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _CONFIGS_ADDED = True


def list_backbones(family: str | None = None) -> list[str]:
    """Names of the registry entries, of ``family`` when given (any other open_clip ViT name is
    accepted too, as a CLIP backbone)."""
    return [n for n, b in REGISTRY.items() if family is None or b.family == family]


def family_of(name: str) -> str:
    """The family of a backbone name (``clip`` for any open_clip name outside the registry)."""
    return REGISTRY[name].family if name in REGISTRY else "clip"


def create_backbone(name: str, pretrained: str | None = None, *, seed: int = 0, device: str = "cpu",
                    precision: str = "fp32"):
    """The one factory: a CLIP backbone (:func:`create_clip`, returns :class:`ClipParts`), Point-MAE
    (:func:`data_cache.backbones_pointmae.load_point_mae`) or DINO ViT-B/8
    (:func:`data_cache.backbones_dino.load_dino`) — the two last as frozen ``nn.Module`` in eval
    mode on ``device``. ``pretrained`` None/``auto``: the entry's default; ``random``: seeded."""
    entry = get_backbone(name)
    if entry.family == "clip":
        return create_clip(name, pretrained, seed=seed, device=device, precision=precision)
    pretrained = _resolve(entry, pretrained)
    if entry.family == "point-mae":
        from data_cache.backbones_pointmae import load_point_mae
        model = load_point_mae(pretrained, seed)
    else:
        from data_cache.backbones_dino import load_dino
        model = load_dino(pretrained, seed)
    return model.to(_device(device))


def get_backbone(name: str) -> Backbone:
    """The registry entry for ``name``, or an entry derived from open_clip's config of that name.

    :class:`PadError` (listing the choices) for unknown names and for non-ViT open_clip models.
    """
    if name in REGISTRY:
        return REGISTRY[name]
    _register_configs()
    import open_clip
    cfg = open_clip.get_model_config(name)
    choices = ", ".join(REGISTRY)
    if cfg is None:
        raise PadError(f"unknown backbone '{name}' (choices: {choices}, or any open_clip ViT name, "
                       "see open_clip.list_models())")
    vision = cfg.get("vision_cfg", {})
    if ("timm_model_name" in vision or isinstance(vision.get("layers"), (list, tuple))
            or "hf_model_name" in cfg.get("text_cfg", {}) or cfg.get("custom_text")
            or "multimodal_cfg" in cfg or vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok"):
        raise PadError(f"backbone '{name}' is not a plain open_clip CLIP ViT with a class token "
                       f"(choices: {choices}, or an open_clip ViT such as ViT-B-32, ViT-L-14)")
    size = vision.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    tags = open_clip.list_pretrained_tags_by_model(name)
    default = "openai" if "openai" in tags else (tags[0] if tags else "random")
    return Backbone(name, default, image_size=int(size), random_only=not tags,
                    description="open_clip model")


def resolve_layers(spec: str | Any, n_blocks: int) -> list[int]:
    """Blocks to tap, 1-based, for a backbone of ``n_blocks`` blocks.

    ``spec`` ("24", "6,12,18,24" or a sequence of ints) counts blocks on the 24-block reference
    scale (ViT-L-14-336); block ``l`` maps to ``ceil(l * n_blocks / 24)``, duplicates removed,
    sorted. So "24" is always the last block; "6,12,18,24" gives [3, 6, 9, 12] on 12 blocks and
    [2, 3, 5, 6] on 6 blocks; on a 24-block model the numbers are taken as they are.
    """
    values = _ints(spec, "layers")
    if not values:
        raise PadError("no layers given (e.g. --layers 24 or --layers 6,12,18,24)")
    bad = [v for v in values if not 1 <= v <= REFERENCE_BLOCKS]
    if bad:
        raise PadError(f"layer {bad[0]} out of range: layers are 1..{REFERENCE_BLOCKS} on the reference "
                       f"24-block scale (scaled to the backbone's {n_blocks} blocks)")
    return sorted({max(1, math.ceil(v * n_blocks / REFERENCE_BLOCKS)) for v in values})


def resolve_dpam(dpam_layers: int, n_blocks: int) -> int:
    """Number of last blocks rewired by DPAM for a backbone of ``n_blocks`` blocks.

    Reference: ``DPAM_layer=20`` on ViT-L's 24 blocks rewires the last 19 (``dpam_layers - 1``);
    other depths scale that count proportionally, rounding half up: 20 -> 10 of 12 blocks,
    5 of 6 blocks. 0 (or 1) disables DPAM. At most every block.
    """
    dpam_layers = int(dpam_layers)
    if dpam_layers < 0 or dpam_layers > REFERENCE_BLOCKS + 1:
        raise PadError(f"--dpam-layers {dpam_layers} out of range 0..{REFERENCE_BLOCKS + 1} "
                       "(reference scale: 20 rewires the last 19 of 24 blocks)")
    rewired = max(0, dpam_layers - 1)
    return min(n_blocks, int(math.floor(rewired * n_blocks / REFERENCE_BLOCKS + 0.5)))


def _ints(spec, what: str) -> list[int]:
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
    else:
        parts = list(spec)
    try:
        return [int(p) for p in parts]
    except (TypeError, ValueError):
        raise PadError(f"bad {what} '{spec}': expected comma-separated integers") from None


# --------------------------------------------------------------------------- weights
def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENVS)


def _looks_like_path(pretrained: str) -> bool:
    return os.sep in pretrained or "/" in pretrained or pretrained.lower().endswith(CHECKPOINT_EXTS) \
        or pretrained.startswith("~")


def _tag_cfg(model_name: str, tag: str) -> dict:
    import open_clip
    return dict(open_clip.get_pretrained_cfg(model_name, tag) or {})


def _hf_candidates(cfg: dict) -> list[tuple[str, str]]:
    """(repo_id, filename) pairs under which open_clip stores a tag in the Hugging Face cache."""
    hub = cfg.get("hf_hub", "")
    if not hub:
        return []
    repo, filename = os.path.split(hub)
    if not filename:
        return [(repo, "open_clip_model.safetensors"), (repo, "open_clip_pytorch_model.bin")]
    out = [(repo, filename)]
    if filename.endswith((".bin", ".pth")):
        out.insert(0, (repo, filename[:-4] + ".safetensors"))
    return out


def _env_dir_candidates(model_name: str, tag: str, cfg: dict) -> list[str]:
    """Files looked for in ``$PAD_CLIP_WEIGHTS``: ``<model>_<tag>.<ext>``, ``<model>-<tag>.<ext>`` and
    the file name of the tag's download URL (e.g. ``ViT-L-14-336px.pt``)."""
    root = os.environ.get(WEIGHTS_ENV, "")
    if not root:
        return []
    root = os.path.expanduser(root)
    names = [f"{model_name}{sep}{tag}{ext}" for sep in ("_", "-") for ext in CHECKPOINT_EXTS]
    if cfg.get("url"):
        names.append(os.path.basename(cfg["url"]))
    return [os.path.join(root, n) for n in names]


def _cached_weights(model_name: str, tag: str) -> tuple[str | None, list[str]]:
    """(local file holding the tag's weights or None, the places looked in). Never uses the network."""
    cfg = _tag_cfg(model_name, tag)
    looked: list[str] = []
    for path in _env_dir_candidates(model_name, tag, cfg):
        looked.append(path)
        if os.path.isfile(path):
            return path, looked
    if not cfg:
        return None, looked
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with open_clip
        try_to_load_from_cache = None
    if try_to_load_from_cache is not None:
        for repo, filename in _hf_candidates(cfg):
            looked.append(f"hf-hub cache {repo}/{filename}")
            try:
                found = try_to_load_from_cache(repo, filename)
            except Exception:
                found = None
            if isinstance(found, str) and os.path.isfile(found):
                return found, looked
    if cfg.get("url"):
        path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        looked.append(path)
        if os.path.isfile(path):
            return path, looked
    return None, looked


def default_pretrained(name: str) -> str:
    """The weights ``--pretrained auto`` stands for: the registry entry's default (``openai`` for the
    CLIP backbones, ``random`` for pad-tiny, the first tag of any other open_clip model)."""
    return get_backbone(name).pretrained


def _resolve(entry: Backbone, pretrained: str | None) -> str:
    value = (pretrained or "").strip()
    return entry.pretrained if value in ("", "auto") else value


def weights_available(name: str, pretrained: str | None = None) -> bool:
    """Whether ``create_clip(name, pretrained)`` can get its weights without the network (fast, no I/O
    beyond a few ``stat`` calls). ``pretrained`` None or ``auto`` means the entry's default."""
    try:
        entry = get_backbone(name)
    except PadError:
        return False
    pretrained = _resolve(entry, pretrained)
    if pretrained == "random":
        return True
    if _looks_like_path(pretrained) or os.path.isfile(pretrained):
        return os.path.isfile(os.path.expanduser(pretrained))
    if entry.random_only:
        return False
    return _cached_weights(entry.model_name, pretrained)[0] is not None


def _how_to_supply(name: str, tag: str) -> str:
    """The two ways out when weights are missing: where to put the real ones, or the tiny backbone."""
    try:
        url = _tag_cfg(name, tag).get("url", "")
    except Exception:  # an unknown model name: no download name to offer
        url = ""
    names = [f"{name}_{tag}.safetensors"] + ([os.path.basename(url)] if url else [])
    root = os.environ.get(WEIGHTS_ENV, "").strip()
    where = f"${WEIGHTS_ENV} ({root})" if root else f"a directory named by ${WEIGHTS_ENV} (not set now)"
    return (f"put the real weights as {' or '.join(names)} in {where}, or pass --pretrained PATH (a checkpoint "
            "file), or run once online to fill open_clip's cache; for a quick run without them use "
            "--backbone pad-tiny (random weights)")


def _reachable(cfg: dict, timeout: float = 3.0) -> str | None:
    """None when the download host answers, else why not (so an offline machine fails in seconds,
    not after the hub client's minute of retries)."""
    from urllib.parse import urlparse
    from open_clip.pretrained import has_hf_hub
    host = "huggingface.co" if cfg.get("hf_hub") and has_hf_hub() else urlparse(cfg.get("url", "")).hostname
    if not host:
        return "no download location"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # through a proxy: let the download itself decide
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        return f"cannot reach {host}: {exc.strerror or exc}"
    return None


def _download(model_name: str, tag: str, cfg: dict) -> str:
    import open_clip
    problem = _reachable(cfg)
    if problem:
        raise ConnectionError(problem)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        path = open_clip.download_pretrained(cfg)
    finally:
        socket.setdefaulttimeout(old)
    if not path or not os.path.isfile(path):
        raise FileNotFoundError("nothing downloaded")
    return path


def locate_weights(name: str, pretrained: str) -> str | None:
    """Local file of the weights (None for 'random'), downloading a tag when online.

    :class:`PadError` with one line saying what was looked for and how to supply it.
    """
    entry = get_backbone(name)
    pretrained = _resolve(entry, pretrained)
    if pretrained == "random":
        return None
    if _looks_like_path(pretrained) or os.path.isfile(pretrained):
        path = os.path.expanduser(pretrained)
        if not os.path.isfile(path):
            raise PadError(f"no weights file {path} for backbone '{name}'; " + _how_to_supply(name, entry.pretrained))
        return path
    if entry.random_only:
        raise PadError(f"backbone '{name}' has no pretrained weights '{pretrained}', only random ones (leave "
                       "--pretrained out, or use --pretrained random or a checkpoint file)")
    model_name = entry.model_name
    cfg = _tag_cfg(model_name, pretrained)
    found, looked = _cached_weights(model_name, pretrained)
    if found:
        return found
    import open_clip
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise PadError(f"unknown weights '{pretrained}' for backbone '{name}' and no such file "
                       f"(tags: {', '.join(tags) or 'none'}; or a checkpoint PATH, or random)")
    reason = "offline (HF_HUB_OFFLINE/PAD_OFFLINE set)"
    if not _offline():
        try:
            return _download(model_name, pretrained, cfg)
        except Exception as exc:  # network errors come in many types
            reason = "download failed: " + " ".join(str(exc).split())[:100]
    raise PadError(f"weights '{pretrained}' for backbone '{name}' are not available ({reason}; looked in "
                   f"{'; '.join(looked)}); " + _how_to_supply(model_name, pretrained))


def _quick_gelu_for(model_name: str, pretrained: str, path: str | None) -> bool:
    """Whether the weights were trained with QuickGELU (OpenAI's): from the tag's config, from a
    file named like a tag's download, or from the file being an OpenAI TorchScript archive."""
    import open_clip
    if model_name.endswith("-quickgelu"):
        return False  # the config already says so
    if path is None:
        return False
    cfg = _tag_cfg(model_name, pretrained) if not _looks_like_path(pretrained) else {}
    if cfg:
        return bool(cfg.get("quick_gelu", False))
    base = os.path.basename(path)
    for tag in open_clip.list_pretrained_tags_by_model(model_name):
        tcfg = _tag_cfg(model_name, tag)
        names = {os.path.basename(tcfg.get("url", "")), f"{model_name}_{tag}", f"{model_name}-{tag}"}
        if base in names or os.path.splitext(base)[0] in names:
            return bool(tcfg.get("quick_gelu", False))
    return _is_torchscript(path)


def _is_torchscript(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def is_vision_key(key: str) -> bool:
    """Whether a state-dict key belongs to the vision tower (``visual.*``, open_clip and OpenAI layouts)."""
    return key.startswith("visual.")


def _unwrap(sd) -> dict:
    """The state dict inside a checkpoint object (``{"state_dict": ...}`` wrappers, ``module.`` prefixes)."""
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if isinstance(sd, dict) and sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _load_state_dict(path: str, text_only: bool = False) -> dict:
    """The state dict of a checkpoint file, every tensor on the CPU. ``text_only``: only the keys
    outside the vision tower are read into memory (safetensors: only those tensors are read;
    a zip-format torch file: memory-mapped, the vision tensors never touched; an OpenAI
    TorchScript archive: ``torch.jit.load`` reads the whole archive, the vision tensors are
    released before this returns)."""
    import torch
    keep = (lambda k: not is_vision_key(k)) if text_only else (lambda k: True)
    if _is_torchscript(path):  # OpenAI's original .pt archives
        archive = torch.jit.load(path, map_location="cpu")
        sd = {k: v for k, v in archive.state_dict().items() if keep(k)}
        del archive  # the vision tensors go with it: only the kept tensors hold their storages
        for key in ("input_resolution", "context_length", "vocab_size"):
            sd.pop(key, None)
        return sd
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(path, framework="pt", device="cpu") as fh:
            names = [k[len("module."):] if k.startswith("module.") else k for k in fh.keys()]
            return {name: fh.get_tensor(key) for key, name in zip(fh.keys(), names) if keep(name)}
    if text_only and zipfile.is_zipfile(path):
        try:  # memory-mapped: the vision tensors are never read
            sd = _unwrap(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        except (RuntimeError, ValueError):
            sd = None
        if isinstance(sd, dict):
            return {k: v for k, v in sd.items() if keep(k)}
    from open_clip.factory import load_state_dict
    sd = load_state_dict(path, device="cpu", weights_only=True)
    return {k: v for k, v in sd.items() if keep(k)} if text_only else sd


def _load_weights(model, path: str, name: str) -> None:
    """Load a checkpoint into ``model`` (strict); :class:`PadError` for unreadable or mismatched files.
    A text-only model (``model.visual`` None) reads the text tower's tensors only."""
    from open_clip.factory import resize_pos_embed, resize_text_pos_embed
    from open_clip.convert import convert_state_dict
    text_only = getattr(model, "visual", None) is None
    try:
        sd = _load_state_dict(path, text_only=text_only)
        if not isinstance(sd, dict) or not sd:
            raise ValueError("no state dict inside")
    except Exception as exc:
        raise PadError(f"not a readable checkpoint ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); "
                       f"expected an open_clip/OpenAI CLIP state dict for '{name}' (.safetensors, .bin, .pt)",
                       path) from None
    try:
        sd = convert_state_dict(model, sd)
        if "logit_scale" in sd and model.logit_scale.ndim != sd["logit_scale"].ndim:
            sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
        if getattr(model, "logit_bias", None) is None:
            sd.pop("logit_bias", None)
        if not text_only:
            resize_pos_embed(sd, model)
        resize_text_pos_embed(sd, model)
        model.load_state_dict(sd, strict=True)
    except Exception as exc:
        msg = " ".join(str(exc).split())
        raise PadError(f"checkpoint does not fit backbone '{name}' ({msg[:200]}); pass the matching --backbone "
                       "or the right --pretrained file", path) from None


def _device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PadError("--device cuda asked for but torch sees no CUDA device (use --device cpu or auto)")
    return device


_BUILD_LOCK = threading.Lock()  # _text_only_clip swaps an open_clip function for the length of one build


def _random_replay_mode():
    """A torch dispatch mode under which every random op on ``meta`` tensors also runs once on CPU
    tensors of the same sizes, strides and dtypes, so that the CPU generator advances exactly as if
    those tensors lived on the CPU. Building a module on ``meta`` under it allocates no weight and
    leaves the RNG where a real build would. The CPU stand-ins are views of one scratch buffer,
    grown to the largest tensor (many freed blocks of a few MB would stay in the C heap)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten, tree_map

    meta = torch.device("meta")

    def nbytes(t) -> int:
        span = 1 + sum((n - 1) * st for n, st in zip(t.size(), t.stride())) if t.numel() else 0
        return -(-span * t.element_size() // 64) * 64  # each stand-in starts 64-byte aligned

    class RandomReplay(TorchDispatchMode):
        buffer = None

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if torch.Tag.nondeterministic_seeded in func.tags:
                metas = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.is_meta]
                total = sum(nbytes(t) for t in metas)
                if self.buffer is None or self.buffer.numel() < total:
                    self.buffer = None
                    self.buffer = torch.empty(max(total, 1 << 20), dtype=torch.uint8)
                offset = 0

                def stand_in(value):
                    nonlocal offset
                    if isinstance(value, torch.device) and value == meta:
                        return torch.device("cpu")
                    if not (isinstance(value, torch.Tensor) and value.is_meta):
                        return value
                    size = nbytes(value)
                    flat = self.buffer[offset:offset + size].view(value.dtype)
                    offset += size
                    return flat.as_strided(value.size(), value.stride())

                cpu_args, cpu_kwargs = tree_map(stand_in, (args, kwargs))
                func(*cpu_args, **cpu_kwargs)
            return func(*args, **kwargs)

        def __exit__(self, *exc):
            self.buffer = None
            return super().__exit__(*exc)

    return RandomReplay()


def _text_only_clip(model_name: str, quick_gelu: bool, same_random: bool = True):
    """An ``open_clip.CLIP`` of ``model_name`` whose vision tower is never materialized.

    open_clip's own ``CLIP.__init__`` runs with the vision tower built on the ``meta`` device: no
    vision weight is allocated. With ``same_random`` (random weights), it is built under
    :func:`_random_replay_mode`, so the text tower (built next, on the CPU) draws the same random
    numbers as in a full build: seeded random weights equal ``open_clip.create_model``'s. Without
    (weights are loaded next) the vision initialization is skipped. Returns (model with ``visual``
    None, the meta vision tower: shapes and attributes only).
    """
    import copy
    import torch
    import open_clip
    import open_clip.model as oc_model

    cfg = copy.deepcopy(open_clip.get_model_config(model_name))
    if cfg is None:
        raise PadError(f"unknown backbone '{model_name}'")
    if quick_gelu:
        cfg["quick_gelu"] = True
    if cfg.pop("custom_text", False) or "multimodal_cfg" in cfg:
        raise PadError(f"backbone '{model_name}' is not a plain open_clip CLIP ViT")
    build_vision = oc_model._build_vision_tower

    def vision_on_meta(*args, **kwargs):
        with torch.device("meta"), (_random_replay_mode() if same_random else contextlib.nullcontext()):
            return build_vision(*args, **kwargs)

    with _BUILD_LOCK:
        oc_model._build_vision_tower = vision_on_meta
        try:
            model = open_clip.CLIP(**cfg, cast_dtype=None)
        finally:
            oc_model._build_vision_tower = build_vision
    visual, model.visual = model.visual, None
    return model, visual


def create_clip(name: str, pretrained: str | None = None, *, seed: int = 0, device: str = "cpu",
                precision: str = "fp32", need_visual: bool = True) -> ClipParts:
    """Build backbone ``name`` with weights ``pretrained`` (None or ``auto``: the entry's default).

    ``pretrained``: an open_clip tag, a checkpoint file, or 'random' (``torch.manual_seed(seed)``
    before creating, in a forked RNG: same seed, same weights, the global RNG untouched).
    ``device``: cpu, cuda or auto. ``precision``: fp32, fp16 or bf16 (open_clip's mixed precision:
    linear/conv weights in low precision, layer norms in fp32). ``need_visual=False`` builds the
    text tower only (``model.visual`` None; the vision tower is never allocated, see
    :func:`_text_only_clip`) and reads only the text tower's tensors from the weights file; its
    text weights are those of the full build, random ones included. Unavailable or unfit weights
    raise :class:`PadError`.
    """
    import torch
    import open_clip

    if precision not in PRECISIONS:
        raise PadError(f"unknown precision '{precision}' (choices: {', '.join(PRECISIONS)})")
    entry = get_backbone(name)
    if entry.family != "clip":
        raise PadError(f"backbone '{name}' is not a CLIP backbone (it fills a {entry.store_kind} store for "
                       f"'pad mutual'; CLIP backbones: {', '.join(list_backbones('clip'))})")
    _register_configs()
    pretrained = _resolve(entry, pretrained)
    device = _device(device)
    path = locate_weights(name, pretrained)
    quick_gelu = _quick_gelu_for(entry.model_name, pretrained, path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": we load weights next
        try:
            if need_visual:
                model = open_clip.create_model(entry.model_name, pretrained=None, precision="fp32", device="cpu",
                                               force_quick_gelu=quick_gelu, pretrained_text=False)
                visual = model.visual
            else:
                model, visual = _text_only_clip(entry.model_name, quick_gelu, same_random=path is None)
        except PadError:
            raise
        except Exception as exc:  # bad config
            raise PadError(f"cannot build backbone '{name}': {' '.join(str(exc).split())[:200]}") from None
        finally:
            logging.disable(logging.NOTSET)
    if not isinstance(model, open_clip.CLIP) or not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise PadError(f"backbone '{name}' is not a plain open_clip CLIP ViT")
    if path is not None:
        _load_weights(model, path, name)
    grid = int(visual.grid_size[0])
    image_size = int(visual.image_size[0])
    n_vision = len(visual.transformer.resblocks)
    output_dim = int(visual.output_dim)
    del visual
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(device)
    if precision != "fp32":
        open_clip.model.convert_weights_to_lp(model, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    cfg = _tag_cfg(entry.model_name, pretrained) if path is not None and not _looks_like_path(pretrained) else {}
    mean = tuple(float(v) for v in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", open_clip.OPENAI_DATASET_STD))
    tokenizer = open_clip.get_tokenizer(entry.model_name)
    return ClipParts(name=name, pretrained=pretrained, model=model, tokenizer=tokenizer, mean=mean, std=std,
                     image_size=image_size, grid=grid, embed_dim=int(model.text_projection.shape[1]
                                                                     if model.text_projection is not None
                                                                     else output_dim),
                     n_vision_blocks=n_vision, n_text_blocks=len(model.transformer.resblocks),
                     device=device, precision=precision, weights_path=path)


def backbone_summary(name: str) -> dict:
    """JSON-ready description of an entry (for ``pad info`` / listings)."""
    return dataclasses.asdict(get_backbone(name))
