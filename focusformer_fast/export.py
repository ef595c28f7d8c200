"""Standalone subnets: extraction from the supernet, and save/load without it.

An exported subnet is a plain ``nn.Module`` (:class:`StandaloneViT`) with contiguous
weights, saved as a directory holding ``model.safetensors`` and ``config.json``.
Loading needs only this module, not the supernet.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .atomic_files import atomic_write, write_json_atomic
from .space import Arch
from .supernet import LN_EPS, Supernet

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


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
    ln_eps: float = 1e-6

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
    """Multi-head self-attention with a fused ``[Q; K; V]`` projection."""

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
    """A dense ViT of one :class:`Arch`: ``[B, C, H, W]`` images -> ``[B, num_classes]`` logits."""

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

    @classmethod
    @torch.no_grad()
    def from_supernet(cls, net: Supernet, arch: Arch) -> "StandaloneViT":
        """Copy the slices of ``net``'s super-weights that ``arch`` uses into a new model."""
        space = net.space
        space.validate(arch)
        cfg = ViTConfig(arch, space.image_size, space.patch_size, space.in_chans, space.num_classes,
                        space.head_dim, net.global_pool, LN_EPS)
        model = cls(cfg).to(device=net.head_weight.device, dtype=net.head_weight.dtype)
        e = arch.embed_dim
        model.patch_embed.weight.copy_(net.patch_weight[:e])
        model.patch_embed.bias.copy_(net.patch_bias[:e])
        model.cls_token.copy_(net.cls_token[:, :, :e])
        model.pos_embed.copy_(net.pos_embed[:, :, :e])
        for i, blk in enumerate(model.blocks):
            sb = net.blocks[i]
            inner, m = arch.num_heads[i] * space.head_dim, arch.mlp_hidden(i)
            inner_max = sb.qkv_weight.shape[0] // 3
            rows = torch.cat([torch.arange(g * inner_max, g * inner_max + inner) for g in range(3)])
            rows = rows.to(sb.qkv_weight.device)
            blk.norm1.weight.copy_(sb.norm1_weight[:e])
            blk.norm1.bias.copy_(sb.norm1_bias[:e])
            blk.attn.qkv.weight.copy_(sb.qkv_weight[rows, :e])
            blk.attn.qkv.bias.copy_(sb.qkv_bias[rows])
            blk.attn.proj.weight.copy_(sb.proj_weight[:e, :inner])
            blk.attn.proj.bias.copy_(sb.proj_bias[:e])
            blk.norm2.weight.copy_(sb.norm2_weight[:e])
            blk.norm2.bias.copy_(sb.norm2_bias[:e])
            blk.fc1.weight.copy_(sb.fc1_weight[:m, :e])
            blk.fc1.bias.copy_(sb.fc1_bias[:m])
            blk.fc2.weight.copy_(sb.fc2_weight[:e, :m])
            blk.fc2.bias.copy_(sb.fc2_bias[:e])
        model.norm.weight.copy_(net.norm_weight[:e])
        model.norm.bias.copy_(net.norm_bias[:e])
        model.head.weight.copy_(net.head_weight[:, :e])
        model.head.bias.copy_(net.head_bias)
        return model.train(net.training)


def save(model: StandaloneViT, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``directory`` as ``model.safetensors`` + ``config.json`` (each atomically).

    ``extra`` (e.g. costs and accuracy of the subnet) is stored under ``"extra"`` in the config.
    """
    from safetensors.torch import save as safetensors_bytes

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_NAME, lambda f: f.write(safetensors_bytes(tensors)))
    meta = {"format_version": FORMAT_VERSION, "config": model.config.to_dict(), "extra": extra or {}}
    write_json_atomic(out / CONFIG_NAME, meta)
    return out


def load(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> StandaloneViT:
    """Load a model written by :func:`save`; raises ``ValueError`` naming a missing or bad file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    cfg_path, w_path = d / CONFIG_NAME, d / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ValueError(f"exported model file {str(p)!r} does not exist")
    try:
        meta = json.loads(cfg_path.read_text())
        version = meta["format_version"]
        config = ViTConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"exported config {str(cfg_path)!r} is malformed: {exc}") from None
    if version != FORMAT_VERSION:
        raise ValueError(f"exported model {str(d)!r} has format_version={version}; this version reads {FORMAT_VERSION}")
    model = StandaloneViT(config)
    try:
        state = load_file(str(w_path), device=str(map_location))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError) as exc:
        raise ValueError(f"exported weights {str(w_path)!r} do not match config: {exc}".splitlines()[0]) from None
    return model.to(map_location)
