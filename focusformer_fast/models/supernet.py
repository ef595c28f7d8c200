"""The weight-sharing ViT supernet (AutoFormer-style weight entanglement; docs/method.md).

One set of max-size weights; ``net(x, arch)`` runs the subnet ``arch`` on the
top-left slices of those weights through the sliced ops, so any subnet runs with
no weight copies and its gradients land in the used slices of the super-weights.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusformer_fast import ops
from focusformer_fast.models.graphs import BlockGraphs
from focusformer_fast.models.vit import INIT_STD, LN_EPS, StandaloneViT
from focusformer_fast.space import Arch, SearchSpace


def _linear_weight(out_features: int, in_features: int) -> nn.Parameter:
    w = torch.empty(out_features, in_features)
    nn.init.trunc_normal_(w, std=INIT_STD)
    return nn.Parameter(w)


def _norm_params(width: int) -> tuple[nn.Parameter, nn.Parameter]:
    return nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width))


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch ``x`` ``[B, ...]`` with prob. ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class SuperBlock(nn.Module):
    """Pre-norm transformer block with max-size weights.

    Super-weight shapes: ``qkv_weight [3*H_max*head_dim, E_max]`` (rows ``[Q; K; V]``),
    ``proj_weight [E_max, H_max*head_dim]``, ``fc1_weight [M_max, E_max]``,
    ``fc2_weight [E_max, M_max]``.
    """

    def __init__(self, max_embed: int, max_heads: int, head_dim: int, max_hidden: int, drop_path: float):
        super().__init__()
        inner = max_heads * head_dim
        self.head_dim = head_dim
        self.drop_path = drop_path
        self.norm1_weight, self.norm1_bias = _norm_params(max_embed)
        self.qkv_weight = _linear_weight(3 * inner, max_embed)
        self.qkv_bias = nn.Parameter(torch.zeros(3 * inner))
        self.proj_weight = _linear_weight(max_embed, inner)
        self.proj_bias = nn.Parameter(torch.zeros(max_embed))
        self.norm2_weight, self.norm2_bias = _norm_params(max_embed)
        self.fc1_weight = _linear_weight(max_hidden, max_embed)
        self.fc1_bias = nn.Parameter(torch.zeros(max_hidden))
        self.fc2_weight = _linear_weight(max_embed, max_hidden)
        self.fc2_bias = nn.Parameter(torch.zeros(max_embed))

    def forward(self, x: Tensor, num_heads: int, mlp_hidden: int) -> Tensor:
        """``x`` ``[B, N, e]`` -> ``[B, N, e]`` using ``num_heads`` heads and an MLP of ``mlp_hidden``."""
        e, hd = x.shape[-1], self.head_dim
        fuse = self.drop_path == 0.0 or not self.training
        y = ops.sliced_layernorm(x, self.norm1_weight, self.norm1_bias, LN_EPS)
        qkv = ops.sliced_linear(y, self.qkv_weight, self.qkv_bias, num_heads * hd, groups=3)
        a = ops.sliced_attention(qkv, num_heads, hd)
        if fuse:
            x = ops.sliced_linear(a, self.proj_weight, self.proj_bias, e, residual=x)
        else:
            x = x + drop_path(ops.sliced_linear(a, self.proj_weight, self.proj_bias, e), self.drop_path, True)
        y = ops.sliced_layernorm(x, self.norm2_weight, self.norm2_bias, LN_EPS)
        h = ops.sliced_linear(y, self.fc1_weight, self.fc1_bias, mlp_hidden, gelu=True)
        if fuse:
            return ops.sliced_linear(h, self.fc2_weight, self.fc2_bias, e, residual=x)
        return x + drop_path(ops.sliced_linear(h, self.fc2_weight, self.fc2_bias, e), self.drop_path, True)


class Supernet(nn.Module):
    """ViT supernet over a :class:`SearchSpace`.

    Args:
        space: the search space; its largest values size the super-weights.
        num_classes: classifier outputs (default: ``space.num_classes``).
        global_pool: ``"cls"`` (CLS token) or ``"mean"`` (mean of patch tokens, AutoFormer ``--gp``).
        drop_path_rate: stochastic depth of the last block; block ``i`` uses
            ``rate * i / (max_depth - 1)``.
        graphs: train on CUDA graphs: each block shape's forward and backward is captured once
            and replayed for every subnet that uses it (:mod:`focusformer_fast.models.graphs`). Training
            forwards on CUDA only; results equal the eager path.
        max_graphs: block shapes the graph cache keeps (least recently used evicted).
    """

    def __init__(self, space: SearchSpace, num_classes: int | None = None, *,
                 global_pool: str = "cls", drop_path_rate: float = 0.0, graphs: bool = False,
                 max_graphs: int = 512):
        super().__init__()
        if global_pool not in ("cls", "mean"):
            raise ValueError(f"global_pool={global_pool!r} is not allowed; allowed: cls, mean")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate} must be in [0, 1)")
        if num_classes is not None:
            space = dataclasses.replace(space, num_classes=num_classes)
        self.space = space
        self.global_pool = global_pool
        e_max, p = space.max_embed, space.patch_size
        self.patch_weight = nn.Parameter(torch.empty(e_max, space.in_chans, p, p))
        nn.init.trunc_normal_(self.patch_weight, std=INIT_STD)
        self.patch_bias = nn.Parameter(torch.zeros(e_max))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e_max))
        self.pos_embed = nn.Parameter(torch.empty(1, space.num_tokens, e_max))
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        nn.init.trunc_normal_(self.cls_token, std=INIT_STD)
        d_max = space.max_depth
        rates = [drop_path_rate * i / max(d_max - 1, 1) for i in range(d_max)]
        self.blocks = nn.ModuleList(
            SuperBlock(e_max, space.max_heads, space.head_dim, space.max_mlp_hidden, r) for r in rates
        )
        self.norm_weight, self.norm_bias = _norm_params(e_max)
        self.head_weight = _linear_weight(space.num_classes, e_max)
        self.head_bias = nn.Parameter(torch.zeros(space.num_classes))
        self.graphs = BlockGraphs(max_graphs) if graphs else None

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay, as in timm's and AutoFormer's ViTs: the CLS token
        and the position embedding (timm's ``create_optimizer_v2`` reads this; it also exempts
        every 1-D parameter: norms and biases)."""
        return {"cls_token", "pos_embed"}

    def embed(self, images: Tensor, embed_dim: int) -> Tensor:
        """Patch + CLS + position embedding: ``[B, C, H, W]`` -> ``[B, N, embed_dim]``."""
        e = embed_dim
        x = F.conv2d(images, self.patch_weight[:e], self.patch_bias[:e], stride=self.space.patch_size)
        x = x.flatten(2).transpose(1, 2)
        cls = self.cls_token[:, :, :e].expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed[:, :, :e]

    def forward(self, images: Tensor, arch: Arch) -> Tensor:
        """Logits ``[B, num_classes]`` of subnet ``arch`` for ``images`` ``[B, C, H, W]``."""
        self.space.validate(arch)
        x = self.embed(images, arch.embed_dim)
        if self.graphs is not None and self.graphs.usable(x, self.training, arch.depth):
            x = self.graphs.run_blocks(self.blocks, x, arch)
        else:
            for i in range(arch.depth):
                x = self.blocks[i](x, arch.num_heads[i], arch.mlp_hidden(i))
        return self.forward_head(x)

    def graph_stats(self) -> dict[str, int]:
        """Graph-mode counters (see :meth:`BlockGraphs.stats`); all zero when ``graphs=False``."""
        if self.graphs is None:
            return {"captures": 0, "replays": 0, "eager": 0, "cached": 0}
        return self.graphs.stats()

    def forward_head(self, x: Tensor) -> Tensor:
        """Final norm, pooling and classifier: tokens ``[B, N, e]`` -> logits ``[B, num_classes]``."""
        x = ops.sliced_layernorm(x, self.norm_weight, self.norm_bias, LN_EPS)
        feat = x[:, 0] if self.global_pool == "cls" else x[:, 1:].mean(dim=1)
        return ops.sliced_linear(feat.contiguous(), self.head_weight, self.head_bias, self.space.num_classes)

    @torch.no_grad()
    def extract(self, arch: Arch) -> StandaloneViT:
        """A standalone model of ``arch`` holding contiguous copies of the slices it uses.

        Its outputs equal ``self(x, arch)`` (up to floating-point summation order); it is on this
        supernet's device and dtype, in this supernet's train/eval mode.
        """
        space = self.space
        space.validate(arch)
        model = StandaloneViT.from_arch(space, arch, global_pool=self.global_pool)
        model.to(device=self.head_weight.device, dtype=self.head_weight.dtype)
        e = arch.embed_dim
        model.patch_embed.weight.copy_(self.patch_weight[:e])
        model.patch_embed.bias.copy_(self.patch_bias[:e])
        model.cls_token.copy_(self.cls_token[:, :, :e])
        model.pos_embed.copy_(self.pos_embed[:, :, :e])
        for i, blk in enumerate(model.blocks):
            sb = self.blocks[i]
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
        model.norm.weight.copy_(self.norm_weight[:e])
        model.norm.bias.copy_(self.norm_bias[:e])
        model.head.weight.copy_(self.head_weight[:, :e])
        model.head.bias.copy_(self.head_bias)
        return model.train(self.training)
