"""The dense ViT of one subnet: what an extracted or exported subnet is.

:class:`StandaloneViT` is a plain ``nn.Module`` with contiguous weights for one :class:`Arch`
(per-block heads and MLP widths, head dim fixed by the space). It knows nothing of the supernet
or the sliced ops; :meth:`focusformer_fast.models.supernet.Supernet.extract` fills one with the slices
of the super-weights. :mod:`focusformer_fast.export` saves it as the timm model it converts to
(:func:`focusformer_fast.models.timm_vit.from_standalone`: same outputs, timm's parameter names) and
loads that back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusformer_fast.space import Arch, SearchSpace

LN_EPS = 1e-6
INIT_STD = 0.02
"""Standard deviation of the truncated-normal init of every weight matrix and embedding."""


@dataclass(frozen=True)
class ViTConfig:
    """Everything needed to build a :class:`StandaloneViT`."""

    arch: Arch
    image_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    head_dim: int
    global_pool: str = "cls"
    ln_eps: float = LN_EPS

    @classmethod
    def from_space(cls, space: SearchSpace, arch: Arch, global_pool: str = "cls") -> "ViTConfig":
        """``arch`` on the geometry of ``space`` (image, patch, channels, classes, head dim).

        ``arch`` is not checked against the space's choices: a model of any depth and widths can
        be built (the profiler times chains of ``k`` equal blocks); :meth:`Supernet.extract`
        accepts only the space's archs.
        """
        return cls(arch, space.image_size, space.patch_size, space.in_chans, space.num_classes, space.head_dim,
                   global_pool, LN_EPS)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = self.arch.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ViTConfig":
        d = dict(d)
        d["arch"] = Arch.from_dict(d["arch"])
        return cls(**d)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``[Q; K; V]`` projection: ``[B, N, dim]`` -> ``[B, N, dim]``."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim)
        self.proj = nn.Linear(num_heads * head_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class StandaloneViT(nn.Module):
    """A dense ViT of one :class:`Arch`: ``[B, C, H, W]`` images -> ``[B, num_classes]`` logits.

    Freshly initialized as the supernet is: truncated-normal (std :data:`INIT_STD`) weights,
    position embedding and CLS token; zero biases; unit LayerNorm scales.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        a, e = config.arch, config.arch.embed_dim
        n_tokens = (config.image_size // config.patch_size) ** 2 + 1
        self.patch_embed = nn.Conv2d(config.in_chans, e, config.patch_size, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, e))
        self.blocks = nn.ModuleList(
            Block(e, a.num_heads[i], config.head_dim, a.mlp_hidden(i), config.ln_eps) for i in range(a.depth)
        )
        self.norm = nn.LayerNorm(e, eps=config.ln_eps)
        self.head = nn.Linear(e, config.num_classes)
        self._init_weights()

    @classmethod
    def from_arch(cls, space: SearchSpace, arch: Arch, *, global_pool: str = "cls") -> "StandaloneViT":
        """A freshly initialized model of subnet ``arch`` of ``space``."""
        return cls(ViTConfig.from_space(space, arch, global_pool))

    def no_weight_decay(self) -> set[str]:
        """Parameters timm's ``create_optimizer_v2`` exempts from weight decay (as the supernet's)."""
        return {"cls_token", "pos_embed"}

    @torch.no_grad()
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=INIT_STD)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        nn.init.trunc_normal_(self.cls_token, std=INIT_STD)

    def embed(self, images: Tensor) -> Tensor:
        """Patch + CLS + position embedding: ``[B, C, H, W]`` -> tokens ``[B, N, e]``."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed

    def forward_head(self, x: Tensor) -> Tensor:
        """Final norm, pooling and classifier: tokens ``[B, N, e]`` -> logits ``[B, num_classes]``."""
        x = self.norm(x)
        feat = x[:, 0] if self.config.global_pool == "cls" else x[:, 1:].mean(dim=1)
        return self.head(feat)

    def forward(self, images: Tensor) -> Tensor:
        x = self.embed(images)
        for blk in self.blocks:
            x = blk(x)
        return self.forward_head(x)
