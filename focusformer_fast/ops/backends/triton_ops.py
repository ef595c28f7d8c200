"""The ``triton`` backend's ops: the Triton kernels of ``focusformer_fast.ops.kernels`` as ``torch.library`` ops.

Imported on the first use of the backend (:mod:`.triton` registers it without importing
Triton or Inductor, which ``triton_op`` pulls in).

Ops in ``torch.ops.focusformer``, defined with ``triton_op`` (the kernels are launched through
``wrap_triton``, so ``torch.compile`` sees inside them), each with a fake kernel and, for the
forward ops, an autograd formula:

* ``sliced_linear_triton(x [M, K], weight, bias?, out_features, groups, gelu, residual? [M, G*O],
  dtype, weight_cast?) -> (out [M, G*O], preact)``: ``preact`` is the value before GELU
  (``[M, G*O]`` in ``dtype``, saved for backward) when ``gelu``, else an empty tensor; the GEMM
  reads ``weight_cast`` (the super-weight in ``dtype``) when given, else ``weight``;
* ``sliced_linear_backward_triton(grad, x, weight, weight_cast?, bias?, preact, out_features, groups,
  gelu, need_dx, need_dw, dtype) -> (dx, dw, db)``: full-size ``dw``/``db`` in ``weight``'s dtype,
  zero outside the slice;
* ``sliced_layernorm_triton(x [M, E], weight, bias, eps, dtype) -> (out, mean [M], rstd [M])``;
* ``sliced_layernorm_backward_triton(grad, x, weight, mean, rstd) -> (dx, dw, db)``;
* ``sliced_attention_triton(qkv [B, N, 3*h*d], num_heads, head_dim, dtype) -> (out, lse [B, h, N])``;
* ``sliced_attention_backward_triton(grad, qkv, out, lse, num_heads, head_dim, dtype) -> dqkv``.

``dtype`` is the compute (and output) dtype, chosen by the wrappers below with the rules of
:mod:`..precision`: linear and attention compute in the autocast dtype, the super-weight read from
its copy in that dtype (:mod:`..casts`: made once per optimizer step, shared by forward and
backward), other operands converted as they are loaded; LayerNorm normalizes in float32 and
writes the autocast dtype (``x.dtype`` without autocast); a residual add promotes. Inputs autocast
leaves alone and the kernels lack (float64) run the reference, in their own dtype.
"""

import functools
import importlib
from types import SimpleNamespace
from typing import Optional

import torch
from torch import Tensor
from torch.library import triton_op

from focusformer_fast.ops import casts, precision, reference

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def _kernels() -> SimpleNamespace:
    mods = ("linear", "layernorm", "attention")
    return SimpleNamespace(**{m: importlib.import_module(f"focusformer_fast.ops.kernels.{m}") for m in mods})


# -- linear ------------------------------------------------------------------------------


