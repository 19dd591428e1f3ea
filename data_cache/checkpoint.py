"""Checkpoints of ``pad train``: ``<run>/prompts.safetensors`` + ``<run>/config.json``.

- ``prompts.safetensors``: the learnable prompt tensors only (float32), named by the trainer
  (``render.ctx`` (2, E, W), ``render.deep`` (n_deep, dl, W), ``geometry.*`` for PointAD+).
  Its header metadata holds a copy of the configuration (``pad_config``, JSON).
- ``config.json``: that configuration, readable (see :data:`REQUIRED` for the fields).
- ``train_state.safetensors`` (for ``--resume`` only): optimizer moments and RNG state as
  tensors, the epoch in its metadata; the previous epoch's is kept as ``train_state.prev.safetensors``
  so that a run killed between writing the new state and ``config.json`` still resumes.

Every file is written to a temporary file in the same directory and moved into place with
``os.replace``, state first and ``config.json`` last, so a reader sees either the previous
complete epoch or the new one. Loading never unpickles (safetensors + JSON only). A
``config.json`` that differs from the copy saved with the prompts (edited by hand, or from
another run), a missing field, a value of the wrong type, or a tensor whose shape differs from
what the configuration implies is refused with a :class:`PadError`.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from data_cache.errors import PadError

SCHEMA = 1
PROMPTS_FILE = "prompts.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.safetensors"
PREV_STATE_FILE = "train_state.prev.safetensors"  # the previous epoch's state, until config.json moves on
META_KEY = "pad_config"
MAX_CONTEXT = 77  # tokens of a CLIP text context: no prompt or text depth can exceed it

# field: (type(s), check or None). The trainer may add more fields; these must be present.
REQUIRED: dict[str, tuple[Any, Any]] = {
    "pad_checkpoint": (int, lambda v: v == SCHEMA),
    "model": (str, lambda v: v in ("pointad", "pointad+")),
    "prompt_style": (str, lambda v: v in ("agnostic", "coop")),
    # bounded by the text context (77 tokens in every CLIP): refused before any tensor is built
    "prompt_length": (int, lambda v: 1 <= v <= MAX_CONTEXT),
    "deep_depth": (int, lambda v: 0 <= v <= MAX_CONTEXT),
    "deep_length": (int, lambda v: 0 <= v <= MAX_CONTEXT),
    "n_deep": (int, lambda v: v >= 0),
    "feature_tag": (str, None),
    "backbone": (str, None),
    "pretrained": (str, None),
    "backbone_seed": (int, None),
    "text_width": (int, lambda v: v >= 1),
    "text_depth": (int, lambda v: v >= 1),
    "embed_dim": (int, lambda v: v >= 1),
    "training_classes": (list, lambda v: len(v) > 0 and all(isinstance(c, str) for c in v)),
    "epochs": (int, lambda v: v >= 0),
    "epochs_completed": (int, lambda v: v >= 0),
    "seed": (int, None),
    "tau": ((int, float), lambda v: v > 0),
    "render_fingerprint": (str, None),
    "versions": (dict, None),
}


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``config`` (validated dict) and ``tensors`` ({name: float32 tensor})."""
    path: str
    config: dict
    tensors: dict = field(default_factory=dict)


def versions() -> dict:
    """Versions of pad, torch and open_clip (for config.json)."""
    out = {}
    try:
        from importlib.metadata import version
        out["pad"] = version("pad")
    except Exception:
        out["pad"] = "unknown"
    try:
        import torch
        out["torch"] = torch.__version__
    except Exception:  # pragma: no cover
        out["torch"] = "unknown"
    try:
        import open_clip
        out["open_clip"] = open_clip.__version__
    except Exception:  # pragma: no cover
        out["open_clip"] = "unknown"
    return out


