"""The ``cpp`` backend: the compiled ops of ``focusformer_fast._C`` with the reference's signatures.

``_C`` defines, in ``torch.ops.focusformer``:

* ``sliced_linear_cpp(x [M, K], weight, bias, out_features, groups, gelu, residual)
  -> (out [M, groups*out_features], preact)``, where ``preact`` is the value before GELU
  (same shape, saved for backward) when ``gelu``, else an empty tensor. ``out`` has the
  residual's dtype (the CUDA kernel takes a float32 residual with bfloat16/float16 ``x``), else
  ``x``'s; the bias has the GEMM output's dtype (``x``'s with GELU, else ``out``'s);
* ``sliced_layernorm_cpp(x [M, E], weight [E_max], bias [E_max], eps) -> (out, mean [M], rstd [M])``,
  statistics in float32 (float64 for float64 ``x``);
* their ``*_backward_cpp`` ops, which return full-size weight/bias gradients (the bias's in
  the bias's dtype), zero outside the used slice.

This module registers their fake (meta) kernels and autograd formulas, so eager autograd,
``torch.compile`` and ``opcheck`` see one contract, and wraps them as :func:`sliced_linear`
and :func:`sliced_layernorm`: activations ``[*, K]`` are flattened to 2-D (copied only if
not contiguous); super-weights are passed as they are and never copied.

The ops also have CUDA kernels when ``_C`` was built with CUDA: the ``cuda`` backend
(:mod:`focusformer_fast.ops.cuda_backend`) wraps them; this backend is registered for CPU tensors.
The C++ kernels take float32, float64 and bfloat16; other dtypes run the reference. When
``_C`` did not load, nothing is registered and the backend reports itself unavailable.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from .. import _extension
from . import reference
from .dispatch import Backend, register_backend

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
    n = groups * out_features
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    r2 = None if residual is None else residual.reshape(-1, n).contiguous()
    out, _ = torch.ops.focusformer.sliced_linear_cpp(x2, weight, bias, out_features, groups, gelu, r2)
    return out.view(*x.shape[:-1], n)


def sliced_layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm of ``x`` ``[*, E]`` with ``weight[:E]``, ``bias[:E]``; as :func:`reference.sliced_layernorm`."""
    if x.dtype not in _DTYPES:
        return reference.sliced_layernorm(x, weight, bias, eps)
    out, _, _ = torch.ops.focusformer.sliced_layernorm_cpp(x.reshape(-1, x.shape[-1]).contiguous(), weight, bias, eps)
    return out.view(x.shape)


def _linear_fake(x, weight, bias, out_features, groups, gelu, residual):
    n = groups * out_features
    out = x.new_empty(x.shape[0], n, dtype=x.dtype if residual is None else residual.dtype)
    return out, x.new_empty(x.shape[0], n) if gelu else x.new_empty(0)


def _linear_backward_fake(grad_out, x, weight, preact, out_features, groups, gelu):
    grad_b = weight.new_empty(weight.shape[0], dtype=x.dtype if gelu else grad_out.dtype)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), grad_b


def _layernorm_fake(x, weight, bias, eps):
    stat = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty(x.shape), x.new_empty(x.shape[0], dtype=stat), x.new_empty(x.shape[0], dtype=stat)


def _layernorm_backward_fake(grad_out, x, weight, mean, rstd):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _linear_setup_context(ctx, inputs, output):
    x, weight, bias, out_features, groups, gelu, residual = inputs
    ctx.set_materialize_grads(False)  # no zero gradient for the saved pre-activation
    ctx.save_for_backward(x, weight, output[1])
    ctx.args = (out_features, groups, gelu)
    ctx.has_bias, ctx.has_residual = bias is not None, residual is not None


def _linear_backward(ctx, grad_out, _grad_preact):
    if grad_out is None:
        return (None,) * 7
    x, weight, preact = ctx.saved_tensors
    grad_x, grad_w, grad_b = torch.ops.focusformer.sliced_linear_backward_cpp(grad_out, x, weight, preact, *ctx.args)
    return (
        grad_x,
        grad_w,
        grad_b if ctx.has_bias else None,
        None,
        None,
        None,
        grad_out if ctx.has_residual else None,
    )


def _layernorm_setup_context(ctx, inputs, output):
    x, weight, _bias, _eps = inputs
    ctx.set_materialize_grads(False)  # no zero gradients for the saved statistics
    ctx.save_for_backward(x, weight, output[1], output[2])


def _layernorm_backward(ctx, grad_out, _grad_mean, _grad_rstd):
    if grad_out is None:
        return (None,) * 4
    x, weight, mean, rstd = ctx.saved_tensors
    grad_x, grad_w, grad_b = torch.ops.focusformer.sliced_layernorm_backward_cpp(grad_out, x, weight, mean, rstd)
    return grad_x, grad_w, grad_b, None


def _register() -> None:
    lib = "focusformer::"
    torch.library.register_fake(lib + "sliced_linear_cpp")(_linear_fake)
    torch.library.register_fake(lib + "sliced_linear_backward_cpp")(_linear_backward_fake)
    torch.library.register_fake(lib + "sliced_layernorm_cpp")(_layernorm_fake)
    torch.library.register_fake(lib + "sliced_layernorm_backward_cpp")(_layernorm_backward_fake)
    torch.library.register_autograd(lib + "sliced_linear_cpp", _linear_backward, setup_context=_linear_setup_context)
    torch.library.register_autograd(
        lib + "sliced_layernorm_cpp", _layernorm_backward, setup_context=_layernorm_setup_context
    )


def _available() -> tuple[bool, str]:
    if _extension.load():
        return True, ""
    return False, f"focusformer_fast._C did not load ({_extension.load_error()})"


if _extension.load():
    _register()
register_backend(Backend("cpp", sys.modules[__name__], ("cpu",), _available))
