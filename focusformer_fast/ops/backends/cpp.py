"""The ``cpp`` backend: the C++ CPU kernels of ``focusformer_fast._C`` with the reference's signatures.

The ops, their fake kernels and autograd formulas are those of :mod:`focusformer_fast.ops.backends.compiled`
(the ``cuda`` backend runs the same ops on CUDA tensors). This backend is registered for CPU
tensors and computes in the input's dtype. The C++ kernels take float32, float64 and bfloat16;
other dtypes run the reference. When ``_C`` did not load, the backend reports itself unavailable.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from focusformer_fast.ops import _extension, reference
from focusformer_fast.ops.backends import compiled
from focusformer_fast.ops.dispatch import Backend, register_backend

_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def sliced_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    out_features: int,
    groups: int = 1,
    gelu: bool = False,
    residual: Tensor | None = None,
) -> Tensor:
    """``residual + act(x @ W_s^T + b_s)``; shapes as :func:`reference.sliced_linear`."""
    if x.dtype not in _DTYPES:
        return reference.sliced_linear(x, weight, bias, out_features, groups, gelu, residual)
    return compiled.linear(x, weight, bias, out_features, groups, gelu, residual)


def sliced_layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm of ``x`` ``[*, E]`` with ``weight[:E]``, ``bias[:E]``; as :func:`reference.sliced_layernorm`."""
    if x.dtype not in _DTYPES:
        return reference.sliced_layernorm(x, weight, bias, eps)
    return compiled.layernorm(x, weight, bias, eps)


def _available() -> tuple[bool, str]:
    if _extension.load():
        return True, ""
    return False, f"focusformer_fast._C did not load ({_extension.load_error()})"


register_backend(Backend("cpp", sys.modules[__name__], ("cpu",), _available))
