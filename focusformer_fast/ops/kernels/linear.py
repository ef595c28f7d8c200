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
  splits of M). One split stores straight into the slice of a full-size zero gradient. More
  splits (when the tiles alone would leave multiprocessors idle) add atomically into it for a
  float32 gradient outside deterministic mode; otherwise each split stores float32 partial sums
  that :func:`_dw_reduce_kernel` adds up in split order.

How the main loops stay software-pipelined at any width (``docs/kernels.md``):

* each reduction loop runs over whole tiles only, with no mask along the reduction; the partial
  tile is a masked tail after the loop. Rows past the output's edge are wrapped (``% M``,
  ``% O``) into valid rows rather than masked; a column edge is masked only with a bound the
  compiler knows to be a multiple of the vector width;
* sizes, row strides and group steps arrive divided by the power of two ``*_ALIGN`` (at most
  16 bytes) that divides them, and are multiplied back in the kernel, so the compiler knows every
  row starts on an ``ALIGN``-element boundary and issues vector ``cp.async`` copies of up to 16 bytes;
* sizes and strides are not specialized on (``do_not_specialize``): a new subnet width reuses the
  compiled variant of its alignment class.

Block sizes are fixed per shape class (:func:`~focusformer_fast.ops.kernels.linear_tiles.tiles`);
``FOCUSFORMER_TRITON_AUTOTUNE=1`` autotunes over
:data:`~focusformer_fast.ops.kernels.linear_tiles.CONFIGS` instead, keyed on power-of-two
buckets of M, O and K.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from focusformer_fast.ops.kernels._common import Kernel, align, bucket, dot_precision, num_sms, tl_dtype
from focusformer_fast.ops.kernels.linear_tiles import CONFIGS, INTERPRET_CONFIG, KEY, SIZES, configs, tiles

_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)

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


