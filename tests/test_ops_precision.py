"""The compute-dtype rules the fast backends follow (``ops.precision``): float32 without autocast, the
autocast dtype under it, float64 kept, no compute dtype for integers."""

import torch

from focusformer_fast.ops import precision


def test_float_precision_rules():
    """The compute-dtype rules the fast backends follow (``ops.precision``)."""
    x32, x64 = torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64)
    assert precision.matmul_dtype(x32) == precision.layernorm_out_dtype(x32) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert precision.matmul_dtype(x32) == precision.layernorm_out_dtype(x32) == torch.bfloat16
        assert precision.matmul_dtype(x64) == precision.layernorm_out_dtype(x64) == torch.float64
        assert precision.autocast_dtype(torch.ones(2, dtype=torch.int64)) is None
