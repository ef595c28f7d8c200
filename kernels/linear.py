"""Sliced linear: ``out = act(x @ W_s^T + b_s) + residual`` on the top-left slice of a super-weight.

Shapes: ``x`` ``[M, K]``; super-weight ``[G*O_max, K_max]`` (``K <= K_max``); group ``g`` uses
rows ``[g*O_max, g*O_max + O)`` and columns ``[0, K)``; ``out`` ``[M, G*O]`` group-major.
Every kernel reads the weight slice through the super-weight's strides; nothing is copied.

Kernels:

* :func:`_fwd_kernel`: grid (M tiles x O tiles, G). fp32 accumulation over K, then the
  fused epilogue: bias, pre-activation store (GELU only), exact erf GELU, residual add.
* :func:`_dx_kernel`: ``dx = dz @ W_s`` over all groups; grid (M tiles x K tiles). The GELU
  derivative is applied to ``grad_out`` as it is loaded (``dz = grad_out * gelu'(z)``).
* :func:`_dw_kernel`: ``dW_s = dz^T @ x`` and ``db_s = sum_m dz``; grid (O tiles x K tiles, G,
  splits of M). It writes straight into the slice of a full-size zero gradient; with more
  than one split (float32 gradients, non-deterministic mode) the splits add atomically.

Autotuning keys on power-of-two buckets of M, O and K, so the widths of a subnet stream
map onto a handful of tuned configs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ._common import autotune, bucket, dot_precision, num_sms, tl_dtype

_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


def _gemm_configs(bm_bn_bk_warps_stages, **extra) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, **extra}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in bm_bn_bk_warps_stages
    ]


_MNK_CONFIGS = [
    (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (64, 64, 32, 4, 5),
]
_INTERPRET_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}
_KEY = ["M_BUCKET", "O_BUCKET", "K_BUCKET"]


@triton.jit
def _gelu_grad(z):
    """d/dz of ``z * Phi(z)``: ``Phi(z) + z * phi(z)``, in float32."""
    return 0.5 * (1.0 + tl.math.erf(z * _SQRT1_2)) + z * _INV_SQRT_2PI * tl.exp(-0.5 * z * z)


@triton.jit
def _grouped_tile(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Tile ``(pid_m, pid_n)`` of program ``pid`` in grouped order: ``GROUP_M`` row tiles in a row
    share the column tiles they read from L2."""
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    rows_here = min(num_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % rows_here, (pid % per_group) // rows_here


@autotune(_gemm_configs(_MNK_CONFIGS, GROUP_M=8), triton.Config({**_INTERPRET_BLOCKS, "GROUP_M": 2}), key=_KEY)
@triton.jit
def _fwd_kernel(
    x_ptr, w_ptr, b_ptr, r_ptr, out_ptr, z_ptr,
    M, K, O, O_MAX,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_b, stride_rm, stride_rn, stride_om, stride_zm,
    M_BUCKET, O_BUCKET, K_BUCKET,
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    CDT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(O, BLOCK_N)
    pid_m, pid_n = _grouped_tile(pid, num_m, num_n, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < O
    w_rows = g * O_MAX + offs_n
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + w_rows[None, :] * stride_wn + offs_k[:, None] * stride_wk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = offs_k < K - k0
        a = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a.to(CDT), b.to(CDT), acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    if HAS_BIAS:
        acc += tl.load(b_ptr + w_rows * stride_b, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    cols = g * O + offs_n
    mask = mask_m[:, None] & mask_n[None, :]
    if GELU:
        tl.store(z_ptr + offs_m[:, None] * stride_zm + cols[None, :], acc.to(z_ptr.dtype.element_ty), mask=mask)
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * _SQRT1_2))
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + offs_m[:, None] * stride_rm + cols[None, :] * stride_rn, mask=mask, other=0.0)
        acc += r.to(tl.float32)
    tl.store(out_ptr + offs_m[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@autotune(_gemm_configs(_MNK_CONFIGS, GROUP_M=8), triton.Config({**_INTERPRET_BLOCKS, "GROUP_M": 2}), key=_KEY)
@triton.jit
def _dx_kernel(
    dy_ptr, z_ptr, w_ptr, dx_ptr,
    M, K, O, O_MAX, G,
    stride_dym, stride_dyn, stride_zm, stride_wn, stride_wk, stride_dxm,
    M_BUCKET, O_BUCKET, K_BUCKET,
    GELU: tl.constexpr, CDT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Output tile [BLOCK_M, BLOCK_K] of dx; BLOCK_N steps through the reduction over O per group.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_k = tl.cdiv(K, BLOCK_K)
    pid_m, pid_k = _grouped_tile(pid, num_m, num_k, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_k = offs_k < K

    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for g in range(G):
        cols = g * O + offs_n
        dy_ptrs = dy_ptr + offs_m[:, None] * stride_dym + cols[None, :] * stride_dyn
        z_ptrs = z_ptr + offs_m[:, None] * stride_zm + cols[None, :]
        w_ptrs = w_ptr + (g * O_MAX + offs_n)[:, None] * stride_wn + offs_k[None, :] * stride_wk
        for n0 in range(0, O, BLOCK_N):
            mask_n = offs_n < O - n0
            mask_dy = mask_m[:, None] & mask_n[None, :]
            dz = tl.load(dy_ptrs, mask=mask_dy, other=0.0).to(tl.float32)
            if GELU:
                dz = dz * _gelu_grad(tl.load(z_ptrs, mask=mask_dy, other=0.0).to(tl.float32))
            w = tl.load(w_ptrs, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            acc = tl.dot(dz.to(CDT), w.to(CDT), acc, input_precision=PRECISION)
            dy_ptrs += BLOCK_N * stride_dyn
            z_ptrs += BLOCK_N
            w_ptrs += BLOCK_N * stride_wn

    mask = mask_m[:, None] & mask_k[None, :]
    tl.store(dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :], acc.to(dx_ptr.dtype.element_ty), mask=mask)


@autotune(
    _gemm_configs(_MNK_CONFIGS), triton.Config(_INTERPRET_BLOCKS), key=_KEY, reset_to_zero=["dw_ptr", "db_ptr"]
)
@triton.jit
def _dw_kernel(
    dy_ptr, z_ptr, x_ptr, dw_ptr, db_ptr,
    M, K, O, O_MAX,
    stride_dym, stride_dyn, stride_zm, stride_xm, stride_xk, stride_dwn, stride_dwk, stride_db,
    M_BUCKET, O_BUCKET, K_BUCKET,
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr, CDT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Output tile [BLOCK_N, BLOCK_K] of group g's weight slice; BLOCK_M steps through this split's rows.
    pid = tl.program_id(0)
    g = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    num_k = tl.cdiv(K, BLOCK_K)
    pid_n = pid // num_k
    pid_k = pid % num_k

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_m = tl.arange(0, BLOCK_M)
    mask_n = offs_n < O
    mask_k = offs_k < K
    cols = g * O + offs_n

    rows_per_split = tl.cdiv(tl.cdiv(M, BLOCK_M), num_splits) * BLOCK_M
    m_start = split * rows_per_split
    m_end = min(M, m_start + rows_per_split)
    dy_ptrs = dy_ptr + (m_start + offs_m)[:, None] * stride_dym + cols[None, :] * stride_dyn
    z_ptrs = z_ptr + (m_start + offs_m)[:, None] * stride_zm + cols[None, :]
    x_ptrs = x_ptr + (m_start + offs_m)[:, None] * stride_xm + offs_k[None, :] * stride_xk
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(m_start, m_end, BLOCK_M):
        mask_m = offs_m < m_end - m0
        mask_dy = mask_m[:, None] & mask_n[None, :]
        dz = tl.load(dy_ptrs, mask=mask_dy, other=0.0).to(tl.float32)
        if GELU:
            dz = dz * _gelu_grad(tl.load(z_ptrs, mask=mask_dy, other=0.0).to(tl.float32))
        x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        acc = tl.dot(tl.trans(dz.to(CDT)), x.to(CDT), acc, input_precision=PRECISION)
        if HAS_BIAS:
            db += tl.sum(dz, axis=0)
        dy_ptrs += BLOCK_M * stride_dym
        z_ptrs += BLOCK_M * stride_zm
        x_ptrs += BLOCK_M * stride_xm

    w_rows = g * O_MAX + offs_n
    dw_ptrs = dw_ptr + w_rows[:, None] * stride_dwn + offs_k[None, :] * stride_dwk
    mask = mask_n[:, None] & mask_k[None, :]
    if num_splits == 1:
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(dw_ptrs, acc, mask=mask)
    if HAS_BIAS:
        if pid_k == 0:
            if num_splits == 1:
                tl.store(db_ptr + w_rows * stride_db, db.to(db_ptr.dtype.element_ty), mask=mask_n)
            else:
                tl.atomic_add(db_ptr + w_rows * stride_db, db, mask=mask_n)


def forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    out_features: int,
    groups: int,
    gelu: bool,
    residual: Tensor | None,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Launch the forward kernel.

    Args:
        x: ``[M, K]`` activations (any strides).
        weight: ``[groups*O_max, K_max]`` super-weight; bias: ``[groups*O_max]`` or ``None``.
        out_features: ``O``, rows used per group.
        residual: ``[M, groups*O]`` or ``None``.
        dtype: compute dtype of the matmul (the autocast dtype, else ``x.dtype``).

    Returns:
        ``out`` ``[M, groups*O]`` in ``dtype`` (promoted with ``residual.dtype``) and the
        pre-activation ``[M, groups*O]`` in ``dtype`` when ``gelu`` (else an empty tensor).
    """
    m, k = x.shape
    n = groups * out_features
    o_max = weight.shape[0] // groups
    out_dtype = dtype if residual is None else torch.promote_types(dtype, residual.dtype)
    out = x.new_empty((m, n), dtype=out_dtype)
    preact = x.new_empty((m, n) if gelu else (0,), dtype=dtype)
    z = preact if gelu else out
    r = out if residual is None else residual
    dtypes = dict(CDT=tl_dtype(dtype), PRECISION=dot_precision(dtype))

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(out_features, meta["BLOCK_N"]), groups)

    b = weight if bias is None else bias
    wrap_triton(_fwd_kernel)[grid](
        x, weight, b, r, out, z,
        m, k, out_features, o_max,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), b.stride(0), r.stride(0), r.stride(1),
        out.stride(0), z.stride(0),
        bucket(m), bucket(out_features), bucket(k),
        HAS_BIAS=bias is not None, GELU=gelu, HAS_RESIDUAL=residual is not None,
        **dtypes,
    )
    return out, preact


def _num_splits(m: int, tiles: int, block_m: int, dw: Tensor) -> int:
    """Splits of M for the weight gradient: enough programs to fill the device twice over,
    each split at least two row tiles; 1 when atomics are unavailable or forbidden."""
    if dw.dtype != torch.float32 or torch.are_deterministic_algorithms_enabled():
        return 1
    return max(1, min(2 * num_sms(dw.device) // tiles, m // (2 * block_m)))


def backward(
    grad: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    preact: Tensor,
    out_features: int,
    groups: int,
    gelu: bool,
    need_dx: bool,
    need_dw: bool,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the backward kernels.

    Args:
        grad: ``[M, groups*O]`` gradient of ``out`` (any strides).
        x, weight, bias, out_features, groups, gelu, dtype: as in :func:`forward`.
        preact: the pre-activation :func:`forward` returned (used when ``gelu``).
        need_dx: compute ``dx``; need_dw: compute the weight and bias gradients.

    Returns:
        ``dx`` ``[M, K]`` in ``x.dtype``; ``dw`` full-size ``weight.shape``, zero outside the
        used slice; ``db`` full-size ``bias.shape``, likewise. Each is an empty tensor when not
        requested (``db`` also when ``bias`` is ``None``).
    """
    m, k = x.shape
    o_max = weight.shape[0] // groups
    dtypes = dict(CDT=tl_dtype(dtype), PRECISION=dot_precision(dtype))
    z = preact if gelu else grad
    dx = x.new_empty((m, k) if need_dx else (0,))
    dw = torch.zeros_like(weight, memory_format=torch.contiguous_format) if need_dw else weight.new_empty(0)
    db = torch.zeros_like(bias) if need_dw and bias is not None else weight.new_empty(0)
    buckets = (bucket(m), bucket(out_features), bucket(k))

    if need_dx:
        def dx_grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_K"]),)

        wrap_triton(_dx_kernel)[dx_grid](
            grad, z, weight, dx,
            m, k, out_features, o_max, groups,
            grad.stride(0), grad.stride(1), z.stride(0), weight.stride(0), weight.stride(1), dx.stride(0),
            *buckets,
            GELU=gelu, **dtypes,
        )
    if need_dw:
        b = dw if bias is None else db

        def dw_grid(meta):
            tiles = triton.cdiv(out_features, meta["BLOCK_N"]) * triton.cdiv(k, meta["BLOCK_K"])
            return (tiles, groups, _num_splits(m, tiles * groups, meta["BLOCK_M"], dw))

        wrap_triton(_dw_kernel)[dw_grid](
            grad, z, x, dw, b,
            m, k, out_features, o_max,
            grad.stride(0), grad.stride(1), z.stride(0), x.stride(0), x.stride(1),
            dw.stride(0), dw.stride(1), b.stride(0),
            *buckets,
            HAS_BIAS=bias is not None, GELU=gelu, **dtypes,
        )
    return dx, dw, db
