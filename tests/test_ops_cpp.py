"""The ``cpp`` backend (C++ ops of ``focusformer_fast._C``) and its CUDA layernorm against the reference."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from focusformer_fast import _extension, ops
from focusformer_fast.ops import cpp, dispatch, reference

REPO = Path(__file__).resolve().parents[1]
OPS = torch.ops.focusformer

# max |got - expected| / max |expected|, expected from float64 on the same (rounded) inputs
REL_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}

# (leading shape of x, K, K_max, out_features, O_max, groups)
LINEAR_CASES = [
    ((1,), 5, 8, 3, 4, 1),
    ((197,), 37, 48, 23, 32, 3),
    ((2, 7), 40, 40, 24, 24, 1),
    ((5,), 12, 16, 8, 8, 3),  # every group uses all its rows: the groups run as one GEMM
]
# (leading shape of x, E, E_max)
LAYERNORM_CASES = [((1,), 5, 8), ((197,), 37, 48), ((2, 7), 64, 64)]


def assert_rel_close(got, expected, dtype, what):
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    err = (got.double().cpu() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)
    assert err <= REL_TOL[dtype], f"{what}: relative error {err:.3g} > {REL_TOL[dtype]:g} ({dtype})"


def run_with_grads(fn, inputs, grad, dtype, device="cpu"):
    """``fn(**leaves)`` and each leaf's gradient after backpropagating ``grad``; leaves in ``dtype`` on ``device``."""
    leaves = {n: None if t is None else t.to(device, dtype, copy=True).requires_grad_() for n, t in inputs.items()}
    out = fn(**leaves)
    out.backward(grad.to(device, dtype))
    return out, {n: t.grad for n, t in leaves.items() if t is not None}


def check_against_reference(fn, ref_fn, inputs, grad, dtype, device="cpu"):
    """Output and all input gradients of ``fn`` in ``dtype`` vs ``ref_fn`` in float64; returns ``fn``'s grads."""
    inputs = {n: None if t is None else t.to(dtype) for n, t in inputs.items()}
    grad = grad.to(dtype)
    out, grads = run_with_grads(fn, inputs, grad, dtype, device)
    expected, expected_grads = run_with_grads(ref_fn, inputs, grad, torch.float64)
    assert out.dtype == dtype and out.device.type == device
    assert_rel_close(out, expected, dtype, "output")
    for name, g in grads.items():
        assert_rel_close(g, expected_grads[name], dtype, f"grad of {name}")
    return grads


def check_layernorm_case(case, dtype, device):
    """The cpp layernorm vs the reference on ``device``; weight/bias grads zero past the used width."""
    lead, e, e_max = case
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "x": 3 * torch.randn(*lead, e, generator=gen) + 1,
        "weight": torch.randn(e_max, generator=gen),
        "bias": torch.randn(e_max, generator=gen),
    }
    grad = torch.randn(*lead, e, generator=gen)

    def call(impl):
        return lambda x, weight, bias: impl(x, weight, bias, 1e-6)

    grads = check_against_reference(
        call(cpp.sliced_layernorm), call(reference.sliced_layernorm), inputs, grad, dtype, device=device
    )
    for name in ("weight", "bias"):
        assert torch.all(grads[name][e:] == 0)