@triton.jit(do_not_specialize=SIZES + ["stride_xm", "stride_wn", "stride_rm", "stride_cm"])
def _fwd_kernel(
    x_ptr, w_ptr, b_ptr, r_ptr, out_ptr, z_ptr,
    M, K, O, O_MAX,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_b, stride_rm, stride_rn, stride_cm,
    M_BUCKET, O_BUCKET, K_BUCKET,
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    CDT: tl.constexpr, PRECISION: tl.constexpr,
    A_ALIGN: tl.constexpr, B_ALIGN: tl.constexpr, C_ALIGN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Divided by their alignment on arrival: K and x's row stride (A_ALIGN), the weight's row
    # stride (B_ALIGN), O and the row strides of out, z ([M, G*O], row stride stride_cm) and the
    # residual (C_ALIGN).
    k_tail = (K % (BLOCK_K // A_ALIGN)) * A_ALIGN
    K = K * A_ALIGN
    stride_xm = stride_xm * A_ALIGN
    stride_wn = stride_wn * B_ALIGN
    O = O * C_ALIGN
    stride_rm = stride_rm * C_ALIGN
    stride_cm = stride_cm * C_ALIGN
    pid = tl.program_id(0)
    g = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(O, BLOCK_N)
    pid_m, pid_n = _grouped_tile(pid, num_m, num_n, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    w_rows = g * O_MAX + offs_n % O
    x_ptrs = x_ptr + (offs_m % M)[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + w_rows[None, :] * stride_wn + offs_k[:, None] * stride_wk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, K - k_tail, BLOCK_K):
        a = tl.load(x_ptrs)
        b = tl.load(w_ptrs)
        acc = tl.dot(a.to(CDT), b.to(CDT), acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    if k_tail > 0:
        mask_k = offs_k < k_tail
        a = tl.load(x_ptrs, mask=mask_k[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=mask_k[:, None], other=0.0)
        acc = tl.dot(a.to(CDT), b.to(CDT), acc, input_precision=PRECISION)

    mask_n = offs_n < O
    if HAS_BIAS:
        acc += tl.load(b_ptr + (g * O_MAX + offs_n) * stride_b, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    mask = (offs_m < M)[:, None] & mask_n[None, :]
    cols = g * O + offs_n
    c_offs = offs_m[:, None] * stride_cm + cols[None, :]
    if GELU:
        tl.store(z_ptr + c_offs, acc.to(z_ptr.dtype.element_ty), mask=mask)
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * _SQRT1_2))
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + offs_m[:, None] * stride_rm + cols[None, :] * stride_rn, mask=mask, other=0.0)
        acc += r.to(tl.float32)
    tl.store(out_ptr + c_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dz_tile(dy_ptrs, z_ptrs, mask, GELU: tl.constexpr):
    """A ``grad_out`` tile times ``gelu'`` of the pre-activation tile when ``GELU``, in float32."""
    dz = tl.load(dy_ptrs, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        dz = dz * _gelu_grad(tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32))
    return dz


@triton.jit(do_not_specialize=SIZES + ["G", "stride_dym", "stride_zm", "stride_wn", "stride_dxm"])
def _dx_kernel(
    dy_ptr, z_ptr, w_ptr, dx_ptr,
    M, K, O, O_MAX, G,
    stride_dym, stride_dyn, stride_zm, stride_wn, stride_wk, stride_dxm,
    M_BUCKET, O_BUCKET, K_BUCKET,
    GELU: tl.constexpr, CDT: tl.constexpr, PRECISION: tl.constexpr,
    A_ALIGN: tl.constexpr, B_ALIGN: tl.constexpr, C_ALIGN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Output tile [BLOCK_M, BLOCK_K] of dx; BLOCK_N steps through the reduction over O per group.
    # Divided by their alignment on arrival: O and the row strides of grad_out and z ([M, G*O])
    # (A_ALIGN), K and the weight's row stride (B_ALIGN), dx's row stride (C_ALIGN).
    o_tail = (O % (BLOCK_N // A_ALIGN)) * A_ALIGN
    O = O * A_ALIGN
    stride_dym = stride_dym * A_ALIGN
    stride_zm = stride_zm * A_ALIGN
    K = K * B_ALIGN
    stride_wn = stride_wn * B_ALIGN
    stride_dxm = stride_dxm * C_ALIGN
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_k = tl.cdiv(K, BLOCK_K)
    pid_m, pid_k = _grouped_tile(pid, num_m, num_k, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    mask_k = (offs_k < K)[None, :]
    rows = (offs_m % M)[:, None]
    dy_base = dy_ptr + rows * stride_dym + offs_n[None, :] * stride_dyn
    z_base = z_ptr + rows * stride_zm + offs_n[None, :]
    w_base = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk

    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    full = O // BLOCK_N
    for t in range(0, G * full):
        g = t // full
        n0 = (t - g * full) * BLOCK_N
        dz = tl.load(dy_base + (g * O + n0) * stride_dyn).to(tl.float32)
        if GELU:
            dz = dz * _gelu_grad(tl.load(z_base + g * O + n0).to(tl.float32))
        w = tl.load(w_base + (g * O_MAX + n0) * stride_wn, mask=mask_k, other=0.0)
        acc = tl.dot(dz.to(CDT), w.to(CDT), acc, input_precision=PRECISION)
    n0 = full * BLOCK_N
    if o_tail > 0:
        mask_n = offs_n < o_tail
        for g in range(0, G):
            dz = _dz_tile(dy_base + (g * O + n0) * stride_dyn, z_base + g * O + n0, mask_n[None, :], GELU)
            w = tl.load(w_base + (g * O_MAX + n0) * stride_wn, mask=mask_n[:, None] & mask_k, other=0.0)
            acc = tl.dot(dz.to(CDT), w.to(CDT), acc, input_precision=PRECISION)

    mask = (offs_m < M)[:, None] & mask_k
    tl.store(dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :], acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=SIZES + ["rows_per_split", "stride_dym", "stride_zm", "stride_xm", "stride_dwn",
                                        "stride_pn"])
def _dw_kernel(
    dy_ptr, z_ptr, x_ptr, dw_ptr, db_ptr, dw_part_ptr, db_part_ptr,
    M, K, O, O_MAX, rows_per_split,
    stride_dym, stride_dyn, stride_zm, stride_xm, stride_xk, stride_dwn, stride_dwk, stride_db, stride_pn,
    M_BUCKET, O_BUCKET, K_BUCKET,
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr, CDT: tl.constexpr, PRECISION: tl.constexpr,
    SPLIT_MODE: tl.constexpr,
    A_ALIGN: tl.constexpr, B_ALIGN: tl.constexpr, C_ALIGN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Output tile [BLOCK_N, BLOCK_K] of group g's weight slice; BLOCK_M steps through this split's
    # rows [split * rows_per_split, ...), rows_per_split a multiple of BLOCK_M.
    # SPLIT_MODE 0: store into dw/db; 1: atomic add into them; 2: store float32 partial sums into
    # dw_part [splits, G*O, K] (row stride stride_pn) and db_part [splits, G*O].
    # Divided by their alignment on arrival: O and the row strides of grad_out and z (A_ALIGN), K
    # and x's row stride (B_ALIGN), the row strides of dw and dw_part (C_ALIGN).
    O = O * A_ALIGN
    stride_dym = stride_dym * A_ALIGN
    stride_zm = stride_zm * A_ALIGN
    K = K * B_ALIGN
    stride_xm = stride_xm * B_ALIGN
    stride_dwn = stride_dwn * C_ALIGN
    stride_pn = stride_pn * C_ALIGN
    pid = tl.program_id(0)
    g = tl.program_id(1)
    split = tl.program_id(2)
    num_k = tl.cdiv(K, BLOCK_K)
    pid_n = pid // num_k
    pid_k = pid % num_k

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_m = tl.arange(0, BLOCK_M)
    mask_n = offs_n < O
    mask_k = offs_k < K
    rows = split * rows_per_split + offs_m
    dy_ptrs = dy_ptr + rows[:, None] * stride_dym + (g * O + offs_n)[None, :] * stride_dyn
    z_ptrs = z_ptr + rows[:, None] * stride_zm + (g * O + offs_n)[None, :]
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    m_count = min(M - split * rows_per_split, rows_per_split)
    m_main = m_count - m_count % BLOCK_M
    for _ in range(0, m_main, BLOCK_M):
        dz = _dz_tile(dy_ptrs, z_ptrs, mask_n[None, :], GELU)
        x = tl.load(x_ptrs, mask=mask_k[None, :], other=0.0)
        acc = tl.dot(tl.trans(dz.to(CDT)), x.to(CDT), acc, input_precision=PRECISION)
        if HAS_BIAS:
            db += tl.sum(dz, axis=0)
        dy_ptrs += BLOCK_M * stride_dym
        z_ptrs += BLOCK_M * stride_zm
        x_ptrs += BLOCK_M * stride_xm
    if m_main < m_count:
        mask_m = (offs_m < m_count - m_main)[:, None]
        dz = _dz_tile(dy_ptrs, z_ptrs, mask_m & mask_n[None, :], GELU)
        x = tl.load(x_ptrs, mask=mask_m & mask_k[None, :], other=0.0)
        acc = tl.dot(tl.trans(dz.to(CDT)), x.to(CDT), acc, input_precision=PRECISION)
        if HAS_BIAS:
            db += tl.sum(dz, axis=0)

    mask = mask_n[:, None] & mask_k[None, :]
    if SPLIT_MODE == 2:
        part_rows = split * (tl.num_programs(1) * O) + g * O + offs_n
        tl.store(dw_part_ptr + part_rows[:, None] * stride_pn + offs_k[None, :], acc, mask=mask)
        if HAS_BIAS:
            if pid_k == 0:
                tl.store(db_part_ptr + part_rows, db, mask=mask_n)
    else:
        w_rows = g * O_MAX + offs_n
        dw_ptrs = dw_ptr + w_rows[:, None] * stride_dwn + offs_k[None, :] * stride_dwk
        if SPLIT_MODE == 0:
            tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=mask)
        else:
            tl.atomic_add(dw_ptrs, acc, mask=mask)
        if HAS_BIAS:
            if pid_k == 0:
                if SPLIT_MODE == 0:
                    tl.store(db_ptr + w_rows * stride_db, db.to(db_ptr.dtype.element_ty), mask=mask_n)
                else:
                    tl.atomic_add(db_ptr + w_rows * stride_db, db, mask=mask_n)


@triton.jit
def _dw_reduce_kernel(
    dw_part_ptr, db_part_ptr, dw_ptr, db_ptr,
    S, ROWS, K, O, O_MAX, stride_dwn, stride_dwk, stride_db,
    HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Sums the S partial gradients [S, ROWS = G*O, K] in split order into the used rows of dw
    # (row r = g*O + o goes to g*O_MAX + o) and, in the programs of the first K block, db.
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_r = offs_r < ROWS
    mask = mask_r[:, None] & (offs_k < K)[None, :]
    acc = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    db = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for s in range(0, S):
        acc += tl.load(dw_part_ptr + (s * ROWS + offs_r)[:, None] * K + offs_k[None, :], mask=mask, other=0.0)
        if HAS_BIAS:
            db += tl.load(db_part_ptr + s * ROWS + offs_r, mask=mask_r, other=0.0)
    w_rows = (offs_r // O) * O_MAX + offs_r % O
    tl.store(dw_ptr + w_rows[:, None] * stride_dwn + offs_k[None, :] * stride_dwk,
             acc.to(dw_ptr.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        if tl.program_id(1) == 0:
            tl.store(db_ptr + w_rows * stride_db, db.to(db_ptr.dtype.element_ty), mask=mask_r)


_FWD = Kernel(_fwd_kernel, configs(CONFIGS, GROUP_M=8), triton.Config({**INTERPRET_CONFIG.kwargs, "GROUP_M": 2}),
              key=KEY)
_DX = Kernel(_dx_kernel, configs(CONFIGS, GROUP_M=8), triton.Config({**INTERPRET_CONFIG.kwargs, "GROUP_M": 2}),
             key=KEY)
_DW = Kernel(_dw_kernel, configs(CONFIGS), INTERPRET_CONFIG, key=KEY, reset_to_zero=["dw_ptr", "db_ptr"])


def _compute(dtype: torch.dtype) -> dict:
    return dict(CDT=tl_dtype(dtype), PRECISION=dot_precision(dtype))


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
        x: ``[M, K]`` activations (any strides; fastest with unit column stride).
        weight: ``[groups*O_max, K_max]`` super-weight, or its copy in ``dtype``; bias:
            ``[groups*O_max]`` (any float dtype) or ``None``.
        out_features: ``O``, rows used per group.
        residual: ``[M, groups*O]`` or ``None``.
        dtype: compute dtype of the matmul (the autocast dtype, else ``x.dtype``); operands of
            another dtype are converted as they are loaded.

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
    a_align = align(x.element_size(), x.stride(0), k)
    b_align = align(weight.element_size(), weight.stride(0))
    c_align = align(min(out.element_size(), z.element_size(), r.element_size()), n, out_features, r.stride(0))

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(out_features, meta["BLOCK_N"]), groups)

    b = weight if bias is None else bias
    _FWD.launch(
        grid, tiles("fwd", m, max(x.element_size(), weight.element_size())),
        x, weight, b, r, out, z,
        m, k // a_align, out_features // c_align, o_max,
        x.stride(0) // a_align, x.stride(1), weight.stride(0) // b_align, weight.stride(1), b.stride(0),
        r.stride(0) // c_align, r.stride(1), n // c_align,
        bucket(m), bucket(out_features), bucket(k),
        HAS_BIAS=bias is not None, GELU=gelu, HAS_RESIDUAL=residual is not None,
        A_ALIGN=a_align, B_ALIGN=b_align, C_ALIGN=c_align, **_compute(dtype),
    )
    return out, preact


def split_plan(m: int, tiles_: int, block_m: int, sms: int, exact: bool) -> tuple[int, int, int]:
    """``(splits, rows_per_split, mode)`` of the weight-gradient reduction over ``m`` rows.

    ``tiles_`` output tiles alone would occupy ``tiles_`` of the ``sms`` multiprocessors; the M
    reduction is split until every multiprocessor has a program, each split at least two
    ``block_m`` row tiles. ``rows_per_split`` is a multiple of ``block_m``. ``mode`` (the kernel's
    ``SPLIT_MODE``): 0 one split, stored; 1 atomic adds (a float32 gradient, ``exact`` False);
    2 float32 partial sums added up in split order (deterministic, any gradient dtype).
    """
    splits = max(1, min(triton.cdiv(sms, tiles_), m // (2 * block_m)))
    rows_per_split = triton.cdiv(triton.cdiv(max(m, 1), block_m), splits) * block_m
    splits = triton.cdiv(max(m, 1), rows_per_split)
    return splits, rows_per_split, 0 if splits == 1 else (2 if exact else 1)


def _weight_grad(grad, z, x, dw, db, bias, out_features, groups, gelu, dtype, a_align) -> None:
    """Launch :func:`_dw_kernel` (and :func:`_dw_reduce_kernel` for partial sums) into ``dw``, ``db``."""
    m, k = x.shape
    n = groups * out_features
    o_max = dw.shape[0] // groups
    config = _DW.config(tiles("dw", m, max(grad.element_size(), x.element_size()), gelu))
    if config is None:  # autotuned: one split, any BLOCK_M
        splits, rows_per_split, mode = 1, max(m, 1), 0
    else:
        blocks = triton.cdiv(out_features, config.kwargs["BLOCK_N"]) * triton.cdiv(k, config.kwargs["BLOCK_K"])
        exact = dw.dtype != torch.float32 or torch.are_deterministic_algorithms_enabled()
        splits, rows_per_split, mode = split_plan(m, blocks * groups, config.kwargs["BLOCK_M"], num_sms(x.device),
                                                  exact)
    part = x.new_empty((splits, n, k) if mode == 2 else (0,), dtype=torch.float32)
    db_part = x.new_empty((splits, n) if mode == 2 and bias is not None else (0,), dtype=torch.float32)
    b = dw if bias is None else db
    b_align = align(x.element_size(), x.stride(0), k)
    c_align = align(4, k, dw.stride(0)) if mode == 2 else align(dw.element_size(), dw.stride(0))

    def grid(meta):
        return (triton.cdiv(out_features, meta["BLOCK_N"]) * triton.cdiv(k, meta["BLOCK_K"]), groups, splits)

    _DW.launch(
        grid, config,
        grad, z, x, dw, b, part, db_part,
        m, k // b_align, out_features // a_align, o_max, rows_per_split,
        grad.stride(0) // a_align, grad.stride(1), z.stride(0) // a_align, x.stride(0) // b_align, x.stride(1),
        dw.stride(0) // c_align, dw.stride(1), b.stride(0), k // c_align,
        bucket(m), bucket(out_features), bucket(k),
        HAS_BIAS=bias is not None, GELU=gelu, SPLIT_MODE=mode,
        A_ALIGN=a_align, B_ALIGN=b_align, C_ALIGN=c_align, **_compute(dtype),
    )
    if mode == 2:
        wrap_triton(_dw_reduce_kernel)[(triton.cdiv(n, 32), triton.cdiv(k, 128))](
            part, db_part, dw, b, splits, n, k, out_features, o_max, dw.stride(0), dw.stride(1), b.stride(0),
            HAS_BIAS=bias is not None, BLOCK_R=32, BLOCK_K=128, num_warps=4,
        )


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
    grad_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the backward kernels.

    Args:
        grad: ``[M, groups*O]`` gradient of ``out`` (any strides).
        x, weight, bias, out_features, groups, gelu, dtype: as in :func:`forward` (``weight`` the
            tensor the GEMMs read: the super-weight or its copy in ``dtype``).
        preact: the pre-activation :func:`forward` returned (used when ``gelu``).
        need_dx: compute ``dx``; need_dw: compute the weight and bias gradients.
        grad_dtype: dtype of ``dw`` and ``db`` (default ``weight.dtype``).

    Returns:
        ``dx`` ``[M, K]`` in ``x.dtype``; ``dw`` full-size ``weight.shape``, zero outside the
        used slice; ``db`` full-size ``[groups*O_max]``, likewise. Each is an empty tensor when
        not requested (``db`` also when ``bias`` is ``None``).
    """
    m, k = x.shape
    o_max = weight.shape[0] // groups
    grad_dtype = grad_dtype or weight.dtype
    z = preact if gelu else grad
    dx = x.new_empty((m, k) if need_dx else (0,))
    dw = weight.new_zeros(weight.shape, dtype=grad_dtype) if need_dw else weight.new_empty(0)
    db = weight.new_zeros(weight.shape[0], dtype=grad_dtype) if need_dw and bias is not None else weight.new_empty(0)
    # grad_out and z share the A operand's alignment: of their rows and of O, where each group starts
    a_align = align(min(grad.element_size(), z.element_size()), grad.stride(0), z.stride(0), out_features)
    if need_dx:
        b_align = align(weight.element_size(), weight.stride(0), k)
        c_align = align(dx.element_size(), dx.stride(0))

        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_K"]),)

        _DX.launch(
            grid, tiles("dx", m, max(grad.element_size(), weight.element_size()), gelu),
            grad, z, weight, dx,
            m, k // b_align, out_features // a_align, o_max, groups,
            grad.stride(0) // a_align, grad.stride(1), z.stride(0) // a_align, weight.stride(0) // b_align,
            weight.stride(1), dx.stride(0) // c_align,
            bucket(m), bucket(out_features), bucket(k),
            GELU=gelu, A_ALIGN=a_align, B_ALIGN=b_align, C_ALIGN=c_align, **_compute(dtype),
        )
    if need_dw:
        _weight_grad(grad, z, x, dw, db, bias, out_features, groups, gelu, dtype, a_align)
    return dx, dw, db
