"""Pure-PyTorch reference for every sliced op: the oracle the other backends are tested against.

Conventions shared by all backends:

* A *super-weight* holds the largest layer of the space. A subnet uses its top-left
  slice; the slice size is read from the activations (input width) and from the
  explicit ``out_features``. Nothing is copied: the reference works on views, and
  autograd writes weight gradients into the slice of a full-size gradient.
* ``groups`` splits the super-weight's rows into ``groups`` equal blocks (the
  ``[Q; K; V]`` layout of the attention projection). Group ``g``
  uses rows ``[g*O_max, g*O_max + out_features)``; the output concatenates the
  groups along the last dimension (``[*, groups*out_features]``, group-major).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sliced_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    out_features: int,
    groups: int = 1,
    gelu: bool = False,
    residual: Tensor | None = None,
) -> Tensor:
    """``residual + act(x @ W_s^T + b_s)`` over the top-left slice of a super-weight.

    Args:
        x: ``[*, K]`` activations; ``K <= weight.shape[1]`` selects the input slice.
        weight: ``[groups*O_max, K_max]`` super-weight.
        bias: ``[groups*O_max]`` super-bias or ``None``.
        out_features: rows used per group, ``<= O_max``.
        groups: number of row blocks (3 for a ``[Q; K; V]`` projection).
        gelu: apply exact (erf) GELU before the residual add.
        residual: ``[*, groups*out_features]`` added last, or ``None``.

    Returns:
        ``[*, groups*out_features]`` in ``x``'s dtype.
    """
    k = x.shape[-1]
    o_max = weight.shape[0] // groups
    parts = []
    for g in range(groups):
        lo = g * o_max
        w = weight[lo : lo + out_features, :k]
        b = None if bias is None else bias[lo : lo + out_features]
        parts.append(F.linear(x, w, b))
    y = parts[0] if groups == 1 else torch.cat(parts, dim=-1)
    if gelu:
        y = F.gelu(y)
    if residual is not None:
        y = y + residual
    return y


def sliced_layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the last dimension ``E`` of ``x`` ``[*, E]`` with ``weight[:E]``, ``bias[:E]``."""
    e = x.shape[-1]
    return F.layer_norm(x, (e,), weight[:e], bias[:e], eps)


def sliced_attention(qkv: Tensor, num_heads: int, head_dim: int) -> Tensor:
    """Softmax attention of ``num_heads`` heads read from a ``[Q; K; V]`` projection output.

    Args:
        qkv: ``[B, N, 3*num_heads*head_dim]``, group-major (all Q heads, then K, then V).
        num_heads: heads used by this block.
        head_dim: channels per head; the scale is ``head_dim ** -0.5``.

    Returns:
        ``[B, N, num_heads*head_dim]``, heads concatenated.
    """
    b, n, _ = qkv.shape
    q, k, v = qkv.view(b, n, 3, num_heads, head_dim).transpose(1, 3).unbind(2)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, num_heads * head_dim)