def test_extension_loads_with_its_ops():
    assert _extension.load(), _extension.load_error()
    assert "cpp" in ops.available_backends("cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("use_residual", [False, True], ids=["", "residual"])
@pytest.mark.parametrize("gelu", [False, True], ids=["", "gelu"])
@pytest.mark.parametrize("case", LINEAR_CASES, ids=str)
def test_sliced_linear_matches_reference(case, gelu, use_residual, use_bias, dtype):
    lead, k, k_max, o, o_max, groups = case
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "x": torch.randn(*lead, k, generator=gen),
        "weight": torch.randn(groups * o_max, k_max, generator=gen) / k**0.5,
        "bias": torch.randn(groups * o_max, generator=gen) if use_bias else None,
        "residual": torch.randn(*lead, groups * o, generator=gen) if use_residual else None,
    }
    grad = torch.randn(*lead, groups * o, generator=gen)

    def call(impl):
        return lambda x, weight, bias, residual: impl(x, weight, bias, o, groups, gelu, residual)

    grads = check_against_reference(call(cpp.sliced_linear), call(reference.sliced_linear), inputs, grad, dtype)
    used = torch.zeros(groups * o_max, k_max, dtype=torch.bool)
    for g in range(groups):
        used[g * o_max : g * o_max + o, :k] = True
    assert torch.all(grads["weight"][~used] == 0)
    if use_bias:
        assert torch.all(grads["bias"][~used[:, 0]] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", LAYERNORM_CASES, ids=str)
def test_sliced_layernorm_matches_reference(case, dtype):
    check_layernorm_case(case, dtype, "cpu")


def test_linear_preact_and_layernorm_stats_are_the_saved_values():
    torch.manual_seed(0)
    x, w, b = torch.randn(9, 6), torch.randn(2 * 5, 7), torch.randn(2 * 5)
    out, preact = OPS.sliced_linear_cpp(x, w, b, 4, 2, True, None)
    expected = reference.sliced_linear(x, w, b, 4, groups=2)
    torch.testing.assert_close(preact, expected)
    torch.testing.assert_close(out, torch.nn.functional.gelu(expected))
    assert OPS.sliced_linear_cpp(x, w, b, 4, 2, False, None)[1].numel() == 0

    xb = torch.randn(9, 6).bfloat16()
    _, mean, rstd = OPS.sliced_layernorm_cpp(xb, torch.ones(8).bfloat16(), torch.zeros(8).bfloat16(), 1e-5)
    var, mu = torch.var_mean(xb.float(), dim=1, unbiased=False)
    assert mean.dtype == rstd.dtype == torch.float32
    torch.testing.assert_close(mean, mu)
    torch.testing.assert_close(rstd, (var + 1e-5).rsqrt())


def test_forward_and_backward_copy_no_weight_or_activation():
    torch.manual_seed(0)
    x = torch.randn(2, 197, 37, requires_grad=True)
    w = torch.randn(3 * 32, 48, requires_grad=True)
    b = torch.randn(3 * 32, requires_grad=True)
    res = torch.randn(2, 197, 3 * 23, requires_grad=True)
    ln_w, ln_b = torch.randn(48, requires_grad=True), torch.randn(48, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        y = cpp.sliced_linear(x, w, b, 23, 3, True, res)
        y.backward(torch.randn_like(y))
        z = cpp.sliced_layernorm(x, ln_w, ln_b, 1e-6)
        z.backward(torch.randn_like(z))
    copies = [e.input_shapes for e in prof.events() if e.name in ("aten::copy_", "aten::clone", "aten::contiguous")]
    # the only copies: addmm starts each group's [M, o] output block from the broadcast bias
    assert len(copies) == 3 and all(shapes[:2] == [[394, 23], [394, 23]] for shapes in copies), copies


def test_public_ops_use_the_cpp_backend_on_cpu():
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 7, 10), torch.randn(16, 12), torch.randn(16)
    with ops.set_backend("auto"):
        assert dispatch.resolve("sliced_linear", "cpu") is cpp.sliced_linear
        assert dispatch.resolve("sliced_layernorm", "cpu") is cpp.sliced_layernorm
    with ops.set_backend("cpp"):
        got = ops.sliced_linear(x, w, b, 8, groups=2, gelu=True)
    torch.testing.assert_close(got, reference.sliced_linear(x, w, b, 8, groups=2, gelu=True))


def test_other_dtypes_run_the_reference():
    torch.manual_seed(0)
    x, w, b = torch.randn(4, 6).half(), torch.randn(8, 6).half(), torch.randn(8).half()
    torch.testing.assert_close(cpp.sliced_linear(x, w, b, 5), reference.sliced_linear(x, w, b, 5), rtol=0, atol=0)
    torch.testing.assert_close(cpp.sliced_layernorm(x, b, b), reference.sliced_layernorm(x, b, b), rtol=0, atol=0)


def _linear_args(requires_grad, gelu, with_bias, with_residual):
    gen = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=requires_grad)

    return t(6, 5), t(2 * 4, 7), t(2 * 4) if with_bias else None, 3, 2, gelu, t(6, 2 * 3) if with_residual else None


@pytest.mark.parametrize("gelu, with_bias, with_residual", [(False, False, False), (True, True, True)])
def test_opcheck_sliced_linear(gelu, with_bias, with_residual):
    torch.library.opcheck(OPS.sliced_linear_cpp.default, _linear_args(True, gelu, with_bias, with_residual))
    x, w, _, o, groups, _, _ = _linear_args(False, gelu, with_bias, with_residual)
    preact = torch.randn(6, 2 * 3, dtype=torch.float64) if gelu else torch.empty(0, dtype=torch.float64)
    grad_out = torch.randn(6, 2 * 3, dtype=torch.float64)
    torch.library.opcheck(OPS.sliced_linear_backward_cpp.default, (grad_out, x, w, preact, o, groups, gelu))


def test_opcheck_sliced_layernorm():
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((6, 5), (8,), (8,)))
    torch.library.opcheck(OPS.sliced_layernorm_cpp.default, (x.requires_grad_(), w.requires_grad_(), b, 1e-6))
    _, mean, rstd = OPS.sliced_layernorm_cpp(x.detach(), w.detach(), b, 1e-6)
    torch.library.opcheck(
        OPS.sliced_layernorm_backward_cpp.default, (torch.randn_like(x), x.detach(), w.detach(), mean, rstd)
    )


