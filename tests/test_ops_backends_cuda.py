"""What is particular to the ``cuda`` backend (CUDA kernels of ``focusformer_fast._C``); its values
against the reference are checked with every other backend in ``test_ops_backends.py``.

Checked here:

* registration: the backend is registered for CUDA tensors and, where it cannot run, selecting
  it raises and says why; CPU tensors given to its functions run the reference;
* the fake (meta) kernels of the compiled linear for the CUDA mixed-precision contract
  (bfloat16/float16 ``x`` and ``weight_cast`` with float32 parameters and residual: output
  float32, pre-activation in ``x``'s dtype, gradients of the parameters in their dtype);
* the cuBLASLt alignment decisions (``csrc/gemm_alignment.h``), as pure functions of addresses
  and leading dimensions: what the heuristic is told, and which biases are copied aligned
  before the epilogue;
* on a GPU (``@pytest.mark.gpu``): selection, ``torch.library.opcheck`` of the CUDA kernels,
  the errors of bad CUDA inputs, a misaligned group bias leaves the device usable, and under
  bf16 autocast each super-weight is cast once per optimizer step, not once per call.

Without a CUDA device the ``gpu`` tests are skipped. On a GPU, with ``_C`` built with its CUDA
kernels (``pip install --no-build-isolation --no-deps -e .`` where ``nvcc`` is found):

    python -m pytest -q tests/test_ops_backends_cuda.py
"""

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from _backends import OpLog
from focusformer_fast import ops
from focusformer_fast.ops import _extension, dispatch, reference
from focusformer_fast.ops.backends import cuda as cuda_backend

OPS = torch.ops.focusformer

def test_backend_is_registered_and_says_why_it_cannot_run():
    backend = dispatch._registry.get("cuda")
    assert backend is not None and backend.impl is cuda_backend
    assert backend.devices == ("cuda",)
    assert all(backend.implements(op) for op in dispatch.OPS)
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; the backend's availability is checked by the gpu tests")
    ok, reason = backend.available()
    assert not ok and reason
    if _extension.has_cuda_ops():  # otherwise the reason is the missing build, checked by the message below
        assert reason == "no CUDA device"
    assert "cuda" not in ops.available_backends("cuda") and "cuda" not in ops.available_backends()
    with pytest.raises(ValueError, match=re.escape(f"backend 'cuda' is not available ({reason})")), ops.set_backend("cuda"):
        pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cpu_tensors_run_the_reference(dtype):
    """CPU tensors given to the backend's functions run the reference, not a compiled kernel."""
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 5, 7, generator=gen), torch.randn(3 * 6, 9, generator=gen), torch.randn(18, generator=gen)
    r = torch.randn(2, 5, 3 * 4, generator=gen)
    x, w, b, r = (t.to(dtype) for t in (x, w, b, r))
    with OpLog() as log:
        got = cuda_backend.sliced_linear(x, w, b, 4, 3, True, r)
        got_ln = cuda_backend.sliced_layernorm(x, b, b, 1e-6)
    assert not any(name.startswith("focusformer::") for name in log.names), sorted(log.names)
    torch.testing.assert_close(got, reference.sliced_linear(x, w, b, 4, 3, True, r), rtol=0, atol=0)
    torch.testing.assert_close(got_ln, reference.sliced_layernorm(x, b, b, 1e-6), rtol=0, atol=0)


def _fake_linear_args(dtype, gelu, residual_dtype, with_bias=True, m=6, k=5, k_max=7, o=3, o_max=4, groups=3):
    """Fake CUDA arguments of ``sliced_linear`` as the cuda backend passes them under autocast
    (call inside a ``FakeTensorMode``): float32 parameters, their copies in ``dtype``."""
    d = {"device": "cuda"}
    bias_dtype = dtype if gelu or residual_dtype is None else residual_dtype  # the GEMM output's
    weight, bias = torch.empty(groups * o_max, k_max, **d), torch.empty(groups * o_max, **d)
    return (
        torch.empty(m, k, dtype=dtype, **d),
        weight,
        bias if with_bias else None,
        o,
        groups,
        gelu,
        None if residual_dtype is None else torch.empty(m, groups * o, dtype=residual_dtype, **d),
        weight.to(dtype),
        bias.to(bias_dtype) if with_bias and bias_dtype != bias.dtype else None,
    )


