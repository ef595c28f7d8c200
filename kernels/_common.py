"""Helpers shared by the Triton kernels: interpreter switch, autotuning, compute dtypes, device facts.

Kernels take their compute dtype as a ``tl.constexpr`` Triton dtype (``CDT``) and convert
operands to it in registers after loading, so float32 activations or super-weights feed
bfloat16 tensor-core dots under autocast without a copy.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""True when Triton runs kernels in its CPU interpreter (read by Triton at import, as here)."""

_TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def tl_dtype(dtype: torch.dtype) -> tl.dtype:
    """The Triton dtype of compute dtype ``dtype``; raises ``TypeError`` for unsupported dtypes."""
    try:
        return _TL_DTYPE[dtype]
    except KeyError:
        raise TypeError(
            f"dtype={dtype} is not supported by the Triton kernels; allowed: float32, float16, bfloat16"
        ) from None


def autotune(configs: list[triton.Config], interpret_config: triton.Config, key: list[str], **kwargs):
    """``triton.autotune`` over ``configs``; under the interpreter, over ``interpret_config`` alone.

    The interpreter cannot benchmark (no driver), and one config is never benchmarked.
    ``key`` should name width *buckets* (see :func:`bucket`), not raw widths, so that a stream
    of random subnets re-uses the tuned configs instead of re-tuning at every new width.
    """
    return triton.autotune(configs=[interpret_config] if INTERPRET else configs, key=key, **kwargs)


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