def _f(*shape):
    return torch.zeros(*shape)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: OPS.sliced_linear_cpp(_f(2, 3, 5), _f(8, 7), None, 3, 2, False, None),
            "x must be 2-D [M, K], got shape [2, 3, 5]",
        ),
        (
            lambda: OPS.sliced_linear_cpp(_f(6, 5), _f(8, 7), None, 3, 3, False, None),
            "groups=3 must be >= 1 and divide weight.shape[0]=8",
        ),
        (
            lambda: OPS.sliced_linear_cpp(_f(6, 5), _f(8, 7), None, 5, 2, False, None),
            "out_features=5 must be in [1, 4]",
        ),
        (lambda: OPS.sliced_linear_cpp(_f(6, 9), _f(8, 7), None, 3, 2, False, None), "x.shape[1]=9 must be in [1, 7]"),
        (
            lambda: OPS.sliced_linear_cpp(_f(6, 5).half(), _f(8, 7).half(), None, 3, 2, False, None),
            "x.dtype=Half must be float32, float64 or bfloat16",
        ),
        (
            lambda: OPS.sliced_linear_cpp(_f(6, 5), _f(8, 7).double(), None, 3, 2, False, None),
            "weight.dtype=Double must equal x.dtype=Float",
        ),
        (
            lambda: OPS.sliced_linear_cpp(_f(6, 5), _f(8, 7), _f(6), 3, 2, False, None),
            "bias must have shape [8] (weight.shape[0]), got [6]",
        ),
        (
            lambda: OPS.sliced_linear_cpp(_f(6, 5), _f(8, 7), None, 3, 2, False, _f(6, 3)),
            "residual must have shape [6, 6] ([M, groups*out_features]), got [6, 3]",
        ),
        (
            lambda: OPS.sliced_linear_backward_cpp(_f(6, 6), _f(6, 5), _f(8, 7), _f(0), 3, 2, True),
            "preact must have shape [6, 6]",
        ),
        (
            lambda: OPS.sliced_layernorm_cpp(_f(4, 9), _f(8), _f(8), 1e-6),
            "weight must be 1-D [E_max] with E_max >= E=9, got shape [8]",
        ),
        (lambda: OPS.sliced_layernorm_cpp(_f(4, 5), _f(8), _f(7), 1e-6), "bias shape [7] must equal weight shape [8]"),
        (
            lambda: OPS.sliced_layernorm_backward_cpp(_f(4, 5), _f(4, 5), _f(8), _f(4).double(), _f(4)),
            "mean (shape [4], dtype Double) must be [4] of dtype Float",
        ),
    ],
)
def test_bad_arguments_name_the_argument_value_and_allowed_range(call, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        call()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", LAYERNORM_CASES + [((4, 65), 384, 384)], ids=str)
def test_cuda_sliced_layernorm_matches_reference(case, dtype):
    assert _extension.has_cuda_ops(), "focusformer_fast._C was built without its CUDA ops"
    check_layernorm_case(case, dtype, "cuda")


@pytest.mark.gpu
def test_cuda_opcheck_sliced_layernorm():
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen).cuda() for s in ((197, 37), (48,), (48,)))
    torch.library.opcheck(OPS.sliced_layernorm_cpp.default, (x.requires_grad_(), w.requires_grad_(), b, 1e-6))
    _, mean, rstd = OPS.sliced_layernorm_cpp(x.detach(), w.detach(), b, 1e-6)
    torch.library.opcheck(
        OPS.sliced_layernorm_backward_cpp.default, (torch.randn_like(x), x.detach(), w.detach(), mean, rstd)
    )


def test_package_imports_and_warns_once_when_the_extension_cannot_load():
    code = textwrap.dedent(
        """
        import importlib.abc, sys, warnings

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "focusformer_fast._C":
                    raise ImportError("blocked by the test")

        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch
            from focusformer_fast import _extension, ops
            from focusformer_fast.ops import reference
            assert not _extension.load() and not _extension.has_cuda_ops()
        msgs = [str(w.message) for w in caught if "focusformer_fast._C" in str(w.message)]
        assert len(msgs) == 1 and "blocked by the test" in msgs[0] and "torch backend" in msgs[0], msgs
        assert "cpp" not in ops.available_backends("cpu") and "torch" in ops.available_backends("cpu")
        x, w, b = torch.randn(5, 6), torch.randn(8, 7), torch.randn(8)
        got, expected = ops.sliced_linear(x, w, b, 4, gelu=True), reference.sliced_linear(x, w, b, 4, gelu=True)
        torch.testing.assert_close(got, expected)
        try:
            with ops.set_backend("cpp"):
                pass
        except ValueError as exc:
            assert "blocked by the test" in str(exc), exc
        else:
            raise AssertionError("the cpp backend should be unavailable")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
