"""The compiled ops of ``focusformer_fast._C`` (C++ CPU and CUDA kernels): fake kernels, autograd, wrappers.

``_C`` defines, in ``torch.ops.focusformer`` (schemas in ``csrc/schemas.cpp``), each with a CPU
kernel (``csrc/cpu``) and, when built with CUDA, a CUDA kernel (``csrc/cuda``):

* ``sliced_linear(x [M, K], weight, bias?, out_features, groups, gelu, residual? [M, G*O],
  weight_cast?, bias_cast?) -> (out [M, G*O], preact)``: ``preact`` is the value before GELU (same
  shape, saved for backward) when ``gelu``, else an empty tensor. ``out`` has the residual's dtype
  when there is one (CUDA takes a float32 residual with bfloat16/float16 ``x``), else ``x``'s. The
  GEMMs read ``weight_cast`` (the super-weight in ``x``'s dtype) when given, else ``weight``; the
  epilogue adds ``bias_cast`` when given, else ``bias``, in the dtype of the GEMM output
  (``preact``'s with GELU, else ``out``'s);
* ``sliced_linear_backward(grad_out, x, weight, weight_cast?, preact, out_features, groups, gelu)
  -> (grad_x, grad_w, grad_b)``: full-size ``grad_w``/``grad_b`` in ``weight``'s dtype, zero outside
  the used slice;
* ``sliced_layernorm(x [M, E], weight [E_max], bias [E_max], eps, out_dtype?) -> (out, mean [M],
  rstd [M])``: ``out`` in ``out_dtype`` (default ``x``'s), statistics float32 (float64 for float64 ``x``);
* ``sliced_layernorm_backward(grad_out, x, weight, mean, rstd) -> (grad_x, grad_w, grad_b)``:
  ``grad_out`` in the forward's output dtype, ``grad_x`` in ``x``'s, full-size ``grad_w``/``grad_b``.

This module registers their fake (meta) kernels and autograd formulas once, for both backends
that run them (``cpp`` on CPU tensors, ``cuda`` on CUDA tensors), so eager autograd,
``torch.compile`` and ``opcheck`` see one contract; and gives both backends :func:`linear` and
:func:`layernorm`, which flatten activations ``[*, K]`` to 2-D (copied only if not contiguous)
and pass super-weights as they are. When ``_C`` did not load, nothing is registered.
"""

from __future__ import annotations

import torch
from torch import Tensor

from focusformer_fast.ops import _extension

LINEAR_OPS = ("focusformer::sliced_linear", "focusformer::sliced_linear_backward")
LAYERNORM_OPS = ("focusformer::sliced_layernorm", "focusformer::sliced_layernorm_backward")


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, out_features: int, groups: int, gelu: bool,
           residual: Tensor | None, weight_cast: Tensor | None = None, bias_cast: Tensor | None = None) -> Tensor:
    """``torch.ops.focusformer.sliced_linear`` on ``x`` ``[*, K]``: ``[*, groups*out_features]``."""
    n = groups * out_features
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    r2 = None if residual is None else residual.reshape(-1, n).contiguous()
    out, _ = torch.ops.focusformer.sliced_linear(x2, weight, bias, out_features, groups, gelu, r2, weight_cast,
                                                 bias_cast)
    return out.view(*x.shape[:-1], n)


def layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, out_dtype: torch.dtype | None = None) -> Tensor:
    """``torch.ops.focusformer.sliced_layernorm`` on ``x`` ``[*, E]``: ``[*, E]`` in ``out_dtype``."""
    out, _, _ = torch.ops.focusformer.sliced_layernorm(x.reshape(-1, x.shape[-1]).contiguous(), weight, bias, eps,
                                                       out_dtype)
    return out.view(x.shape)


def _linear_fake(x, weight, bias, out_features, groups, gelu, residual, weight_cast=None, bias_cast=None):
    n = groups * out_features
    out = x.new_empty(x.shape[0], n, dtype=x.dtype if residual is None else residual.dtype)
    return out, x.new_empty(x.shape[0], n) if gelu else x.new_empty(0)


def _linear_backward_fake(grad_out, x, weight, weight_cast, preact, out_features, groups, gelu):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


def _layernorm_fake(x, weight, bias, eps, out_dtype=None):
    stat = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = x.new_empty(x.shape, dtype=out_dtype or x.dtype)
    return out, x.new_empty(x.shape[0], dtype=stat), x.new_empty(x.shape[0], dtype=stat)


def _layernorm_backward_fake(grad_out, x, weight, mean, rstd):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _linear_setup_context(ctx, inputs, output):
    x, weight, bias, out_features, groups, gelu, residual, weight_cast, _bias_cast = inputs
    ctx.set_materialize_grads(False)  # no zero gradient for the saved pre-activation
    ctx.save_for_backward(x, weight, weight_cast, output[1])
    ctx.args = (out_features, groups, gelu)
    ctx.has_bias, ctx.has_residual = bias is not None, residual is not None


def _linear_backward(ctx, grad_out, _grad_preact):
    if grad_out is None:
        return (None,) * 9
    x, weight, weight_cast, preact = ctx.saved_tensors
    grad_x, grad_w, grad_b = torch.ops.focusformer.sliced_linear_backward(grad_out, x, weight, weight_cast, preact,
                                                                          *ctx.args)
    grad_b = grad_b if ctx.has_bias else None
    return grad_x, grad_w, grad_b, None, None, None, grad_out if ctx.has_residual else None, None, None


def _layernorm_setup_context(ctx, inputs, output):
    x, weight, _bias, _eps, _out_dtype = inputs
    ctx.set_materialize_grads(False)  # no zero gradients for the saved statistics
    ctx.save_for_backward(x, weight, output[1], output[2])


def _layernorm_backward(ctx, grad_out, _grad_mean, _grad_rstd):
    if grad_out is None:
        return (None,) * 5
    x, weight, mean, rstd = ctx.saved_tensors
    grad_x, grad_w, grad_b = torch.ops.focusformer.sliced_layernorm_backward(grad_out, x, weight, mean, rstd)
    return grad_x, grad_w, grad_b, None, None


def _register() -> None:
    linear_op, linear_backward_op = LINEAR_OPS
    layernorm_op, layernorm_backward_op = LAYERNORM_OPS
    torch.library.register_fake(linear_op)(_linear_fake)
    torch.library.register_fake(linear_backward_op)(_linear_backward_fake)
    torch.library.register_fake(layernorm_op)(_layernorm_fake)
    torch.library.register_fake(layernorm_backward_op)(_layernorm_backward_fake)
    torch.library.register_autograd(linear_op, _linear_backward, setup_context=_linear_setup_context)
    torch.library.register_autograd(layernorm_op, _layernorm_backward, setup_context=_layernorm_setup_context)


if _extension.load():
    _register()
