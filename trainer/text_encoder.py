"""open_clip's frozen text tower, run with learnable prompt embeddings and deep prompts.

The tower is the standard CLIP text transformer of an open_clip model: ``token_embedding``,
``positional_embedding``, ``transformer.resblocks``, ``ln_final``, ``text_projection``, the causal
``attn_mask`` (additive, -inf above the diagonal) and end-of-text pooling at the argmax of the
token ids, exactly as ``open_clip.model.CLIP.encode_text``. Two changes, both from AnomalyCLIP:

- the embeddings of the placeholder tokens 1..E of each prompt are replaced by the learnable
  context vectors (the prompt learner's tensors);
- before text layer i (1-based) for i = 2..1+n_deep, the hidden states of tokens 1..deep_length
  are replaced by that layer's learnable deep prompt.

Every parameter of the tower is frozen (``requires_grad=False``) and the tower stays in eval
mode; gradients flow through it to the prompts only. With the (usual) causal mask the
sequence is cut after the last end-of-text token, which leaves the pooled outputs unchanged
(up to float rounding) and saves most of the work.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from data_cache.errors import PadError
from trainer.prompts import PLACEHOLDER


def _text_parts(clip_model: nn.Module) -> nn.Module:
    """The module holding the text tower's parts (``CLIP`` itself, or ``.text`` for CustomTextCLIP)."""
    if hasattr(clip_model, "token_embedding") and hasattr(clip_model, "transformer"):
        return clip_model
    text = getattr(clip_model, "text", None)
    if text is not None and hasattr(text, "token_embedding") and hasattr(text, "transformer"):
        return text
    raise PadError(f"{type(clip_model).__name__}: only open_clip models with a CLIP text transformer "
                   "are supported (no Hugging Face text towers)")


