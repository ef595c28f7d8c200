"""A searched subnet as a timm model: :class:`FocusFormerViT`, registered as ``focusformer_vit``.

:class:`FocusFormerViT` is a :class:`timm.models.vision_transformer.VisionTransformer` whose
blocks each have their own number of heads (of a fixed head dim, so the attention width
``heads * head_dim`` need not equal the embed dim) and their own MLP width. Everything else is
timm's: patch embedding, CLS token and position embedding, ``forward_features`` /
``forward_head``, ``reset_classifier``, ``set_grad_checkpointing``, ``pretrained_cfg``. Its
parameter names are timm's (``patch_embed.proj.weight``, ``blocks.i.mlp.fc1.weight``, ...).

Importing this module (``import focusformer_fast`` does) registers the entrypoint
:func:`focusformer_vit` with timm, so ``timm.create_model('local-dir:DIR', pretrained=True)``
builds an exported subnet (:mod:`focusformer_fast.export`) and loads its weights.

:func:`from_standalone` converts the package's dense model (:class:`~focusformer_fast.models.vit.StandaloneViT`,
what :meth:`Supernet.extract` returns) into one with the same outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import LayerNorm, Mlp
from timm.layers.attention import Attention
from timm.models import build_model_with_cfg, register_model
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from focusformer_fast.models.vit import LN_EPS, StandaloneViT, ViTConfig

ARCHITECTURE = "focusformer_vit"
POOLS = {"cls": "token", "mean": "avg"}
"""Our pooling names -> timm's ``global_pool``."""


class FocusFormerBlock(Block):
    """timm's pre-norm :class:`~timm.models.vision_transformer.Block` with ``num_heads`` heads of
    ``head_dim`` channels and an MLP of ``mlp_hidden``: ``[B, N, dim]`` -> ``[B, N, dim]``.

    No layer scale, biases on every linear (as the supernet); ``forward`` is timm's.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden: int, *, drop_path: float = 0.0,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, norm_layer: type[nn.Module] = LayerNorm,
                 act_layer: type[nn.Module] = nn.GELU):
        nn.Module.__init__(self)
        from timm.layers import DropPath

        self.norm1 = norm_layer(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads=num_heads, attn_head_dim=head_dim, qkv_bias=True,
                              attn_drop=attn_drop, proj_drop=proj_drop)
        self.ls1 = nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_hidden, act_layer=act_layer, drop=proj_drop)
        self.ls2 = nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()


def _per_block(num_heads_of: Sequence[int], mlp_hidden_of: Sequence[int], head_dim: int, *, dim: int, depth: int,
               drop_path: float, proj_drop: float, attn_drop: float, norm_layer: type[nn.Module],
               act_layer: type[nn.Module], **_: Any) -> FocusFormerBlock:
    """The ``block_fn`` timm's VisionTransformer calls for block ``depth``: that block's widths.

    timm passes block options of its own (``qkv_bias``, ``init_values``, ...); these blocks fix them.
    """
    return FocusFormerBlock(dim, num_heads_of[depth], head_dim, mlp_hidden_of[depth], drop_path=drop_path,
                            proj_drop=proj_drop, attn_drop=attn_drop, norm_layer=norm_layer, act_layer=act_layer)


class FocusFormerViT(VisionTransformer):
    """A timm VisionTransformer with per-block heads and MLP widths: ``[B, C, H, W]`` -> ``[B, num_classes]``.

    Args:
        num_heads: heads of each block (its length is the depth).
        mlp_hidden: MLP hidden width of each block.
        head_dim: channels per head.
        embed_dim, img_size, patch_size, in_chans, num_classes: as timm's.
        global_pool: ``"token"`` (CLS token) or ``"avg"`` (mean of the patch tokens, after the
            final norm as in the supernet: no ``fc_norm``).
        **kwargs: other :class:`VisionTransformer` arguments (``drop_rate``, ``drop_path_rate``, ...).
    """

    def __init__(self, *, num_heads: Sequence[int], mlp_hidden: Sequence[int], head_dim: int = 64,
                 embed_dim: int = 192, global_pool: str = "token", depth: int | None = None, **kwargs: Any):
        heads, hidden = tuple(int(h) for h in num_heads), tuple(int(m) for m in mlp_hidden)
        if len(heads) != len(hidden) or not heads:
            raise ValueError(f"num_heads {list(heads)} and mlp_hidden {list(hidden)} must have one entry per block")
        if depth is not None and depth != len(heads):
            raise ValueError(f"depth={depth} differs from the {len(heads)} blocks of num_heads")
        if global_pool not in POOLS.values():
            raise ValueError(f"global_pool={global_pool!r} is not allowed; allowed: {', '.join(POOLS.values())}")
        kwargs.pop("mlp_ratio", None)
        super().__init__(embed_dim=embed_dim, depth=len(heads), num_heads=heads[0], global_pool=global_pool,
                         fc_norm=False, block_fn=lambda **kw: _per_block(heads, hidden, head_dim, **kw), **kwargs)
        self.block_heads, self.block_mlp_hidden, self.head_dim = heads, hidden, head_dim


def model_args(config: ViTConfig) -> dict[str, Any]:
    """The :class:`FocusFormerViT` arguments (JSON values) of the subnet ``config`` describes, without ``num_classes``."""
    a = config.arch
    return {"img_size": config.image_size, "patch_size": config.patch_size, "in_chans": config.in_chans,
            "embed_dim": a.embed_dim, "num_heads": list(a.num_heads),
            "mlp_hidden": [a.mlp_hidden(i) for i in range(a.depth)], "head_dim": config.head_dim,
            "global_pool": POOLS[config.global_pool]}


def timm_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A :class:`StandaloneViT` state dict renamed to timm's keys (same tensors)."""
    out = {}
    for key, value in state.items():
        if key.startswith("patch_embed."):
            key = "patch_embed.proj." + key.removeprefix("patch_embed.")
        else:
            parts = key.split(".")
            if parts[0] == "blocks" and parts[2] in ("fc1", "fc2"):
                key = ".".join(parts[:2] + ["mlp"] + parts[2:])
        out[key] = value
    return out


@torch.no_grad()
def from_standalone(model: StandaloneViT) -> FocusFormerViT:
    """A :class:`FocusFormerViT` with ``model``'s weights (copies), on its device and dtype and in its mode."""
    p = model.head.weight
    timm_model = FocusFormerViT(num_classes=model.config.num_classes, **model_args(model.config))
    timm_model.to(device=p.device, dtype=p.dtype)
    timm_model.load_state_dict(timm_state_dict(model.state_dict()))
    return timm_model.train(model.training)


default_cfgs = {ARCHITECTURE: {"url": "", "first_conv": "patch_embed.proj", "classifier": "head",
                               "fixed_input_size": True}}
"""timm's default pretrained config of :func:`focusformer_vit` (an export's ``config.json`` overrides it)."""


@register_model
def focusformer_vit(pretrained: bool = False, **kwargs: Any) -> FocusFormerViT:
    """timm entrypoint: a :class:`FocusFormerViT` from ``kwargs`` (an export's ``model_args``)."""
    return build_model_with_cfg(FocusFormerViT, ARCHITECTURE, pretrained, **kwargs)
