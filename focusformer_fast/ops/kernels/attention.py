"""Sliced attention: flash-style ``softmax(Q K^T / sqrt(d)) V`` for ``h`` heads of a ``[Q; K; V]`` projection.

Shapes: ``qkv`` ``[B, N, 3*h*d]`` (all Q heads, then K, then V; head-major inside each), read in
place through its strides (head ``i`` of Q at channels ``[i*d, (i+1)*d)``, of K at ``h*d + i*d``,
of V at ``2*h*d + i*d``); output ``[B, N, h*d]``; ``lse`` ``[B, h, N]`` float32, the base-2
log-sum-exp of the scaled scores ``log2(sum_j 2^(s_ij * log2(e)))``. ``dqkv`` has ``qkv``'s layout.
Any ``N`` (tails masked); ``d`` is a ``tl.constexpr`` (``BLOCK_D = next_pow2(d)``, masked).

Kernels (FlashAttention-2 schedule, no atomics):

* :func:`_fwd_kernel`: grid (Q blocks, B*h); online softmax over K/V blocks in ``exp2``.
* :func:`_bwd_dq_kernel`: grid (Q blocks, B*h); computes ``delta = rowsum(dO * O)`` for its rows
  (stored for the next kernel), then ``dQ`` over all K/V blocks.
* :func:`_bwd_dkdv_kernel`: grid (K/V blocks, B*h); ``dK``, ``dV`` over all Q blocks.

Each kernel runs on one fixed config (:data:`FIXED`); ``FOCUSFORMER_TRITON_AUTOTUNE=1`` autotunes
instead, keyed on the buckets of ``N`` and ``B*h`` and on ``d``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from focusformer_fast.ops.kernels._common import Kernel, bucket, dot_precision, tl_dtype

_LOG2E = 1.4426950408889634
_KEY = ["N_BUCKET", "BH_BUCKET", "HEAD_DIM"]


def _configs(sizes) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in sizes
    ]


_INTERPRET_CONFIG = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16})
_FWD_CONFIGS = _configs([(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 32, 4, 4)])
_BWD_CONFIGS = _configs([(64, 64, 4, 2), (64, 64, 8, 3), (128, 64, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3)])
FIXED = {"fwd": _FWD_CONFIGS[0], "dq": _BWD_CONFIGS[0], "dkdv": _BWD_CONFIGS[0]}
"""The config each kernel runs (the first of its autotuning list)."""


@triton.jit
def _head_bases(qkv_ptr, b, h, H, stride_b, stride_c, HEAD_DIM: tl.constexpr):
    """Pointers to head ``h`` of image ``b`` in the Q, K and V blocks of a ``[B, N, 3*H*HEAD_DIM]`` tensor."""
    q_base = qkv_ptr + b * stride_b + h * HEAD_DIM * stride_c
    k_base = q_base + H * HEAD_DIM * stride_c
    return q_base, k_base, k_base + H * HEAD_DIM * stride_c


@triton.jit(do_not_specialize=["N", "N_BUCKET", "BH_BUCKET"])
def _fwd_kernel(
    qkv_ptr, o_ptr, lse_ptr,
    N, H, stride_b, stride_n, stride_c, stride_ob, stride_on, qk_scale,
    N_BUCKET, BH_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CDT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    q_base, k_base, v_base = _head_bases(qkv_ptr, b, h, H, stride_b, stride_c, HEAD_DIM)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N
    mask_d = offs_d < HEAD_DIM
    q = tl.load(q_base + offs_m[:, None] * stride_n + offs_d[None, :] * stride_c,
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    q = q.to(CDT)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    kv_offs = offs_n[:, None] * stride_n + offs_d[None, :] * stride_c
    for n0 in range(0, N, BLOCK_N):
        mask_n = offs_n < N - n0
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_base + n0 * stride_n + kv_offs, mask=kv_mask, other=0.0)
        v = tl.load(v_base + n0 * stride_n + kv_offs, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k.to(CDT)), input_precision=PRECISION) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(CDT), v.to(CDT), input_precision=PRECISION)
        m_i = m_new

    o = acc / l_i[:, None]
    o_ptrs = o_ptr + b * stride_ob + offs_m[:, None] * stride_on + (h * HEAD_DIM + offs_d)[None, :]
    tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    tl.store(lse_ptr + bh * N + offs_m, m_i + tl.math.log2(l_i), mask=mask_m)


@triton.jit(do_not_specialize=["N", "N_BUCKET", "BH_BUCKET"])
def _bwd_dq_kernel(
    qkv_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, dqkv_ptr,
    N, H, stride_b, stride_n, stride_c, stride_ob, stride_on, stride_dob, stride_don, stride_doc,
    stride_gb, stride_gn, stride_gc, qk_scale, sm_scale,
    N_BUCKET, BH_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CDT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    q_base, k_base, v_base = _head_bases(qkv_ptr, b, h, H, stride_b, stride_c, HEAD_DIM)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N
    mask_d = offs_d < HEAD_DIM
    mask_md = mask_m[:, None] & mask_d[None, :]
    q = tl.load(q_base + offs_m[:, None] * stride_n + offs_d[None, :] * stride_c, mask=mask_md, other=0.0)
    do = tl.load(do_ptr + b * stride_dob + offs_m[:, None] * stride_don + (h * HEAD_DIM + offs_d)[None, :] * stride_doc,
                 mask=mask_md, other=0.0)
    o = tl.load(o_ptr + b * stride_ob + offs_m[:, None] * stride_on + (h * HEAD_DIM + offs_d)[None, :],
                mask=mask_md, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    tl.store(delta_ptr + bh * N + offs_m, delta, mask=mask_m)
    lse = tl.load(lse_ptr + bh * N + offs_m, mask=mask_m, other=0.0)
    q = q.to(CDT)
    do = do.to(CDT)

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    kv_offs = offs_n[:, None] * stride_n + offs_d[None, :] * stride_c
    for n0 in range(0, N, BLOCK_N):
        mask_n = offs_n < N - n0
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_base + n0 * stride_n + kv_offs, mask=kv_mask, other=0.0)
        v = tl.load(v_base + n0 * stride_n + kv_offs, mask=kv_mask, other=0.0)
        k = k.to(CDT)
        v = v.to(CDT)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.where(mask_n[None, :], tl.math.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(CDT), k, dq, input_precision=PRECISION)

    dq_ptrs = dqkv_ptr + b * stride_gb + offs_m[:, None] * stride_gn + (h * HEAD_DIM + offs_d)[None, :] * stride_gc
    tl.store(dq_ptrs, (dq * sm_scale).to(dqkv_ptr.dtype.element_ty), mask=mask_md)


@triton.jit(do_not_specialize=["N", "N_BUCKET", "BH_BUCKET"])
def _bwd_dkdv_kernel(
    qkv_ptr, do_ptr, lse_ptr, delta_ptr, dqkv_ptr,
    N, H, stride_b, stride_n, stride_c, stride_dob, stride_don, stride_doc,
    stride_gb, stride_gn, stride_gc, qk_scale, sm_scale,
    N_BUCKET, BH_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CDT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    q_base, k_base, v_base = _head_bases(qkv_ptr, b, h, H, stride_b, stride_c, HEAD_DIM)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    mask_d = offs_d < HEAD_DIM
    mask_nd = mask_n[:, None] & mask_d[None, :]
    k = tl.load(k_base + offs_n[:, None] * stride_n + offs_d[None, :] * stride_c, mask=mask_nd, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * stride_n + offs_d[None, :] * stride_c, mask=mask_nd, other=0.0)
    k = k.to(CDT)
    v = v.to(CDT)

    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    q_offs = offs_m[:, None] * stride_n + offs_d[None, :] * stride_c
    do_base = do_ptr + b * stride_dob + h * HEAD_DIM * stride_doc
    do_offs = offs_m[:, None] * stride_don + offs_d[None, :] * stride_doc
    for m0 in range(0, N, BLOCK_M):
        mask_m = offs_m < N - m0
        mask_md = mask_m[:, None] & mask_d[None, :]
        q = tl.load(q_base + m0 * stride_n + q_offs, mask=mask_md, other=0.0)
        do = tl.load(do_base + m0 * stride_don + do_offs, mask=mask_md, other=0.0)
        q = q.to(CDT)
        do = do.to(CDT)
        lse = tl.load(lse_ptr + bh * N + m0 + offs_m, mask=mask_m, other=0.0)
        delta = tl.load(delta_ptr + bh * N + m0 + offs_m, mask=mask_m, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
        pt = tl.where(mask_m[None, :], tl.math.exp2(st - lse[None, :]), 0.0)
        dv = tl.dot(pt.to(CDT), do, dv, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(CDT), q, dk, input_precision=PRECISION)

    rows = b * stride_gb + offs_n[:, None] * stride_gn
    dk_ptrs = dqkv_ptr + rows + (H * HEAD_DIM + h * HEAD_DIM + offs_d)[None, :] * stride_gc
    dv_ptrs = dqkv_ptr + rows + (2 * H * HEAD_DIM + h * HEAD_DIM + offs_d)[None, :] * stride_gc
    tl.store(dk_ptrs, (dk * sm_scale).to(dqkv_ptr.dtype.element_ty), mask=mask_nd)
    tl.store(dv_ptrs, dv.to(dqkv_ptr.dtype.element_ty), mask=mask_nd)


_FWD = Kernel(_fwd_kernel, _FWD_CONFIGS, _INTERPRET_CONFIG, key=_KEY)
_DQ = Kernel(_bwd_dq_kernel, _BWD_CONFIGS, _INTERPRET_CONFIG, key=_KEY)
_DKDV = Kernel(_bwd_dkdv_kernel, _BWD_CONFIGS, _INTERPRET_CONFIG, key=_KEY)


def _scales(head_dim: int) -> tuple[float, float]:
    sm_scale = head_dim**-0.5
    return sm_scale, sm_scale * _LOG2E


def _meta(head_dim: int, dtype: torch.dtype) -> dict:
    return dict(
        HEAD_DIM=head_dim,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        CDT=tl_dtype(dtype),
        PRECISION=dot_precision(dtype),
    )


def forward(qkv: Tensor, num_heads: int, head_dim: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Attention of ``qkv`` ``[B, N, 3*h*d]`` (any strides): ``(out [B, N, h*d] in dtype, lse [B, h, N])``.

    ``dtype`` is the compute dtype of both matmuls (the autocast dtype, else ``qkv.dtype``).
    """
    b, n, _ = qkv.shape
    out = qkv.new_empty((b, n, num_heads * head_dim), dtype=dtype)
    lse = qkv.new_empty((b, num_heads, n), dtype=torch.float32)
    _, qk_scale = _scales(head_dim)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]), b * num_heads)

    _FWD.launch(
        grid, FIXED["fwd"],
        qkv, out, lse,
        n, num_heads, qkv.stride(0), qkv.stride(1), qkv.stride(2), out.stride(0), out.stride(1), qk_scale,
        bucket(n), bucket(b * num_heads),
        **_meta(head_dim, dtype),
    )
    return out, lse


