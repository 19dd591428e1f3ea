"""Point-MAE, MuSc-V2's point backbone (the ``point-mae`` registry entry).

The encoder of ``models/backbone/point_transformer.py`` (``PointTransformer``), pad's own code:

- group embedding (mini-PointNet, ``encoder``): per point Conv1d 3→128, BatchNorm, ReLU,
  Conv1d 128→256; max over the group's points, concatenated to every point (512); Conv1d
  512→512, BatchNorm, ReLU, Conv1d 512→384; max over the points → one 384-d token per group;
- position embedding (``pos_embed``): Linear 3→128, GELU, Linear 128→384 of each centre;
- 12 pre-norm transformer blocks (width 384, 6 heads, MLP 1536, qkv without bias), the position
  embedding added to the input of EVERY block; DropPath rates linspace(0, 0.1, 12);
- blocks 3, 7, 11 (0-based) are tapped, each through the final LayerNorm (``norm``).

State-dict keys are the official ones (``encoder.first_conv.0.weight``, ``pos_embed.0.weight``,
``blocks.blocks.3.attn.qkv.weight``, ``norm.weight``, ...), so a Point-MAE checkpoint loads as it
does into the official model.

Modes (:func:`set_point_mae_mode`): ``eval`` (BatchNorm running statistics, no DropPath: what
inference means, deterministic) and ``train`` (what the official code actually runs, since it
never calls ``.eval()``: BatchNorm with each scan's own batch statistics, DropPath drawing whole
residual branches at random — here from a ``torch.Generator`` passed to :meth:`PointMAE.forward`).

Weights (:func:`load_point_mae`): ``random`` (seeded default initialization) or Point-MAE's
pre-training checkpoint as distributed (``pretrain.pth``: a torch zip whose ``base_model`` holds the
state dict, keys prefixed ``module.``, ``MAE_encoder.`` or ``base_model.``), read with
``torch.load(weights_only=True)`` — tensors only, nothing unpickled.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from data_cache.errors import PadError

WIDTH = 384
DEPTH = 12
HEADS = 6
MLP_RATIO = 4
DROP_PATH_RATE = 0.1
TAPPED = (3, 7, 11)          # 0-based blocks whose output (through ``norm``) is returned
MODES = ("eval", "train")
PREFIXES = ("module.", "MAE_encoder.", "base_model.")


class _GroupEncoder(nn.Module):
    """Mini-PointNet: (B, M, K, 3) centred groups -> (B, M, C) tokens."""

    def __init__(self, channels: int = WIDTH):
        super().__init__()
        self.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                        nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                         nn.Conv1d(512, channels, 1))
        self.channels = channels

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        b, m, k, _ = groups.shape
        f = self.first_conv(groups.reshape(b * m, k, 3).transpose(2, 1))          # (BM, 256, K)
        g = f.max(dim=2, keepdim=True).values
        f = self.second_conv(torch.cat([g.expand(-1, -1, k), f], dim=1))          # (BM, C, K)
        return f.max(dim=2).values.reshape(b, m, self.channels)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, dim * MLP_RATIO)
        self.drop_path = float(drop_path)

    def _branch(self, y: torch.Tensor, keep: torch.Tensor | None, generator) -> torch.Tensor:
        """timm's DropPath in training mode: the whole branch of a sample kept (scaled by
        1/keep_prob) or dropped. ``keep`` (B,) bool forces the decisions (replaying a run)."""
        if not self.training or self.drop_path <= 0.0:
            return y
        p = 1.0 - self.drop_path
        if keep is None:
            keep = torch.empty(y.shape[0], dtype=torch.float32).bernoulli_(p, generator=generator).bool()
        scale = keep.to(device=y.device, dtype=y.dtype).reshape(-1, *([1] * (y.ndim - 1))) / p
        return y * scale

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None, generator=None) -> torch.Tensor:
        x = x + self._branch(self.attn(self.norm1(x)), None if keep is None else keep[:, 0], generator)
        return x + self._branch(self.mlp(self.norm2(x)), None if keep is None else keep[:, 1], generator)


class _Blocks(nn.Module):
    """Holds the blocks under ``blocks.blocks.<i>`` (the official key layout)."""

    def __init__(self, dim: int, depth: int, heads: int, rates: list[float]):
        super().__init__()
        self.blocks = nn.ModuleList([_Block(dim, heads, rates[i]) for i in range(depth)])


class PointMAE(nn.Module):
    """The Point-MAE encoder of MuSc-V2 (module docstring). Build with :func:`load_point_mae`."""

    def __init__(self, width: int = WIDTH, depth: int = DEPTH, heads: int = HEADS, tapped=TAPPED,
                 drop_path_rate: float = DROP_PATH_RATE):
        super().__init__()
        self.width = width
        self.tapped = tuple(int(t) for t in tapped)
        self.encoder = _GroupEncoder(width)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, width))
        rates = [float(r) for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = _Blocks(width, depth, heads, rates)
        self.norm = nn.LayerNorm(width)

    @property
    def drop_path_rates(self) -> list[float]:
        return [b.drop_path for b in self.blocks.blocks]

    def forward(self, neighborhood: torch.Tensor, centers: torch.Tensor, generator: torch.Generator | None = None,
                keep: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Tokens of the tapped blocks.

        ``neighborhood`` (B, M, K, 3) float32 group points minus their centre; ``centers``
        (B, M, 3) float32 -> list of ``len(tapped)`` tensors (B, M, width), each through the final
        LayerNorm. In train mode (:func:`set_point_mae_mode`) DropPath draws from ``generator``
        (CPU ``torch.Generator``; None: the global RNG) in block order, attention then MLP, blocks
        with rate 0 drawing nothing; ``keep`` (B, depth, 2) bool replays given decisions instead.
        """
        x = self.encoder(neighborhood)
        pos = self.pos_embed(centers)
        out = []
        for i, block in enumerate(self.blocks.blocks):
            x = block(x + pos, None if keep is None else keep[:, i], generator)
            if i in self.tapped:
                out.append(self.norm(x))
        return out


