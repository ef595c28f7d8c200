"""What is particular to the ``cpp`` backend and the compiled ops of ``focusformer_fast._C``: the saved
values, no copies, dispatch, ``opcheck`` of ``sliced_linear``/``sliced_layernorm`` and their backward
ops, argument errors, import without ``_C``, a supernet's loss and gradients equal to the ``torch`` backend's.
Values against the reference: ``test_ops_backends.py``."""

import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from focusformer_fast import SearchSpace, Supernet, ops
from focusformer_fast.ops import _extension, dispatch, reference
from focusformer_fast.ops.backends import cpp

REPO = Path(__file__).resolve().parents[1]
OPS = torch.ops.focusformer

def test_extension_loads_with_its_ops():
    assert _extension.load(), _extension.load_error()
    assert "cpp" in ops.available_backends("cpu")


def test_linear_preact_and_layernorm_stats_are_the_saved_values():
    torch.manual_seed(0)
    x, w, b = torch.randn(9, 6), torch.randn(2 * 5, 7), torch.randn(2 * 5)
    out, preact = OPS.sliced_linear(x, w, b, 4, 2, True, None)
    expected = reference.sliced_linear(x, w, b, 4, groups=2)
    torch.testing.assert_close(preact, expected)
    torch.testing.assert_close(out, torch.nn.functional.gelu(expected))
    assert OPS.sliced_linear(x, w, b, 4, 2, False, None)[1].numel() == 0

    xb = torch.randn(9, 6).bfloat16()
    _, mean, rstd = OPS.sliced_layernorm(xb, torch.ones(8).bfloat16(), torch.zeros(8).bfloat16(), 1e-5)
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


def _linear_args(requires_grad, gelu, with_bias, with_residual, cast=False):
    """Arguments of ``sliced_linear``: float64, or with ``cast`` float32 activations and float32 copies
    of the float64 parameters (``weight_cast``, ``bias_cast``), as under autocast."""
    gen = torch.Generator().manual_seed(0)
    act = torch.float32 if cast else torch.float64

    def t(*shape, dtype=torch.float64, grad=requires_grad):
        return torch.randn(*shape, generator=gen, dtype=dtype, requires_grad=grad)

    w, b = t(2 * 4, 7), t(2 * 4) if with_bias else None
    casts = (w.detach().to(act), None if b is None else b.detach().to(act)) if cast else (None, None)
    return (t(6, 5, dtype=act), w, b, 3, 2, gelu, t(6, 2 * 3, dtype=act) if with_residual else None, *casts)


@pytest.mark.parametrize("gelu, with_bias, with_residual, cast", [
    (False, False, False, False), (True, True, True, False), (True, True, True, True), (False, True, False, True),
], ids=["plain", "gelu-bias-residual", "cast-gelu-bias-residual", "cast-bias"])
def test_opcheck_sliced_linear(gelu, with_bias, with_residual, cast):
    torch.library.opcheck(OPS.sliced_linear.default, _linear_args(True, gelu, with_bias, with_residual, cast))
    x, w, _, o, groups, _, _, w_cast, _ = _linear_args(False, gelu, with_bias, with_residual, cast)
    preact = torch.randn(6, 2 * 3, dtype=x.dtype) if gelu else torch.empty(0, dtype=x.dtype)
    grad_out = torch.randn(6, 2 * 3, dtype=x.dtype)
    grads = OPS.sliced_linear_backward(grad_out, x, w, w_cast, preact, o, groups, gelu)
    assert [g.dtype for g in grads] == [x.dtype, w.dtype, w.dtype]
    torch.library.opcheck(OPS.sliced_linear_backward.default, (grad_out, x, w, w_cast, preact, o, groups, gelu))


@pytest.mark.parametrize("out_dtype", [None, torch.float32], ids=["same", "float32-out"])
def test_opcheck_sliced_layernorm(out_dtype):
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((6, 5), (8,), (8,)))
    args = (x.requires_grad_(), w.requires_grad_(), b, 1e-6, out_dtype)
    torch.library.opcheck(OPS.sliced_layernorm.default, args)
    out, mean, rstd = OPS.sliced_layernorm(x.detach(), w.detach(), b, 1e-6, out_dtype)
    assert out.dtype == (out_dtype or x.dtype)
    grad = torch.randn(x.shape, dtype=out.dtype)
    torch.library.opcheck(OPS.sliced_layernorm_backward.default, (grad, x.detach(), w.detach(), mean, rstd))