def backward(
    grad: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, num_heads: int, head_dim: int, dtype: torch.dtype
) -> Tensor:
    """Gradient ``dqkv`` (``qkv``'s shape and dtype) of :func:`forward` given ``grad`` ``[B, N, h*d]``."""
    b, n, _ = qkv.shape
    dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    delta = torch.empty_like(lse)
    sm_scale, qk_scale = _scales(head_dim)
    common = _meta(head_dim, dtype)
    buckets = (bucket(n), bucket(b * num_heads))

    def dq_grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]), b * num_heads)

    def dkdv_grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]), b * num_heads)

    _DQ.launch(
        dq_grid, FIXED["dq"],
        qkv, out, grad, lse, delta, dqkv,
        n, num_heads, qkv.stride(0), qkv.stride(1), qkv.stride(2), out.stride(0), out.stride(1),
        grad.stride(0), grad.stride(1), grad.stride(2), dqkv.stride(0), dqkv.stride(1), dqkv.stride(2),
        qk_scale, sm_scale, *buckets, **common,
    )
    _DKDV.launch(
        dkdv_grid, FIXED["dkdv"],
        qkv, grad, lse, delta, dqkv,
        n, num_heads, qkv.stride(0), qkv.stride(1), qkv.stride(2),
        grad.stride(0), grad.stride(1), grad.stride(2), dqkv.stride(0), dqkv.stride(1), dqkv.stride(2),
        qk_scale, sm_scale, *buckets, **common,
    )
    return dqkv
