"""The sliced linear kernels' block sizes: fixed per shape class (:func:`tiles`), or the autotuning
candidates (:data:`CONFIGS`, ``FOCUSFORMER_TRITON_AUTOTUNE=1``) keyed on power-of-two buckets."""

from __future__ import annotations

import triton

SIZES = ["M", "K", "O", "O_MAX", "M_BUCKET", "O_BUCKET", "K_BUCKET"]
KEY = ["M_BUCKET", "O_BUCKET", "K_BUCKET"]


def configs(bm_bn_bk_warps_stages, **extra) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, **extra}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in bm_bn_bk_warps_stages
    ]


CONFIGS = [
    (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (64, 64, 32, 4, 5),
]
INTERPRET_CONFIG = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32})


def tiles(kind: str, m: int, elem: int, gelu: bool = False) -> triton.Config:
    """The fixed config of kernel ``kind`` (``fwd``, ``dx``, ``dw``) for ``m`` rows whose widest
    operand has ``elem``-byte elements; ``gelu``: the kernel applies GELU's derivative to its tiles.

    Two shape classes: ``m >= 4096`` rows (a training batch of tokens) and fewer (a classifier
    head, a small batch). Float32 operands take half as deep a reduction step, so a stage holds
    the same bytes; so does the weight gradient when it computes GELU's derivative in registers
    (the step that keeps ``_dw_kernel`` free of spills). The block names follow each kernel's
    own axes (see the kernels).
    """
    big = m >= 4096
    step = 64 if elem == 2 else 32
    if kind == "dw":  # BLOCK_N x BLOCK_K output tile, BLOCK_M the reduction step
        bm, bn, bk, warps = (step if not gelu else 32, 128, 128, 8) if big else (32, 64, 64, 4)
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=3)
    if kind == "dx":  # BLOCK_M x BLOCK_K output tile, BLOCK_N the reduction step
        bm, bn, bk, warps = (128, step, 128, 8) if big else (64, step, 64, 4)
    else:
        bm, bn, bk, warps = (128, 128, step, 8) if big else (64, 64, step, 4)
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=warps,
                         num_stages=3)