def _f(*shape):
    return torch.zeros(*shape)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: OPS.sliced_linear(_f(2, 3, 5), _f(8, 7), None, 3, 2, False, None),
            "x must be 2-D [M, K], got shape [2, 3, 5]",
        ),
        (
            lambda: OPS.sliced_linear(_f(6, 5), _f(8, 7), None, 3, 3, False, None),
            "groups=3 must be >= 1 and divide weight.shape[0]=8",
        ),
        (
            lambda: OPS.sliced_linear(_f(6, 5), _f(8, 7), None, 5, 2, False, None),
            "out_features=5 must be in [1, 4]",
        ),
        (lambda: OPS.sliced_linear(_f(6, 9), _f(8, 7), None, 3, 2, False, None), "x.shape[1]=9 must be in [1, 7]"),
        (
            lambda: OPS.sliced_linear(_f(6, 5).half(), _f(8, 7).half(), None, 3, 2, False, None),
            "x.dtype=Half must be float32, float64 or bfloat16",
        ),
        (
            lambda: OPS.sliced_linear(_f(6, 5), _f(8, 7).double(), None, 3, 2, False, None),
            "weight.dtype=Double must equal x.dtype=Float",
        ),
        (
            lambda: OPS.sliced_linear(_f(6, 5), _f(8, 7), _f(6), 3, 2, False, None),
            "bias must have shape [8] (weight.shape[0]), got [6]",
        ),
        (
            lambda: OPS.sliced_linear(_f(6, 5), _f(8, 7), None, 3, 2, False, _f(6, 3)),
            "residual must have shape [6, 6] ([M, groups*out_features]), got [6, 3]",
        ),
        (
            lambda: OPS.sliced_linear_backward(_f(6, 6), _f(6, 5), _f(8, 7), None, _f(0), 3, 2, True),
            "preact must have shape [6, 6]",
        ),
        (
            lambda: OPS.sliced_layernorm(_f(4, 9), _f(8), _f(8), 1e-6),
            "weight must be 1-D [E_max] with E_max >= E=9, got shape [8]",
        ),
        (lambda: OPS.sliced_layernorm(_f(4, 5), _f(8), _f(7), 1e-6), "bias shape [7] must equal weight shape [8]"),
        (
            lambda: OPS.sliced_layernorm_backward(_f(4, 5), _f(4, 5), _f(8), _f(4).double(), _f(4)),
            "mean (shape [4], dtype Double) must be [4] of dtype Float",
        ),
    ],
)
def test_bad_arguments_name_the_argument_value_and_allowed_range(call, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        call()


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
            from focusformer_fast import ops
            from focusformer_fast.ops import _extension
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


def _images(space, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, space.in_chans, space.image_size, space.image_size, generator=g)


def test_cpp_backend_supernet_matches_torch_backend():
    if "cpp" not in ops.available_backends("cpu"):
        pytest.skip("focusformer_fast._C is not built")
    torch.manual_seed(0)
    space = SearchSpace.preset("digits")
    net = Supernet(space)
    x, y = _images(space, 5), torch.tensor([0, 1, 2, 3, 4])
    for arch in [space.sample(random.Random(s)) for s in range(3)]:
        grads = {}
        for backend in ("torch", "cpp"):
            net.zero_grad(set_to_none=True)
            with ops.set_backend(backend):
                loss = torch.nn.functional.cross_entropy(net(x, arch), y)
            loss.backward()
            grads[backend] = (loss.detach(), {n: p.grad for n, p in net.named_parameters() if p.grad is not None})
        torch.testing.assert_close(grads["cpp"][0], grads["torch"][0])
        assert grads["cpp"][1].keys() == grads["torch"][1].keys()
        for name, g in grads["torch"][1].items():
            torch.testing.assert_close(grads["cpp"][1][name], g, rtol=1e-4, atol=1e-6, msg=name)
