"""The reference ops (``ops.reference``, called directly) against PyTorch's own layers and an explicit
softmax; the public ops under the default backend against the same, and their argument errors."""

import pytest
import torch
from torch import nn

from focusformer_fast import ops
from focusformer_fast.ops import reference

# the pure-PyTorch reference itself, and the public op under the backend in force (auto: cpp on the CPU)
IMPLEMENTATIONS = pytest.mark.parametrize("impl", [reference, ops], ids=["reference", "public-op"])


@IMPLEMENTATIONS
def test_sliced_linear_equals_nn_linear_on_a_copied_slice(impl):
    torch.manual_seed(0)
    w, b = torch.randn(3 * 24, 40), torch.randn(3 * 24)
    x, res = torch.randn(5, 7, 33), torch.randn(5, 7, 3 * 17)
    parts = []
    for g in range(3):
        lin = nn.Linear(33, 17)
        with torch.no_grad():
            lin.weight.copy_(w[g * 24 : g * 24 + 17, :33])
            lin.bias.copy_(b[g * 24 : g * 24 + 17])
        parts.append(lin(x))
    expect = nn.GELU()(torch.cat(parts, -1)) + res
    got = impl.sliced_linear(x, w, b, 17, groups=3, gelu=True, residual=res)
    torch.testing.assert_close(got, expect)


@IMPLEMENTATIONS
def test_sliced_layernorm_equals_nn_layernorm(impl):
    torch.manual_seed(0)
    w, b, x = torch.randn(50), torch.randn(50), torch.randn(4, 9, 31)
    ln = nn.LayerNorm(31, eps=1e-6)
    with torch.no_grad():
        ln.weight.copy_(w[:31]), ln.bias.copy_(b[:31])
    torch.testing.assert_close(impl.sliced_layernorm(x, w, b, 1e-6), ln(x))


@IMPLEMENTATIONS
def test_sliced_attention_equals_explicit_softmax(impl):
    torch.manual_seed(0)
    bsz, n, h, hd = 2, 11, 3, 8
    qkv = torch.randn(bsz, n, 3 * h * hd)
    q, k, v = (qkv[..., i * h * hd : (i + 1) * h * hd].reshape(bsz, n, h, hd).transpose(1, 2) for i in range(3))
    p = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5, dim=-1)
    expect = (p @ v).transpose(1, 2).reshape(bsz, n, h * hd)
    torch.testing.assert_close(impl.sliced_attention(qkv, h, hd), expect)


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda: ops.sliced_linear(torch.randn(2, 8), torch.randn(10, 8), None, 4, groups=3), "divisible by groups=3"),
        (lambda: ops.sliced_linear(torch.randn(2, 8), torch.randn(6, 8), None, 7), r"out_features=7 .*\[1, 6\]"),
        (lambda: ops.sliced_linear(torch.randn(2, 9), torch.randn(6, 8), None, 3), r"input width 9 .*\[1, 8\]"),
        (lambda: ops.sliced_linear(torch.randn(2, 8), torch.randn(6, 8), None, 3, residual=torch.randn(2, 4)),
         "residual shape"),
        (lambda: ops.sliced_layernorm(torch.randn(2, 9), torch.ones(8), torch.zeros(8)), "input width 9"),
        (lambda: ops.sliced_attention(torch.randn(2, 3, 20), 2, 4), r"qkv shape .*\[B, N, 24\]"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()