def set_point_mae_mode(model: PointMAE, mode: str) -> PointMAE:
    """``eval``: running BatchNorm statistics, no DropPath; ``train``: the official inference
    (batch statistics of each forward, DropPath active). Returns the model."""
    if mode not in MODES:
        raise PadError(f"unknown Point-MAE mode '{mode}' (choices: {', '.join(MODES)})")
    model.train(mode == "train")
    return model


def strip_prefixes(sd: dict) -> dict:
    """Point-MAE checkpoint keys without ``module.``, then ``MAE_encoder.`` / ``base_model.``
    (as the official ``load_model_from_ckpt``)."""
    out = {}
    for key, value in sd.items():
        key = key.replace("module.", "")
        for prefix in PREFIXES[1:]:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def read_checkpoint(path: str) -> dict:
    """The encoder state dict of a Point-MAE checkpoint file (tensors only, never unpickled
    objects). :class:`PadError` for an unreadable file, a file holding objects, or one without a
    ``base_model`` dict (a bare state dict is accepted too)."""
    if not os.path.isfile(path):
        raise PadError("no such Point-MAE checkpoint file (--pretrained takes random or a PATH)", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for objects, RuntimeError/EOFError for damage
        text = " ".join(str(exc).split())
        why = "it holds Python objects besides tensors" if "weights_only" in text or "Unsupported" in text \
            else f"unreadable ({type(exc).__name__}: {text[:100]})"
        raise PadError(f"not a Point-MAE checkpoint pad can read safely: {why}; pad reads tensors only "
                       "(torch.load weights_only)", path) from None
    sd = ckpt.get("base_model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PadError("not a Point-MAE checkpoint: expected a 'base_model' state dict of tensors", path)
    return strip_prefixes(sd)


def load_point_mae(pretrained: str, seed: int = 0) -> PointMAE:
    """The Point-MAE encoder in eval mode on the CPU, parameters frozen.

    ``pretrained``: ``random`` (PyTorch's default initialization under ``torch.manual_seed(seed)``
    in a forked RNG: same seed, same weights) or a checkpoint PATH (:func:`read_checkpoint`; every
    encoder tensor must be there with its shape, other keys — the MAE decoder — are ignored).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = PointMAE()
    if pretrained != "random":
        sd = read_checkpoint(os.path.expanduser(pretrained))
        own = model.state_dict()
        missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        if missing or wrong:
            what = f"missing {missing[0]}" if missing else \
                f"{wrong[0]} is {tuple(sd[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}"
            raise PadError(f"checkpoint does not fit Point-MAE ({len(missing)} keys missing, {len(wrong)} of another "
                           f"shape; {what})", pretrained)
        model.load_state_dict({k: sd.get(k, own[k]) for k in own}, strict=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