@pytest.mark.parametrize("gelu", [False, True], ids=["", "gelu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fake_linear_mixed_dtype_forward(dtype, gelu):
    """bf16/fp16 ``x`` with a float32 residual: output float32, pre-activation in ``x``'s dtype."""
    assert _extension.load(), _extension.load_error()
    with FakeTensorMode():
        out, preact = OPS.sliced_linear(*_fake_linear_args(dtype, gelu, torch.float32))
        plain_out, plain_preact = OPS.sliced_linear(*_fake_linear_args(dtype, gelu, None))
    assert out.shape == (6, 9) and out.dtype == torch.float32 and out.device.type == "cuda"
    assert plain_out.shape == (6, 9) and plain_out.dtype == dtype
    for p in (preact, plain_preact):
        if gelu:
            assert p.shape == (6, 9) and p.dtype == dtype, (p.shape, p.dtype)
        else:
            assert p.numel() == 0


@pytest.mark.parametrize("gelu", [False, True], ids=["", "gelu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fake_linear_mixed_dtype_backward(dtype, gelu):
    """float32 ``grad_out``, bf16/fp16 ``x`` and ``weight_cast``: grad_x in ``x``'s dtype, grad_w and grad_b
    in the float32 parameter's."""
    assert _extension.load(), _extension.load_error()
    with FakeTensorMode():
        x, w, _, o, groups, _, _, w_cast, _ = _fake_linear_args(dtype, gelu, torch.float32)
        grad_out = torch.empty(6, 9, device="cuda")
        preact = torch.empty(6, 9, dtype=dtype, device="cuda") if gelu else torch.empty(0, dtype=dtype, device="cuda")
        grad_x, grad_w, grad_b = OPS.sliced_linear_backward(grad_out, x, w, w_cast, preact, o, groups, gelu)
    assert grad_x.shape == x.shape and grad_x.dtype == dtype
    assert grad_w.shape == w.shape and grad_w.dtype == torch.float32
    assert grad_b.shape == (w.shape[0],) and grad_b.dtype == torch.float32


def test_fake_layernorm_writes_the_requested_dtype():
    assert _extension.load(), _extension.load_error()
    with FakeTensorMode():
        x, w = torch.empty(6, 5, device="cuda"), torch.empty(8, device="cuda")
        out, mean, rstd = OPS.sliced_layernorm(x, w, w, 1e-6, torch.bfloat16)
        grads = OPS.sliced_layernorm_backward(torch.empty(6, 5, dtype=torch.bfloat16, device="cuda"), x, w, mean, rstd)
    assert out.dtype == torch.bfloat16 and mean.dtype == rstd.dtype == torch.float32
    assert [g.dtype for g in grads] == [torch.float32] * 3


# -- cuBLASLt alignment decisions (CPU) ------------------------------------------------------

BASE = 0x7F0000000000  # an allocation's start: 512-byte aligned, as the caching allocator's


def _c_module():
    assert _extension.load(), _extension.load_error()
    from focusformer_fast import _C

    return _C


@pytest.mark.parametrize(
    "elem, o_max, groups, expected",
    [
        (2, 45, 3, [True, False, False]),  # bf16, O_max 45 (the test shape): groups 1, 2 at 90, 180 bytes
        (4, 45, 3, [True, False, False]),  # fp32: 180, 360 bytes
        (2, 30, 3, [True, False, False]),  # 60, 120 bytes
        (2, 48, 3, [True, True, True]),  # 96, 192 bytes: 16-byte aligned
        (2, 256, 3, [True, True, True]),  # autoformer-t qkv (4 heads of 64)
        (4, 960, 1, [True]),
    ],
)
def test_group_bias_goes_to_the_epilogue_only_when_16_byte_aligned(elem, o_max, groups, expected):
    """The bias of group g starts g*O_max elements into the super-bias; cuBLASLt cannot be told its
    alignment, so an unaligned one is copied to an aligned buffer instead of faulting."""
    c = _c_module()
    assert [c.gemm_bias_in_epilogue(BASE + g * o_max * elem) for g in range(groups)] == expected


@pytest.mark.parametrize(
    "offset, ld, elem, cols, expected",
    [
        (0, 240, 2, 197, 32),  # a super-weight row stride of 240 bf16 = 480 bytes
        (0, 45, 2, 7, 2),  # row stride 45 bf16: every later row 2-byte aligned
        (0, 45, 4, 7, 4),
        (90, 48, 2, 7, 2),  # group 1 of O_max 45 bf16 rows: the block starts 90 bytes in
        (0, 45, 2, 1, 256),  # a single column: the address alone
        (64, 960, 4, 128, 64),
    ],
)
def test_operand_alignment_told_to_the_heuristic(offset, ld, elem, cols, expected):
    """The alignment of every column (address and leading dimension), not of the first alone."""
    assert _c_module().gemm_operand_alignment(BASE + offset, ld, elem, cols) == expected


# -- GPU: selection, opcheck ---------------------------------------------------------------


@pytest.mark.gpu
def test_backend_available_and_selected_on_gpu():
    assert _extension.has_cuda_ops(), "focusformer_fast._C was built without its CUDA ops"
    assert "cuda" in ops.available_backends("cuda")
    with ops.set_backend("cuda"):
        assert dispatch.resolve("sliced_linear", "cuda") is cuda_backend.sliced_linear
        assert dispatch.resolve("sliced_layernorm", "cuda") is cuda_backend.sliced_layernorm
        with pytest.raises(ValueError, match="runs on cuda tensors, not cpu"):
            ops.sliced_linear(torch.randn(2, 3), torch.randn(4, 3), None, 4)


def _cuda_randn(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to("cuda", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype, residual_dtype, gelu, with_bias, cast",
    [
        (torch.float32, torch.float32, True, True, False),
        (torch.float32, None, False, False, False),
        (torch.bfloat16, torch.float32, True, True, False),  # bf16 bias and pre-activation, fp32 residual/output
        (torch.bfloat16, torch.float32, True, True, True),  # fp32 parameters, bf16 copies (autocast)
        (torch.bfloat16, torch.float32, False, True, True),  # fp32 bias read as it is (fp32 epilogue)
    ],
    ids=["f32-gelu-bias-residual", "f32-plain", "bf16-f32residual-gelu", "cast-gelu", "cast-f32residual"],
)
def test_opcheck_linear(dtype, residual_dtype, gelu, with_bias, cast):
    gen = torch.Generator().manual_seed(0)
    m, k, k_max, o, o_max, groups = 197, 37, 48, 23, 32, 3
    z_dtype = dtype if gelu or residual_dtype is None else residual_dtype  # the GEMM output's, as the bias
    param_dtype = torch.float32 if cast else dtype
    x, w = _cuda_randn(gen, m, k, dtype=dtype), _cuda_randn(gen, groups * o_max, k_max, dtype=param_dtype)
    b = _cuda_randn(gen, groups * o_max, dtype=param_dtype if cast else z_dtype) if with_bias else None
    r = None if residual_dtype is None else _cuda_randn(gen, m, groups * o, dtype=residual_dtype)
    w_cast = w.to(dtype) if cast else None
    b_cast = b.to(z_dtype) if cast and b is not None and b.dtype != z_dtype else None
    args = (x, w, b, o, groups, gelu, r, w_cast, b_cast)
    grad_args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args[:7]) + args[7:]
    torch.library.opcheck(OPS.sliced_linear.default, grad_args)
    out, preact = OPS.sliced_linear(*args)
    assert out.dtype == (dtype if residual_dtype is None else residual_dtype)
    grad_out = _cuda_randn(gen, m, groups * o, dtype=out.dtype)
    grads = OPS.sliced_linear_backward(grad_out, x, w, w_cast, preact, o, groups, gelu)
    assert [g.dtype for g in grads] == [dtype, param_dtype, param_dtype]
    torch.library.opcheck(OPS.sliced_linear_backward.default, (grad_out, x, w, w_cast, preact, o, groups, gelu))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_unaligned_group_biases_leave_the_device_usable(dtype):
    """O_max 45: the biases of groups 1 and 2 start 90/180 (bf16) or 180/360 (fp32) bytes into the
    super-bias; they go to cuBLASLt's epilogue from aligned copies, so no "misaligned address"
    fault poisons the process: the result matches the reference and later CUDA calls succeed."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(197, 45, generator=gen).to("cuda", dtype)
    w = torch.randn(3 * 45, 45, generator=gen).to("cuda", dtype)
    b = torch.randn(3 * 45, generator=gen).to("cuda", dtype)
    with ops.set_backend("cuda"), OpLog() as log:
        got = ops.sliced_linear(x, w, b, 29, groups=3)
    torch.cuda.synchronize()
    assert "focusformer::sliced_linear" in log.names
    expected = reference.sliced_linear(x.double(), w.double(), b.double(), 29, groups=3)
    torch.testing.assert_close(got.double(), expected, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-2)
    assert torch.ones(4, device="cuda").sum().item() == 4


@pytest.mark.gpu
def test_opcheck_layernorm_bfloat16():
    gen = torch.Generator().manual_seed(0)
    x, w, b = (_cuda_randn(gen, *s, dtype=torch.bfloat16) for s in ((197, 37), (48,), (48,)))
    torch.library.opcheck(OPS.sliced_layernorm.default, (x.clone().requires_grad_(), w.clone().requires_grad_(), b, 1e-6))
    _, mean, rstd = OPS.sliced_layernorm(x, w, b, 1e-6)
    assert mean.dtype == rstd.dtype == torch.float32
    torch.library.opcheck(OPS.sliced_layernorm_backward.default, (torch.randn_like(x), x, w, mean, rstd))


# -- GPU: bad inputs -----------------------------------------------------------------------


def _c(*shape, dtype=torch.float32, device="cuda"):
    return torch.zeros(*shape, dtype=dtype, device=device)


BF16, F16, F64 = torch.bfloat16, torch.float16, torch.float64


@pytest.mark.gpu
@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: OPS.sliced_linear(_c(6, 5, dtype=BF16), _c(8, 7, dtype=BF16), None, 3, 2, False, _c(6, 6, dtype=F64)),
         ("residual", "Double")),
        (lambda: OPS.sliced_linear(_c(6, 5, dtype=F16), _c(8, 7, dtype=F16), None, 3, 2, False, _c(6, 6, dtype=BF16)),
         ("residual", "BFloat16")),
        (lambda: OPS.sliced_linear(_c(6, 5), _c(8, 7, device="cpu"), None, 3, 2, False, None), ("weight", "cpu")),
        (lambda: OPS.sliced_linear(_c(6, 5), _c(8, 7), None, 3, 2, False, _c(6, 6, device="cpu")),
         ("residual", "cpu")),
        (lambda: OPS.sliced_linear(_c(6, 5, dtype=F64), _c(8, 7, dtype=F64), None, 3, 2, False, None),
         ("x", "Double")),
        (lambda: OPS.sliced_linear(_c(6, 5, dtype=BF16), _c(8, 7), None, 3, 2, False, None), ("weight", "Float")),
        (lambda: OPS.sliced_linear(_c(6, 5, dtype=BF16), _c(8, 7, dtype=BF16), _c(8, dtype=F64), 3, 2, True, None),
         ("bias", "Double")),
        (lambda: OPS.sliced_linear(_c(6, 5), _c(8, 7), None, 5, 2, False, None), ("out_features=5", "[1, 4]")),
        (lambda: OPS.sliced_linear(_c(6, 5), _c(8, 7), None, 3, 2, False, _c(6, 3)), ("residual", "[6, 3]")),
        (lambda: OPS.sliced_linear_backward(_c(6, 6, dtype=F64), _c(6, 5), _c(8, 7), None, _c(0), 3, 2, False),
         ("grad_out", "Double")),
        (lambda: OPS.sliced_layernorm(_c(4, 5, dtype=F16), _c(8, dtype=F16), _c(8, dtype=F16), 1e-6),
         ("x.dtype=Half must be float32 or bfloat16 on CUDA",)),
        (lambda: OPS.sliced_layernorm(_c(4, 5), _c(8, device="cpu"), _c(8), 1e-6), ("weight", "cpu")),
        (lambda: OPS.sliced_linear(_c(6, 5, dtype=BF16), _c(8, 7), None, 3, 2, False, None, _c(8, 6, dtype=BF16)),
         ("weight_cast shape", "[8, 6]")),
    ],
    ids=[
        "residual-f64", "residual-bf16-with-f16", "weight-on-cpu", "residual-on-cpu", "x-f64", "weight-dtype",
        "bias-f64", "out-features", "residual-shape", "grad-out-f64", "layernorm-f16", "layernorm-weight-on-cpu",
        "weight-cast-shape",
    ],
)
def test_bad_cuda_inputs_raise_naming_the_argument(call, words):
    with pytest.raises(RuntimeError) as info:
        call()
    message = str(info.value)
    assert all(w in message for w in words), f"{words} not all in: {message}"