def _is_plain_block(block: nn.Module) -> bool:
    """Whether ``block`` is open_clip's ``ResidualAttentionBlock`` for self-attention with a
    standard ``nn.MultiheadAttention`` (what :func:`_sequence_first_block` computes)."""
    attn = getattr(block, "attn", None)
    return (type(block).__name__ == "ResidualAttentionBlock" and not hasattr(block, "ln_1_kv")
            and type(attn) is nn.MultiheadAttention and attn._qkv_same_embed_dim
            and attn.bias_k is None and not attn.add_zero_attn
            and all(hasattr(block, n) for n in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2")))


def _sequence_first_block(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """open_clip's ``ResidualAttentionBlock.forward`` on (C, P, W) tokens, contiguous:
    ``x + ls_1(attn(ln_1(x)))``, then ``+ ls_2(mlp(ln_2(·)))``; the attention in eval mode
    (no dropout), without weights, with the additive ``mask``."""
    attn = block.attn
    h = block.ln_1(x)
    a = F.multi_head_attention_forward(
        h, h, h, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, None, None, False,
        0.0, attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False,
        attn_mask=None if mask is None else mask.to(x.dtype))[0]
    x = x + block.ls_1(a)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class FrozenTextTower(nn.Module):
    """The frozen text tower of one open_clip model plus its tokenizer.

    ``width`` (W): token width; ``embed_dim`` (D): output dimension; ``depth``: text blocks;
    ``context_length`` (C): tokens per prompt.
    """

    def __init__(self, clip_model: nn.Module, tokenizer):
        super().__init__()
        parts = _text_parts(clip_model)
        pool = getattr(parts, "text_pool_type", getattr(parts, "pool_type", "argmax"))
        if pool != "argmax" or getattr(parts, "cls_emb", None) is not None:
            raise PadError(f"text pooling '{pool}' is not supported (pad needs CLIP's end-of-text pooling)")
        self.token_embedding = parts.token_embedding
        self.positional_embedding = parts.positional_embedding
        self.transformer = parts.transformer
        self.ln_final = parts.ln_final
        self.text_projection = parts.text_projection
        mask = getattr(parts, "attn_mask", None)
        self.register_buffer("attn_mask", None if mask is None else mask.detach().clone(), persistent=False)
        self.tokenizer = tokenizer
        self.width = int(self.token_embedding.weight.shape[1])
        self.depth = len(self.transformer.resblocks)
        self.context_length = int(self.positional_embedding.shape[0])
        proj = self.text_projection
        self.embed_dim = int(proj.out_features if isinstance(proj, nn.Linear)
                             else (proj.shape[1] if proj is not None else self.width))
        self.causal = mask is not None and bool(torch.equal(
            torch.isneginf(mask), torch.ones_like(mask, dtype=torch.bool).triu(1)))
        self.placeholder_id = int(self.tokenize([PLACEHOLDER])[0, 1])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenTextTower":
        """Always eval: the frozen tower never switches to training behaviour."""
        return super().train(False)

    # ------------------------------------------------------------------ tokens
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """(P, C) int64 token ids (start, tokens, end, zero padding)."""
        ids = self.tokenizer(list(texts))
        if not isinstance(ids, torch.Tensor):
            ids = torch.as_tensor(ids)
        ids = ids.long()
        if ids.shape[1] != self.context_length:
            raise PadError(f"tokenizer context {ids.shape[1]} differs from the text tower's {self.context_length}")
        return ids.to(self.positional_embedding.device)

    def prompt_tokens(self, texts: Sequence[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (P, C) int64 and frozen token embeddings (P, C, W) of prompts whose tokens
        1..length are placeholders (checked: each placeholder must be exactly one token)."""
        ids = self.tokenize(texts)
        if ids.shape[1] < length + 3 or not bool((ids[:, 1:1 + length] == self.placeholder_id).all()):
            raise PadError(f"prompt does not fit the text tower's context of {self.context_length} tokens "
                           f"or its placeholders are not single tokens: {texts[0]!r}")
        if bool((ids[:, -1] != 0).any()):  # the tokenizer truncated it
            raise PadError(f"prompt too long for the text context ({self.context_length} tokens)")
        with torch.no_grad():
            emb = self.token_embedding(ids)
        return ids, emb

    # ------------------------------------------------------------------ forward
    def forward(self, ids: torch.Tensor, token_emb: torch.Tensor, ctx: torch.Tensor,
                deep: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings of P prompts with learnable context and deep prompts.

        ids: (P, C) int64 token ids (for end-of-text pooling).
        token_emb: (P, C, W) frozen token embeddings of the prompts (placeholders included).
        ctx: (P, E, W) learnable context, replacing tokens 1..E.
        deep: (P, n_deep, dl, W) or None; deep[:, i] replaces tokens 1..dl before text layer i+2
        (1-based), n_deep <= depth - 1.
        Returns (P, D) float32, not normalized.
        """
        cast = self.transformer.get_cast_dtype() if hasattr(self.transformer, "get_cast_dtype") else ctx.dtype
        n_ctx = ctx.shape[1]
        eot = ids.argmax(dim=-1)
        # With a causal mask, no token sees the ones after it: the end-of-text outputs are exactly
        # those of the sequence cut after the last end-of-text token (~20 of 77 tokens).
        length = int(eot.max()) + 1 if self.causal else ids.shape[1]
        x = torch.cat([token_emb[:, :1], ctx.to(token_emb.dtype), token_emb[:, 1 + n_ctx:length]], dim=1).to(cast)
        x = x + self.positional_embedding[:length].to(cast)
        n_deep = 0 if deep is None else deep.shape[1]
        if n_deep > self.depth - 1:
            raise ValueError(f"{n_deep} deep prompts for a text tower of depth {self.depth}")
        batch_first = getattr(self.transformer, "batch_first", True)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length].to(cast)
        # The blocks run on (C, P, W) tokens, contiguous: nn.MultiheadAttention built batch-first
        # transposes its input, and the in-projection of that non-contiguous view ran as a batched
        # product with the weight repeated per token, 3x slower than one matrix product.
        x = x.transpose(0, 1).contiguous()
        for i, block in enumerate(self.transformer.resblocks):
            if 1 <= i <= n_deep:
                d = deep[:, i - 1].to(cast).transpose(0, 1)
                x = torch.cat([x[:1], d, x[1 + d.shape[0]:]], dim=0)
            if _is_plain_block(block):
                x = _sequence_first_block(block, x, mask)
            elif batch_first:
                x = block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
            else:  # blocks built for (C, P, W)
                x = block(x, attn_mask=mask)
        x = self.ln_final(x.transpose(0, 1))
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = self.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x.float()

    def encode_plain(self, texts: Sequence[str]) -> torch.Tensor:
        """(P, D) float32 embeddings of plain texts through this path with no substitution
        (equals ``model.encode_text``; used to check the implementation)."""
        ids = self.tokenize(texts)
        with torch.no_grad():
            emb = self.token_embedding(ids)
            return self.forward(ids, emb, emb[:, 1:1])
