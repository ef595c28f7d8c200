"""Sliced ops: the functional API the supernet is built on.

Each function checks its arguments, then runs the implementation chosen by
:mod:`focusformer_fast.ops.dispatch` for the input's device and the backend in
force (``set_backend`` context, ``FOCUSFORMER_BACKEND``, or ``auto``). The
semantics of every op are those of :mod:`focusformer_fast.ops.reference`.
"""

from __future__ import annotations

from torch import Tensor

from focusformer_fast.ops import reference
from focusformer_fast.ops.dispatch import (BACKENDS, Backend, available_backends, current_backend, register_backend,
                                           resolve, set_backend)

__all__ = [
    "BACKENDS",
    "available_backends",
    "current_backend",
    "set_backend",
    "sliced_attention",
    "sliced_layernorm",
    "sliced_linear",
]

register_backend(Backend("torch", reference, ("cpu", "cuda"), lambda: (True, "")))


def sliced_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    out_features: int,
    groups: int = 1,
    gelu: bool = False,
    residual: Tensor | None = None,
) -> Tensor:
    """``residual + act(x @ W_s^T + b_s)``; see :func:`reference.sliced_linear` for shapes."""
    if weight.dim() != 2 or weight.shape[0] % groups:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} must be 2-D with rows divisible by groups={groups}"
        )
    o_max = weight.shape[0] // groups
    if not 0 < out_features <= o_max:
        raise ValueError(f"out_features={out_features} must be in [1, {o_max}]")
    if not 0 < x.shape[-1] <= weight.shape[1]:
        raise ValueError(f"input width {x.shape[-1]} must be in [1, {weight.shape[1]}]")
    if residual is not None and residual.shape != (*x.shape[:-1], groups * out_features):
        raise ValueError(
            f"residual shape {tuple(residual.shape)} must be {(*x.shape[:-1], groups * out_features)}"
        )
    fn = resolve("sliced_linear", x.device.type)
    return fn(x, weight, bias, out_features, groups, gelu, residual)


def sliced_layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm of ``x`` ``[*, E]`` with the first ``E`` entries of ``weight``/``bias``."""
    if not 0 < x.shape[-1] <= weight.shape[0]:
        raise ValueError(f"input width {x.shape[-1]} must be in [1, {weight.shape[0]}]")
    fn = resolve("sliced_layernorm", x.device.type)
    return fn(x, weight, bias, eps)


def sliced_attention(qkv: Tensor, num_heads: int, head_dim: int) -> Tensor:
    """Attention over ``num_heads`` heads of ``qkv`` ``[B, N, 3*num_heads*head_dim]``."""
    if qkv.dim() != 3 or qkv.shape[-1] != 3 * num_heads * head_dim:
        raise ValueError(
            f"qkv shape {tuple(qkv.shape)} must be [B, N, {3 * num_heads * head_dim}]"
            f" for num_heads={num_heads}, head_dim={head_dim}"
        )
    fn = resolve("sliced_attention", qkv.device.type)
    return fn(qkv, num_heads, head_dim)


# Importing a backend module registers it; each reports itself unavailable when it cannot run. The
# cpp and cuda backends share the compiled ops' registrations (ops/backends/compiled.py), in any import order.
from focusformer_fast.ops.backends import cpp as _cpp  # noqa: E402,F401
from focusformer_fast.ops.backends import cuda as _cuda  # noqa: E402,F401
from focusformer_fast.ops.backends import triton as _triton  # noqa: E402,F401
