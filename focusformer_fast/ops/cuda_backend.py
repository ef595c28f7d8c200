"""The ``cuda`` backend: the CUDA kernels of ``focusformer_fast._C`` with the reference's signatures.

The compiled ops (``torch.ops.focusformer.sliced_linear_cpp`` and ``sliced_layernorm_cpp``, with
their ``*_backward_cpp``; schemas in ``csrc/schemas.cpp``) have a CPU kernel (the ``cpp``
backend) and a CUDA kernel (``csrc/cuda``); their fake kernels and autograd formulas are
registered once, in :mod:`focusformer_fast.ops.cpp`. On CUDA:

* ``sliced_linear``: cuBLASLt GEMMs read the super-weight slice in place (its row stride is the
  GEMM's leading dimension), add the bias in the GEMM epilogue, and add a residual as the GEMM's
  ``C`` operand (``D = A·B + C``, ``C != D``: no copy of the residual). Exact (erf) GELU runs in
  one elementwise kernel after the GEMM, because cuBLASLt's GELU epilogue is the tanh
  approximation. Backward: ``dX`` and ``dW`` GEMMs, ``dW`` written straight into the used slice of
  a full-size zero gradient.
* ``sliced_layernorm``: one warp per row; weight/bias gradients in a two-pass row-chunked reduction.
* ``sliced_attention``: PyTorch's fused SDPA (FlashAttention on bf16/fp16) on strided views of the
  ``[Q; K; V]`` projection output, i.e. :func:`reference.sliced_attention`. The project's own
  attention kernel is the Triton one.

Autocast (the trainer's bf16 mixed precision) is handled as the reference handles it: a linear
computes in the autocast dtype (activations and the fp32 super-weight are cast, as autocast casts
for ``F.linear``), a residual add promotes (the fp32 residual stream stays fp32: the GEMM reads it
as ``C`` and writes fp32), and LayerNorm computes in float32. Inputs the kernels do not take
(float64, or CPU tensors) run the reference.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from .. import _extension
from . import reference
from .dispatch import Backend, register_backend

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_LAYERNORM_DTYPES = (torch.float32, torch.bfloat16)


def _autocasts(t: Tensor) -> bool:
    """Whether CUDA autocast would cast ``t`` (it leaves float64 and non-float tensors alone)."""
    return t.is_floating_point() and t.dtype != torch.float64 and torch.is_autocast_enabled("cuda")


def _compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul on ``t`` in, else ``t.dtype``."""
    return torch.get_autocast_dtype("cuda") if _autocasts(t) else t.dtype


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
    dtype = _compute_dtype(x)
    out_dtype = dtype if residual is None else torch.promote_types(dtype, residual.dtype)
    if x.device.type != "cuda" or dtype not in _DTYPES or out_dtype not in (dtype, torch.float32):
        return reference.sliced_linear(x, weight, bias, out_features, groups, gelu, residual)
    n = groups * out_features
    x2 = x.reshape(-1, x.shape[-1]).to(dtype)
    r2 = None if residual is None else residual.reshape(-1, n).to(out_dtype)
    # the bias is added by the GEMM, whose output is the pre-activation (dtype) or the result
    b = None if bias is None else bias.to(dtype if gelu else out_dtype)
    out, _ = torch.ops.focusformer.sliced_linear_cpp(x2, weight.to(dtype), b, out_features, groups, gelu, r2)
    return out.view(*x.shape[:-1], n)


def sliced_layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm of ``x`` ``[*, E]`` with ``weight[:E]``, ``bias[:E]``; float32 under CUDA autocast."""
    if x.device.type == "cuda" and _autocasts(x):
        x, weight, bias = x.float(), weight.float(), bias.float()
    if x.device.type != "cuda" or x.dtype not in _LAYERNORM_DTYPES:
        return reference.sliced_layernorm(x, weight, bias, eps)
    out, _, _ = torch.ops.focusformer.sliced_layernorm_cpp(x.reshape(-1, x.shape[-1]), weight, bias, eps)
    return out.view(x.shape)


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
