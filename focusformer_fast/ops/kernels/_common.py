"""Helpers shared by the Triton kernels: interpreter switch, launching (fixed configs or autotuning),
alignment hints, compute dtypes, device facts.

Kernels take their compute dtype as a ``tl.constexpr`` Triton dtype (``CDT``) and convert
operands of another dtype to it after loading. The host code gives them operands already in
that dtype where it can (a super-weight's cast copy, made once per optimizer step by
``focusformer_fast.ops.casts``), so the tensor cores read them straight from shared memory.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""True when Triton runs kernels in its CPU interpreter (read by Triton at import, as here)."""
AUTOTUNE = os.environ.get("FOCUSFORMER_TRITON_AUTOTUNE", "0") == "1"
"""True when kernels with a config list are autotuned instead of run on their fixed config per shape class."""

_TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def tl_dtype(dtype: torch.dtype) -> tl.dtype:
    """The Triton dtype of compute dtype ``dtype``; raises ``TypeError`` for unsupported dtypes."""
    try:
        return _TL_DTYPE[dtype]
    except KeyError:
        raise TypeError(
            f"dtype={dtype} is not supported by the Triton kernels; allowed: float32, float16, bfloat16"
        ) from None


class Kernel:
    """A Triton kernel run on a fixed config per call, or autotuned (``FOCUSFORMER_TRITON_AUTOTUNE=1``).

    The fixed config is chosen by the caller per shape class, so a stream of subnets compiles
    one variant per class and benchmarks nothing. Autotuning (opt-in) runs ``triton.autotune``
    over ``configs``, keyed by ``key`` (width *buckets*, see :func:`bucket`), with the tuned
    choices kept in Triton's on-disk cache. Under the interpreter every launch uses
    ``interpret_config``: small blocks, so tiny test shapes still cover the tails.
    """

    def __init__(self, fn, configs: list[triton.Config], interpret_config: triton.Config, key: list[str],
                 **autotune_kwargs):
        self.fn = fn
        self.interpret_config = interpret_config
        self.tuner = None
        if AUTOTUNE and not INTERPRET:
            self.tuner = triton.autotune(configs=configs, key=key, cache_results=True, **autotune_kwargs)(fn)

    @property
    def autotuned(self) -> bool:
        return self.tuner is not None

    def config(self, fixed: triton.Config) -> triton.Config | None:
        """The config a launch with ``fixed`` runs: ``fixed``, the interpreter's, or None when autotuned."""
        if self.tuner is not None:
            return None
        return self.interpret_config if INTERPRET else fixed

    def launch(self, grid, fixed: triton.Config | None, *args, **kwargs) -> None:
        """Run the kernel on ``grid`` with ``fixed`` (see :meth:`config`) through ``wrap_triton``."""
        if self.tuner is not None:
            wrap_triton(self.tuner)[grid](*args, **kwargs)
            return
        config = self.config(fixed)
        wrap_triton(self.fn)[grid](*args, **kwargs, **config.kwargs, num_warps=config.num_warps,
                                   num_stages=config.num_stages)


def align(elem: int, *strides: int) -> int:
    """The largest power of two ``p <= 16 // elem`` dividing every stride (in elements).

    A kernel told that a tensor's row strides are multiples of ``p`` knows each row of a
    16-byte-aligned tensor starts on a ``p * elem``-byte boundary, and can copy rows with
    vector loads of that width (16 bytes at most).
    """
    p = max(1, 16 // elem)
    while p > 1 and any(s % p for s in strides):
        p //= 2
    return p


def bucket(n: int) -> int:
    """The autotuning bucket of a width or row count: the next power of two."""
    return triton.next_power_of_2(n)


@functools.cache
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; 4 for CPU tensors (interpreter), so split paths run."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: float32 dots follow ``torch.get_float32_matmul_precision()``."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"