def exists(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a checkpoint (both files present)."""
    return all(os.path.isfile(os.path.join(run_dir, f)) for f in (PROMPTS_FILE, CONFIG_FILE))


# ---------------------------------------------------------------------------- writing
def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory, flushed to
    disk, then ``os.replace``; an existing file is replaced whole or left as it was (the
    temporary file removed on any failure, which is raised)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _canonical(config: dict) -> str:
    try:
        return json.dumps(config, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint config is not plain JSON: {exc}") from None


def _tensor_bytes(tensors: dict, metadata: dict[str, str]) -> bytes:
    import torch
    from safetensors.torch import save
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    for k, v in clean.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{k}: not a tensor")
    return save(clean, metadata=metadata)


def save_checkpoint(run_dir: str, tensors: dict, config: dict, train_state: dict | None = None,
                    state_meta: dict | None = None) -> None:
    """Write a checkpoint atomically (state, then prompts, then config.json).

    tensors: {name: tensor} learnable prompts (saved as given, on the CPU).
    config: JSON-ready dict with at least the :data:`REQUIRED` fields (``pad_checkpoint`` is set here).
    train_state: optional {name: tensor} for ``--resume`` (optimizer moments, RNG state), with
    ``state_meta`` (JSON-ready dict) stored in its header.
    """
    os.makedirs(run_dir, exist_ok=True)
    config = dict(config, pad_checkpoint=SCHEMA)
    _validate(config, os.path.join(run_dir, CONFIG_FILE))
    text = _canonical(config)
    if train_state is not None:
        meta = {"pad_state": _canonical(dict(state_meta or {}, epochs_completed=config["epochs_completed"]))}
        state_path = os.path.join(run_dir, STATE_FILE)
        if os.path.isfile(state_path):  # killed before config.json is replaced: resume from this one
            os.replace(state_path, os.path.join(run_dir, PREV_STATE_FILE))
        atomic_write(state_path, _tensor_bytes(train_state, meta))
    atomic_write(os.path.join(run_dir, PROMPTS_FILE), _tensor_bytes(tensors, {META_KEY: text}))
    atomic_write(os.path.join(run_dir, CONFIG_FILE),
                  (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------------------- reading
def _validate(config: Any, path: str) -> dict:
    if not isinstance(config, dict):
        raise PadError("config.json is not a JSON object", path)
    for name, (types, check) in REQUIRED.items():
        if name not in config:
            raise PadError(f"config.json lacks the field '{name}' (not a pad checkpoint, or edited)", path)
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise PadError(f"config.json field '{name}' has the wrong type ({type(value).__name__})", path)
        if check is not None and not check(value):
            raise PadError(f"config.json field '{name}' has an invalid value {json.dumps(value)[:60]}", path)
    return config


def _read_safetensors(path: str, meta_key: str) -> tuple[dict, dict]:
    """({name: tensor}, metadata) of a safetensors file; PadError when unreadable."""
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt", device="cpu") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except FileNotFoundError:
        raise PadError("missing; the run directory is incomplete (run 'pad train')", path) from None
    except Exception as exc:
        raise PadError(f"not a readable safetensors file ({type(exc).__name__}: "
                       f"{' '.join(str(exc).split())[:100]})", path) from None
    if meta_key not in meta:
        raise PadError(f"not written by pad (no '{meta_key}' in its header)", path)
    return tensors, meta


def _first_difference(a: dict, b: dict) -> str:
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<missing>") != b.get(key, "<missing>"):
            return key
    return "?"


def load_config(run_dir: str) -> dict:
    """The validated config.json of a run (without reading the tensors)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isdir(run_dir):
        raise PadError("no such run directory (run 'pad train' first)", run_dir)
    try:
        with open(path, "rb") as fh:
            config = json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        raise PadError("no config.json: not a pad run directory (run 'pad train' first)", run_dir) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PadError(f"config.json is not valid JSON ({' '.join(str(exc).split())[:80]})", path) from None
    return _validate(config, path)


def load_checkpoint(run_dir: str, expected_shapes: dict[str, tuple[int, ...]] | None = None) -> Checkpoint:
    """Load and check a checkpoint.

    expected_shapes: {name: shape} the configuration implies (the trainer computes it); when
    given, missing/extra tensors and wrong shapes are refused. Every tensor must be floating
    point and finite. Returns tensors as float32.
    """
    import torch
    config = load_config(run_dir)
    path = os.path.join(run_dir, PROMPTS_FILE)
    tensors, meta = _read_safetensors(path, META_KEY)
    try:
        saved = json.loads(meta[META_KEY])
    except json.JSONDecodeError:
        raise PadError("the configuration stored with the prompts is damaged", path) from None
    if saved != config:
        raise PadError(f"config.json does not match the configuration saved with the prompts (field "
                       f"'{_first_difference(saved, config)}' differs): it was edited or comes from another run",
                       os.path.join(run_dir, CONFIG_FILE))
    for name, value in tensors.items():
        if not torch.is_floating_point(value):
            raise PadError(f"prompt tensor '{name}' is not floating point ({value.dtype})", path)
        if not bool(torch.isfinite(value).all()):
            raise PadError(f"prompt tensor '{name}' holds NaN or infinite values (training diverged?)", path)
    if expected_shapes is not None:
        check_shapes(tensors, expected_shapes, path)
    return Checkpoint(run_dir, config, {k: v.to(torch.float32) for k, v in tensors.items()})


def check_shapes(tensors: dict, expected: dict[str, tuple[int, ...]], path: str | None = None) -> None:
    """PadError unless ``tensors`` has exactly the ``expected`` names and shapes."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise PadError(f"prompt tensors do not match config.json (missing: {', '.join(missing) or 'none'}; "
                       f"unexpected: {', '.join(extra) or 'none'})", path)
    for name, shape in expected.items():
        found = tuple(int(s) for s in tensors[name].shape)
        if found != tuple(shape):
            raise PadError(f"prompt tensor '{name}' has shape {found}, config.json implies {tuple(shape)}", path)


def load_train_state(run_dir: str, epochs_completed: int | None = None) -> tuple[dict, dict] | None:
    """({name: tensor}, meta dict) of ``train_state.safetensors``, or None when absent.

    With ``epochs_completed`` (the checkpoint's), the state of that epoch: the previous epoch's
    state (``train_state.prev.safetensors``) when a run was killed while saving the next epoch."""
    found = None
    for name in (STATE_FILE, PREV_STATE_FILE):
        path = os.path.join(run_dir, name)
        if not os.path.isfile(path):
            continue
        tensors, meta = _read_safetensors(path, "pad_state")
        try:
            state_meta = json.loads(meta["pad_state"])
        except json.JSONDecodeError:
            raise PadError("the training state header is damaged", path) from None
        if epochs_completed is None or state_meta.get("epochs_completed") == epochs_completed:
            return tensors, state_meta
        found = found or (tensors, state_meta)
    return found