@triton_op("focusformer::sliced_linear_triton", mutates_args=())
def _linear_op(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    out_features: int,
    groups: int,
    gelu: bool,
    residual: Optional[Tensor],
    dtype: torch.dtype,
    weight_cast: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    w = weight if weight_cast is None else weight_cast
    return _kernels().linear.forward(x, w, bias, out_features, groups, gelu, residual, dtype)


@_linear_op.register_fake
def _(x, weight, bias, out_features, groups, gelu, residual, dtype, weight_cast):
    n = groups * out_features
    out_dtype = dtype if residual is None else torch.promote_types(dtype, residual.dtype)
    out = x.new_empty((x.shape[0], n), dtype=out_dtype)
    return out, x.new_empty((x.shape[0], n) if gelu else (0,), dtype=dtype)


@triton_op("focusformer::sliced_linear_backward_triton", mutates_args=())
def _linear_backward_op(
    grad: Tensor,
    x: Tensor,
    weight: Tensor,
    weight_cast: Optional[Tensor],
    bias: Optional[Tensor],
    preact: Tensor,
    out_features: int,
    groups: int,
    gelu: bool,
    need_dx: bool,
    need_dw: bool,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    w = weight if weight_cast is None else weight_cast
    return _kernels().linear.backward(
        grad, x, w, bias, preact, out_features, groups, gelu, need_dx, need_dw, dtype, weight.dtype
    )


@_linear_backward_op.register_fake
def _(grad, x, weight, weight_cast, bias, preact, out_features, groups, gelu, need_dx, need_dw, dtype):
    dx = x.new_empty(x.shape if need_dx else (0,))
    dw = weight.new_empty(weight.shape if need_dw else (0,))
    db = weight.new_empty(bias.shape) if need_dw and bias is not None else weight.new_empty(0)
    return dx, dw, db


def _linear_setup_context(ctx, inputs, output):
    x, weight, bias, out_features, groups, gelu, residual, dtype, weight_cast = inputs
    ctx.save_for_backward(x, weight, weight_cast, bias, output[1])
    ctx.args = (out_features, groups, gelu)
    ctx.dtype = dtype
    ctx.residual_dtype = None if residual is None else residual.dtype


def _linear_backward(ctx, grad, _grad_preact):
    x, weight, weight_cast, bias, preact = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx, dw, db = _linear_backward_op(
        grad, x, weight, weight_cast, bias, preact, *ctx.args, need[0], need[1] or need[2], ctx.dtype
    )
    dres = grad.to(ctx.residual_dtype) if need[6] else None
    return (
        dx if need[0] else None,
        dw if need[1] else None,
        db if need[2] else None,
        None,
        None,
        None,
        dres,
        None,
        None,
    )


_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup_context)


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
    dtype = precision.matmul_dtype(x)
    if dtype not in _DTYPES:
        return reference.sliced_linear(x, weight, bias, out_features, groups, gelu, residual)
    n = groups * out_features
    x2 = x.reshape(-1, x.shape[-1])
    r2 = None if residual is None else residual.reshape(-1, n)
    weight_cast = None if weight.dtype == dtype else casts.cast(weight, dtype)
    out, _ = _linear_op(x2, weight, bias, out_features, groups, gelu, r2, dtype, weight_cast)
    return out.view(*x.shape[:-1], n)


# -- layernorm ---------------------------------------------------------------------------


@triton_op("focusformer::sliced_layernorm_triton", mutates_args=())
def _layernorm_op(
    x: Tensor, weight: Tensor, bias: Tensor, eps: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    return _kernels().layernorm.forward(x, weight, bias, eps, dtype)


@_layernorm_op.register_fake
def _(x, weight, bias, eps, dtype):
    m = x.shape[0]
    stats = x.new_empty(m, dtype=torch.float32)
    return x.new_empty(x.shape, dtype=dtype), stats, torch.empty_like(stats)


@triton_op("focusformer::sliced_layernorm_backward_triton", mutates_args=())
def _layernorm_backward_op(
    grad: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    return _kernels().layernorm.backward(grad, x, weight, mean, rstd)


@_layernorm_backward_op.register_fake
def _(grad, x, weight, mean, rstd):
    return torch.empty_like(x), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _layernorm_setup_context(ctx, inputs, output):
    x, weight, _bias, _eps, _dtype = inputs
    ctx.save_for_backward(x, weight, output[1], output[2])


def _layernorm_backward(ctx, grad, _grad_mean, _grad_rstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _layernorm_backward_op(grad, x, weight, mean, rstd)
    return dx, dw, db, None, None


_layernorm_op.register_autograd(_layernorm_backward, setup_context=_layernorm_setup_context)


def sliced_layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm of ``x`` ``[*, E]`` with ``weight[:E]``, ``bias[:E]``; as :func:`reference.sliced_layernorm`,
    but returning the autocast dtype under autocast (:func:`.precision.layernorm_out_dtype`)."""
    if x.dtype not in _DTYPES:
        return reference.sliced_layernorm(x, weight, bias, eps)
    out, _, _ = _layernorm_op(x.reshape(-1, x.shape[-1]), weight, bias, eps, precision.layernorm_out_dtype(x))
    return out.view(x.shape)


# -- attention ---------------------------------------------------------------------------


@triton_op("focusformer::sliced_attention_triton", mutates_args=())
def _attention_op(qkv: Tensor, num_heads: int, head_dim: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return _kernels().attention.forward(qkv, num_heads, head_dim, dtype)


@_attention_op.register_fake
def _(qkv, num_heads, head_dim, dtype):
    b, n, _ = qkv.shape
    out = qkv.new_empty((b, n, num_heads * head_dim), dtype=dtype)
    return out, qkv.new_empty((b, num_heads, n), dtype=torch.float32)


@triton_op("focusformer::sliced_attention_backward_triton", mutates_args=())
def _attention_backward_op(
    grad: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, num_heads: int, head_dim: int, dtype: torch.dtype
) -> Tensor:
    return _kernels().attention.backward(grad, qkv, out, lse, num_heads, head_dim, dtype)


@_attention_backward_op.register_fake
def _(grad, qkv, out, lse, num_heads, head_dim, dtype):
    return qkv.new_empty(qkv.shape)


def _attention_setup_context(ctx, inputs, output):
    qkv, num_heads, head_dim, dtype = inputs
    ctx.save_for_backward(qkv, *output)
    ctx.args = (num_heads, head_dim, dtype)


def _attention_backward(ctx, grad, _grad_lse):
    qkv, out, lse = ctx.saved_tensors
    return _attention_backward_op(grad, qkv, out, lse, *ctx.args), None, None, None


_attention_op.register_autograd(_attention_backward, setup_context=_attention_setup_context)


def sliced_attention(qkv: Tensor, num_heads: int, head_dim: int) -> Tensor:
    """Attention of ``num_heads`` heads of ``qkv`` ``[B, N, 3*h*d]``; as :func:`reference.sliced_attention`."""
    dtype = precision.matmul_dtype(qkv)
    if dtype not in _DTYPES:
        return reference.sliced_attention(qkv, num_heads, head_dim)
    out, _ = _attention_op(qkv, num_heads, head_dim, dtype)
    return out
