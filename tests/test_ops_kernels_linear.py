"""The Triton linear kernels (``ops.kernels.linear``): the plan of the weight-gradient split, and split weight
gradients (atomic adds for float32; float32 partial sums added in order for other dtypes and in deterministic
mode) against the float64 reference, bitwise repeatable in deterministic mode.

Without a GPU these run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, tiny shapes,
float32/float16 only). With a GPU (and the interpreter off) they run on CUDA tensors:

    TRITON_INTERPRET=1 python -m pytest -q tests/test_ops_kernels_linear.py      # CPU
    python -m pytest -q tests/test_ops_kernels_linear.py                         # GPU
"""


import pytest
import torch

from _backends import rel_err, run
from _triton import DEVICE, INTERPRET, require_triton
from focusformer_fast import ops

require_triton()

from focusformer_fast.ops.kernels import linear  # noqa: E402  (needs triton)


@pytest.mark.parametrize(
    "m, tiles, sms, exact, expected",
    [
        (25216, 12, 132, False, (11, 2304, 1)),  # fc1 dW at batch 128: 12 tiles fill 132 SMs in 11 splits
        (25216, 12, 132, True, (11, 2304, 2)),  # deterministic or a bf16 gradient: partial sums
        (25216, 200, 132, False, (1, 25216, 0)),  # enough tiles: one split
        (100, 4, 132, False, (1, 128, 0)),  # too few rows to split
    ],
)
def test_split_plan(m, tiles, sms, exact, expected):
    splits, rows, mode = linear.split_plan(m, tiles, 64, sms, exact)
    assert (splits, rows, mode) == expected
    assert rows % 64 == 0 and (splits - 1) * rows < m <= splits * rows


def _split_case(dtype):
    """A GELU + bias linear of 130 rows, whose weight gradient the interpreter's 32-row tiles split."""
    gen = torch.Generator().manual_seed(2)
    inputs = {
        "x": torch.randn(2, 65, 20, generator=gen),
        "weight": torch.randn(24, 24, generator=gen) / 5,
        "bias": torch.randn(24, generator=gen),
    }
    grad = torch.randn(2, 65, 17, generator=gen)

    def fn(x, weight, bias):
        return ops.sliced_linear(x, weight, bias, 17, gelu=True)

    return fn, inputs, grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16 if INTERPRET else torch.bfloat16], ids=str)
def test_weight_gradient_split_modes_match_reference(dtype):
    """Split weight gradients (atomic adds for float32; float32 partial sums added in order for other
    dtypes and in deterministic mode) match the float64 reference; deterministic mode repeats bitwise."""
    fn, inputs, grad = _split_case(dtype)
    splits = linear.split_plan(130, 1, 32, 4, True)[0] if INTERPRET else None
    assert splits is None or splits > 1
    with ops.set_backend("torch"):
        _, exact = run(fn, {n: t.double() for n, t in inputs.items()}, grad.double(), torch.float64, "cpu")
    results = []
    with ops.set_backend("triton"):
        for deterministic in (False, True, True):
            torch.use_deterministic_algorithms(deterministic)
            try:
                results.append(run(fn, {n: t.to(dtype) for n, t in inputs.items()}, grad.to(dtype), dtype, DEVICE)[1])
            finally:
                torch.use_deterministic_algorithms(False)
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}[dtype]
    for grads in results:
        for name in ("weight", "bias"):
            assert rel_err(grads[name], exact[name]) <= tol, name
    for name in ("weight", "bias"):
        assert torch.equal(results[1][name], results[2][name]), f"deterministic {name} gradient differs between runs"
