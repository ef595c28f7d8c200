"""Sliced LayerNorm over the first ``E`` channels: ``y = (x - mean) * rstd * w[:E] + b[:E]``.

Shapes: ``x`` ``[M, E]``; super-parameters ``weight``, ``bias`` ``[E_max]`` with ``E <= E_max``.
Statistics are computed in float32 and saved (``mean``, ``rstd`` ``[M]``) for backward.

Kernels:

* :func:`_fwd_kernel`: a block of ``BLOCK_M`` rows per program, the whole row
  (``BLOCK_E = next_pow2(E)``) in registers; two-pass mean/variance.
* :func:`_bwd_kernel`: a persistent grid (at most 4 programs per SM) strides over row
  blocks, writes ``dx`` and accumulates per-program partial ``dw``/``db`` in float32.
* :func:`_reduce_kernel`: sums the partials into the first ``E`` entries of full-size
  zero gradients of the super-parameters.

Block sizes are fixed per power-of-two width class (no autotuning): the op is memory-bound
and the class is all a subnet stream changes. ``E`` and the row strides arrive divided by
``E_ALIGN``, the power of two (at most 16 bytes) that divides them all, so rows are loaded in
vectors of that width, and sizes are not specialized on: one variant per class and alignment.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from focusformer_fast.ops.kernels._common import align, num_sms


def _blocks(e: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_E, num_warps)`` for width ``e``: about 4096 elements per program."""
    block_e = triton.next_power_of_2(e)
    return max(1, min(64, 4096 // block_e)), block_e, 4 if block_e <= 1024 else 8


@triton.jit(do_not_specialize=["M", "E", "stride_xm", "stride_ym"])
def _fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr,
    M, E, stride_xm, stride_xe, stride_w, stride_b, stride_ym, eps,
    E_ALIGN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr,
):
    E = E * E_ALIGN
    stride_xm = stride_xm * E_ALIGN
    stride_ym = stride_ym * E_ALIGN
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, BLOCK_E)
    mask_m = offs_m < M
    mask_e = offs_e < E
    mask = mask_m[:, None] & mask_e[None, :]
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_e[None, :] * stride_xe, mask=mask, other=0.0)
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / E
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = tl.math.rsqrt(tl.sum(xc * xc, axis=1) / E + eps)
    w = tl.load(w_ptr + offs_e * stride_w, mask=mask_e, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs_e * stride_b, mask=mask_e, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_e[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + offs_m, mean, mask=mask_m)
    tl.store(rstd_ptr + offs_m, rstd, mask=mask_m)


@triton.jit(do_not_specialize=["M", "E", "stride_dym", "stride_xm", "stride_dxm"])
def _bwd_kernel(
    dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
    M, E, stride_dym, stride_dye, stride_xm, stride_xe, stride_w, stride_dxm,
    E_ALIGN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr,
):
    E = E * E_ALIGN
    stride_dym = stride_dym * E_ALIGN
    stride_xm = stride_xm * E_ALIGN
    stride_dxm = stride_dxm * E_ALIGN
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK_M
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    w = tl.load(w_ptr + offs_e * stride_w, mask=mask_e, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_E,), dtype=tl.float32)
    db = tl.zeros((BLOCK_E,), dtype=tl.float32)
    for m0 in range(pid * BLOCK_M, M, step):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        mask = mask_m[:, None] & mask_e[None, :]
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_e[None, :] * stride_xe, mask=mask, other=0.0)
        dy = tl.load(dy_ptr + offs_m[:, None] * stride_dym + offs_e[None, :] * stride_dye, mask=mask, other=0.0)
        dy = dy.to(tl.float32)
        mean = tl.load(mean_ptr + offs_m, mask=mask_m, other=0.0)
        rstd = tl.load(rstd_ptr + offs_m, mask=mask_m, other=0.0)
        xhat = tl.where(mask, (x.to(tl.float32) - mean[:, None]) * rstd[:, None], 0.0)
        wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, axis=1) / E
        c2 = tl.sum(wdy, axis=1) / E
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(dx_ptr + offs_m[:, None] * stride_dxm + offs_e[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
    tl.store(dw_part_ptr + pid * E + offs_e, dw, mask=mask_e)
    tl.store(db_part_ptr + pid * E + offs_e, db, mask=mask_e)


@triton.jit(do_not_specialize=["P", "E"])
def _reduce_kernel(
    dw_part_ptr, db_part_ptr, dw_ptr, db_ptr, P, E, stride_dw, stride_db,
    BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr,
):
    offs_e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_p = tl.arange(0, BLOCK_P)
    mask_e = offs_e < E
    dw = tl.zeros((BLOCK_E,), dtype=tl.float32)
    db = tl.zeros((BLOCK_E,), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + offs_p
        mask = (p < P)[:, None] & mask_e[None, :]
        offs = p[:, None] * E + offs_e[None, :]
        dw += tl.sum(tl.load(dw_part_ptr + offs, mask=mask, other=0.0), axis=0)
        db += tl.sum(tl.load(db_part_ptr + offs, mask=mask, other=0.0), axis=0)
    tl.store(dw_ptr + offs_e * stride_dw, dw.to(dw_ptr.dtype.element_ty), mask=mask_e)
    tl.store(db_ptr + offs_e * stride_db, db.to(db_ptr.dtype.element_ty), mask=mask_e)


def forward(
    x: Tensor, weight: Tensor, bias: Tensor, eps: float, out_dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """LayerNorm of ``x`` ``[M, E]`` (any strides): ``(y [M, E] in out_dtype, mean [M], rstd [M])``, stats float32."""
    m, e = x.shape
    y = x.new_empty((m, e), dtype=out_dtype)
    mean = x.new_empty(m, dtype=torch.float32)
    rstd = x.new_empty(m, dtype=torch.float32)
    block_m, block_e, warps = _blocks(e)
    ea = align(min(x.element_size(), y.element_size()), e, x.stride(0), y.stride(0))
    wrap_triton(_fwd_kernel)[(triton.cdiv(m, block_m),)](
        x, weight, bias, y, mean, rstd,
        m, e // ea, x.stride(0) // ea, x.stride(1), weight.stride(0), bias.stride(0), y.stride(0) // ea, eps,
        E_ALIGN=ea, BLOCK_M=block_m, BLOCK_E=block_e, num_warps=warps,
    )
    return y, mean, rstd


def backward(grad: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`forward`: ``dx`` ``[M, E]`` in ``x.dtype``; ``dw``, ``db`` full-size
    ``weight.shape`` in ``weight.dtype``, zero beyond ``E``."""
    m, e = x.shape
    block_m, block_e, warps = _blocks(e)
    programs = min(triton.cdiv(m, block_m), 4 * num_sms(x.device))
    dx = x.new_empty((m, e))
    dw_part = x.new_empty((programs, e), dtype=torch.float32)
    db_part = x.new_empty((programs, e), dtype=torch.float32)
    ea = align(min(grad.element_size(), x.element_size()), e, grad.stride(0), x.stride(0), dx.stride(0))
    wrap_triton(_bwd_kernel)[(programs,)](
        grad, x, weight, mean, rstd, dx, dw_part, db_part,
        m, e // ea, grad.stride(0) // ea, grad.stride(1), x.stride(0) // ea, x.stride(1), weight.stride(0),
        dx.stride(0) // ea,
        E_ALIGN=ea, BLOCK_M=block_m, BLOCK_E=block_e, num_warps=warps,
    )
    dw = torch.zeros_like(weight)
    db = torch.zeros_like(weight)
    reduce_e = min(block_e, 128)
    wrap_triton(_reduce_kernel)[(triton.cdiv(e, reduce_e),)](
        dw_part, db_part, dw, db, programs, e, dw.stride(0), db.stride(0),
        BLOCK_P=32, BLOCK_E=reduce_e,
    )
    return dx, dw, db
