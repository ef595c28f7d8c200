"""The ``cuda`` backend: the CUDA kernels of ``focusformer_fast._C`` with the reference's signatures.

The compiled ops, their fake kernels and autograd formulas are those of
:mod:`focusformer_fast.ops.backends.compiled` (the ``cpp`` backend runs the same ops on CPU tensors). On CUDA:

* ``sliced_linear``: cuBLASLt GEMMs read the super-weight slice in place (its row stride is the
  GEMM's leading dimension), add the bias in the GEMM epilogue (from an aligned copy when the
  group's slice of the super-bias is not 16-byte aligned), and add a residual as the GEMM's ``C``
  operand (``D = A·B + C``, ``C != D``: no copy of the residual). Exact (erf) GELU runs in one
  elementwise kernel after the GEMM, because cuBLASLt's GELU epilogue is the tanh approximation.
  Backward: ``dX`` and ``dW`` GEMMs, ``dW`` written straight into the used slice of a full-size zero
  gradient, in the parameter's dtype.
* ``sliced_layernorm``: one warp per row; weight/bias gradients in a two-pass row-chunked reduction.
* ``sliced_attention``: PyTorch's fused SDPA (FlashAttention on bf16/fp16) on strided views of the
  ``[Q; K; V]`` projection output, i.e. :func:`reference.sliced_attention`. The project's own
  attention kernel is the Triton one.

Autocast (the trainer's bf16 mixed precision), with the dtypes of :mod:`..precision`: a linear
computes in the autocast dtype, reading the super-weight's (and, where the GEMM output is in that
dtype, the bias's) copy in it from :mod:`..casts` (made once per optimizer step, not per call); a
residual add promotes (the fp32 residual stream stays fp32: the GEMM reads it as ``C`` and writes
fp32); LayerNorm normalizes in float32 and writes the autocast dtype. Inputs the kernels do not
take (float64, or CPU tensors) run the reference.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from focusformer_fast.ops import _extension, casts, precision, reference
from focusformer_fast.ops.backends import compiled
from focusformer_fast.ops.dispatch import Backend, register_backend

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_LAYERNORM_DTYPES = (torch.float32, torch.bfloat16)


def _cast_if(param: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """The copy of ``param`` in ``dtype`` the kernels read, or None when ``param`` already has it."""
    return None if param is None or param.dtype == dtype else casts.cast(param, dtype)


def sliced_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    out_features: int,
    groups: int = 1,
    gelu: bool = False,
    residual: Tensor | None = None,
) -> Tensor:
    """``residual + act(x @ W_s^T + b_s)``; shapes as :func:`reference.sliced_linear`.

    Output dtype: the compute dtype (autocast's, else ``x.dtype``), promoted with the residual's.
    """
    dtype = precision.matmul_dtype(x)
    out_dtype = dtype if residual is None else torch.promote_types(dtype, residual.dtype)
    supported = weight.dtype in _DTYPES and (bias is None or bias.dtype == weight.dtype)
    if x.device.type != "cuda" or dtype not in _DTYPES or out_dtype not in (dtype, torch.float32) or not supported:
        return reference.sliced_linear(x, weight, bias, out_features, groups, gelu, residual)
    z_dtype = dtype if gelu or residual is None else out_dtype  # the GEMM output's, which adds the bias
    r = None if residual is None else residual.to(out_dtype)
    return compiled.linear(x.to(dtype), weight, bias, out_features, groups, gelu, r, _cast_if(weight, dtype),
                           _cast_if(bias, z_dtype))


def sliced_layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm of ``x`` ``[*, E]`` with ``weight[:E]``, ``bias[:E]``; under CUDA autocast it returns
    the autocast dtype (normalized in float32)."""
    out_dtype = precision.layernorm_out_dtype(x)
    if x.device.type == "cuda" and x.dtype != weight.dtype and precision.autocast_dtype(x) is not None:
        x = x.to(weight.dtype)  # autocast runs F.layer_norm in float32 on float32 parameters
    if x.device.type != "cuda" or x.dtype not in _LAYERNORM_DTYPES or (weight.dtype, bias.dtype) != (x.dtype,) * 2:
        return reference.sliced_layernorm(x, weight, bias, eps)
    return compiled.layernorm(x, weight, bias, eps, out_dtype)


sliced_attention = reference.sliced_attention


def _available() -> tuple[bool, str]:
    if not _extension.load():
        return False, f"focusformer_fast._C did not load ({_extension.load_error()})"
    if not _extension.has_cuda_ops():
        return False, "focusformer_fast._C was built without CUDA (CPU torch, no nvcc, or FOCUSFORMER_SKIP_CUDA_BUILD=1)"
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, ""


register_backend(Backend("cuda", sys.modules[__name__], ("cuda",), _available))
