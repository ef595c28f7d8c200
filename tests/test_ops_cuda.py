"""The ``cuda`` backend (CUDA kernels of ``focusformer_fast._C``) against independent references.

Checked here:

* registration: the backend is registered for CUDA tensors and, where it cannot run, selecting
  it raises and says why; CPU tensors given to its functions run the reference;
* the fake (meta) kernels of the compiled linear for the CUDA mixed-precision contract
  (bfloat16/float16 ``x``/``weight`` with a float32 residual: output float32, pre-activation in
  ``x``'s dtype; ``grad_b`` in ``x``'s dtype with GELU, else in ``grad_out``'s);
* on a GPU (``@pytest.mark.gpu``): the linear and the layernorm, forward and every input
  gradient, in float32/bfloat16 (and float16 for one linear case) against the reference in
  float64 on the same rounded inputs; weight/bias gradients exactly zero outside the used slice;
  autocast (bf16) against the reference under the same autocast; ``torch.library.opcheck`` of
  the CUDA kernels; the errors of bad CUDA inputs; the whole supernet against the ``torch``
  backend; bf16 attention error at most 2x PyTorch SDPA's. Every GPU test also checks that the
  compiled CUDA ops actually ran (no silent fallback to the reference).

Without a CUDA device the ``gpu`` tests are skipped. On a GPU, with ``_C`` built with its CUDA
kernels (``pip install --no-build-isolation --no-deps -e .`` where ``nvcc`` is found):

    python -m pytest -q tests/test_ops_cuda.py
"""

import random
import re

import pytest
import torch
from _subnet_masks import used_mask
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from focusformer_fast import SearchSpace, Supernet, _extension, ops
from focusformer_fast.ops import cuda_backend, dispatch, reference

OPS = torch.ops.focusformer
LINEAR_OPS = {"focusformer::sliced_linear_cpp", "focusformer::sliced_linear_backward_cpp"}
LAYERNORM_OPS = {"focusformer::sliced_layernorm_cpp", "focusformer::sliced_layernorm_backward_cpp"}

# max |got - expected| / max |expected|, expected from float64 on the same (rounded) inputs
REL_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 1e-2}

# (leading shape of x, K, K_max, out_features, O_max, groups); widths are not multiples of 16
LINEAR_CASES = [
    ((1,), 37, 48, 23, 32, 1),  # one row
    ((197,), 37, 48, 23, 32, 3),  # ViT token count, [Q; K; V] groups
    ((2, 7), 45, 45, 29, 30, 3),  # odd row stride 45: group blocks start at unaligned addresses
    ((3, 5), 13, 20, 7, 7, 1),  # narrower than one 16-wide tile, full output width
    ((197,), 37, 48, 32, 32, 3),  # every group uses all its rows: the groups run as one GEMM
]
# autoformer-t at batch 2 (e 216 of 240): qkv of 3 heads of 64 (max 4), fc1 756 of 960 + GELU
# (case, gelu, bias)
AUTOFORMER_T_LINEAR_CASES = [
    (((2, 197), 216, 240, 192, 256, 3), False, True),
    (((2, 197), 216, 240, 756, 960, 1), True, True),
]
# (leading shape of x, E, E_max); 128*197 rows split the weight-gradient reduction into many chunks
LAYERNORM_CASES = [((1,), 37, 48), ((197,), 37, 48), ((2, 7), 5, 8), ((128, 197), 240, 240)]


class OpLog(TorchDispatchMode):
    """Names (``ns::op``) of the dispatcher ops run inside the context, autograd's backward included."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))


def rel_err(got, expected):
    got, expected = got.detach().double().cpu(), expected.detach().double().cpu()
    return ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def assert_rel_close(got, expected, tol, what):
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    err = rel_err(got, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def run_with_grads(fn, inputs, grad, dtype, device):
    """``fn(**leaves)`` and each leaf's gradient after backpropagating ``grad``; leaves in ``dtype`` on ``device``."""
    leaves = {n: None if t is None else t.to(device, dtype, copy=True).requires_grad_() for n, t in inputs.items()}
    out = fn(**leaves)
    out.backward(grad.to(device, out.dtype))
    return out, {n: t.grad for n, t in leaves.items() if t is not None}


def check_cuda_against_reference(fn, ref_fn, inputs, grad, dtype, kernels):
    """``fn`` on CUDA tensors under the ``cuda`` backend in ``dtype`` vs ``ref_fn`` in float64 on the CPU.

    Inputs are rounded to ``dtype`` first, so only the op's own error is measured. Checks the
    output and every input gradient (values, dtype, device) and that the compiled ops ``kernels``
    ran. Returns the CUDA gradients.
    """
    inputs = {n: None if t is None else t.to(dtype) for n, t in inputs.items()}
    grad = grad.to(dtype)
    with ops.set_backend("cuda"), OpLog() as log:
        out, grads = run_with_grads(fn, inputs, grad, dtype, "cuda")
        torch.cuda.synchronize()
    assert kernels <= log.names, f"{sorted(kernels - log.names)} did not run: the backend fell back"
    expected, expected_grads = run_with_grads(ref_fn, inputs, grad, torch.float64, "cpu")
    assert out.dtype == dtype and out.device.type == "cuda", (out.dtype, out.device)
    assert_rel_close(out, expected, REL_TOL[dtype], "output")
    assert grads.keys() == expected_grads.keys()
    for name, g in grads.items():
        assert g.dtype == dtype and g.device.type == "cuda", (name, g.dtype, g.device)
        assert_rel_close(g, expected_grads[name], REL_TOL[dtype], f"grad of {name}")
    return grads


def linear_inputs(case, gen, use_bias, use_residual):
    lead, k, k_max, o, o_max, groups = case
    return {
        "x": torch.randn(*lead, k, generator=gen),
        "weight": torch.randn(groups * o_max, k_max, generator=gen) / k**0.5,
        "bias": torch.randn(groups * o_max, generator=gen) if use_bias else None,
        "residual": torch.randn(*lead, groups * o, generator=gen) if use_residual else None,
    }


def linear_fns(case, gelu):
    """(the public op, the reference) as functions of the named tensors of :func:`linear_inputs`."""
    _, _, _, o, _, groups = case

    def public(x, weight, bias, residual):
        return ops.sliced_linear(x, weight, bias, o, groups, gelu, residual)

    def ref(x, weight, bias, residual):
        return reference.sliced_linear(x, weight, bias, o, groups, gelu, residual)

    return public, ref


def used_linear_slice(case):
    """Boolean mask of the super-weight entries a linear of ``case`` uses."""
    _, k, k_max, o, o_max, groups = case
    used = torch.zeros(groups * o_max, k_max, dtype=torch.bool)
    for g in range(groups):
        used[g * o_max : g * o_max + o, :k] = True
    return used


def assert_zero_outside_linear_slice(grads, case):
    used = used_linear_slice(case)
    assert torch.all(grads["weight"].cpu()[~used] == 0), "weight gradient nonzero outside the used slice"
    if grads.get("bias") is not None:
        assert torch.all(grads["bias"].cpu()[~used[:, 0]] == 0), "bias gradient nonzero outside the used slice"


def check_linear(case, dtype, gelu, use_residual, use_bias, seed=0):
    lead, _, _, o, _, groups = case
    gen = torch.Generator().manual_seed(seed)
    inputs = linear_inputs(case, gen, use_bias, use_residual)
    grad = torch.randn(*lead, groups * o, generator=gen)
    grads = check_cuda_against_reference(*linear_fns(case, gelu), inputs, grad, dtype, LINEAR_OPS)
    assert_zero_outside_linear_slice(grads, case)


def layernorm_fns():
    def public(x, weight, bias):
        return ops.sliced_layernorm(x, weight, bias, 1e-6)

    def ref(x, weight, bias):
        return reference.sliced_layernorm(x, weight, bias, 1e-6)

    return public, ref


def layernorm_inputs(lead, e, e_max, gen):
    return {
        "x": 3 * torch.randn(*lead, e, generator=gen) + 1,
        "weight": torch.randn(e_max, generator=gen),
        "bias": torch.randn(e_max, generator=gen),
    }


# -- CPU: registration, fallback, fake kernels ---------------------------------------------


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
    """Fake CUDA arguments of ``sliced_linear_cpp`` (call inside a ``FakeTensorMode``)."""
    d = {"device": "cuda"}
    bias_dtype = dtype if gelu or residual_dtype is None else residual_dtype  # as cuda_backend passes it
    return (
        torch.empty(m, k, dtype=dtype, **d),
        torch.empty(groups * o_max, k_max, dtype=dtype, **d),
        torch.empty(groups * o_max, dtype=bias_dtype, **d) if with_bias else None,
        o,
        groups,
        gelu,
        None if residual_dtype is None else torch.empty(m, groups * o, dtype=residual_dtype, **d),
    )


@pytest.mark.parametrize("gelu", [False, True], ids=["", "gelu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fake_linear_mixed_dtype_forward(dtype, gelu):
    """bf16/fp16 ``x`` with a float32 residual: output float32, pre-activation in ``x``'s dtype."""
    assert _extension.load(), _extension.load_error()
    with FakeTensorMode():
        out, preact = OPS.sliced_linear_cpp(*_fake_linear_args(dtype, gelu, torch.float32))
        plain_out, plain_preact = OPS.sliced_linear_cpp(*_fake_linear_args(dtype, gelu, None))
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
    """float32 ``grad_out`` with bf16/fp16 ``x``: grad_x/grad_w in ``x``'s dtype; grad_b in ``x``'s with GELU, else float32."""
    assert _extension.load(), _extension.load_error()
    with FakeTensorMode():
        x, w, _, o, groups, _, _ = _fake_linear_args(dtype, gelu, torch.float32)
        grad_out = torch.empty(6, 9, device="cuda")
        preact = torch.empty(6, 9, dtype=dtype, device="cuda") if gelu else torch.empty(0, dtype=dtype, device="cuda")
        grad_x, grad_w, grad_b = OPS.sliced_linear_backward_cpp(grad_out, x, w, preact, o, groups, gelu)
    assert grad_x.shape == x.shape and grad_x.dtype == dtype
    assert grad_w.shape == w.shape and grad_w.dtype == dtype
    assert grad_b.shape == (w.shape[0],) and grad_b.dtype == (dtype if gelu else torch.float32), grad_b.dtype


# -- GPU: linear ---------------------------------------------------------------------------


@pytest.mark.gpu
def test_backend_available_and_selected_on_gpu():
    assert _extension.has_cuda_ops(), "focusformer_fast._C was built without its CUDA ops"
    assert "cuda" in ops.available_backends("cuda")
    with ops.set_backend("cuda"):
        assert dispatch.resolve("sliced_linear", "cuda") is cuda_backend.sliced_linear
        assert dispatch.resolve("sliced_layernorm", "cuda") is cuda_backend.sliced_layernorm
        with pytest.raises(ValueError, match="runs on cuda tensors, not cpu"):
            ops.sliced_linear(torch.randn(2, 3), torch.randn(4, 3), None, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("use_residual", [False, True], ids=["", "residual"])
@pytest.mark.parametrize("gelu", [False, True], ids=["", "gelu"])
@pytest.mark.parametrize("case", LINEAR_CASES, ids=str)
def test_linear_matches_reference(case, gelu, use_residual, use_bias, dtype):
    check_linear(case, dtype, gelu, use_residual, use_bias)


@pytest.mark.gpu
def test_linear_float16_matches_reference():
    check_linear(LINEAR_CASES[1], torch.float16, gelu=True, use_residual=True, use_bias=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case, gelu, use_bias", AUTOFORMER_T_LINEAR_CASES, ids=str)
def test_linear_autoformer_t_sizes_match_reference(case, gelu, use_bias, dtype):
    check_linear(case, dtype, gelu, use_residual=False, use_bias=use_bias)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_strided_activations_match_reference(dtype):
    """``x`` and the residual as column slices of wider buffers (row stride > width), layernorm's ``x`` too."""
    case = ((2, 7), 37, 48, 23, 32, 3)
    _, k, _, o, _, groups = case
    gen = torch.Generator().manual_seed(4)
    inputs = linear_inputs(case, gen, use_bias=True, use_residual=True)
    grad = torch.randn(2, 7, groups * o, generator=gen)
    public, ref = linear_fns(case, gelu=True)

    def strided(fn):
        def call(x, weight, bias, residual):
            x = torch.cat([x, x[..., :5]], dim=-1)[..., :k]
            residual = torch.cat([residual, residual[..., :3]], dim=-1)[..., : groups * o]
            return fn(x, weight, bias, residual)

        return call

    grads = check_cuda_against_reference(strided(public), strided(ref), inputs, grad, dtype, LINEAR_OPS)
    assert_zero_outside_linear_slice(grads, case)

    ln_inputs = layernorm_inputs((2, 7), 37, 48, gen)
    ln_public, ln_ref = layernorm_fns()

    def strided_ln(fn):
        return lambda x, weight, bias: fn(torch.cat([x, x], dim=-1)[..., :37], weight, bias)

    check_cuda_against_reference(
        strided_ln(ln_public), strided_ln(ln_ref), ln_inputs, torch.randn(2, 7, 37, generator=gen), dtype, LAYERNORM_OPS
    )


@pytest.mark.gpu
@pytest.mark.parametrize("use_residual", [True, False], ids=["residual", ""])
@pytest.mark.parametrize("gelu", [False, True], ids=["", "gelu"])
def test_linear_under_bf16_autocast(gelu, use_residual):
    """fp32 super-weights, x and residual under bf16 autocast: the reference's dtypes and values, fp32 ``.grad``."""
    case = LINEAR_CASES[1]
    lead, _, _, o, _, groups = case
    gen = torch.Generator().manual_seed(5)
    inputs = linear_inputs(case, gen, use_bias=True, use_residual=use_residual)
    grad = torch.randn(*lead, groups * o, generator=gen)
    public, _ = linear_fns(case, gelu)
    results = {}
    for backend in ("cuda", "torch"):
        with OpLog() as log:
            with ops.set_backend(backend), torch.autocast("cuda", torch.bfloat16):
                leaves = {n: None if t is None else t.cuda().requires_grad_() for n, t in inputs.items()}
                out = public(**leaves)
            out.backward(grad.to("cuda", out.dtype))
            torch.cuda.synchronize()
        results[backend] = out, {n: t.grad for n, t in leaves.items() if t is not None}, log.names
    (out, grads, names), (ref_out, ref_grads, _) = results["cuda"], results["torch"]
    assert LINEAR_OPS <= names, f"{sorted(LINEAR_OPS - names)} did not run: the backend fell back"
    assert out.dtype == ref_out.dtype == (torch.float32 if use_residual else torch.bfloat16)
    assert_rel_close(out, ref_out, REL_TOL[torch.bfloat16], "output")
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert g.dtype == torch.float32, (name, g.dtype)
        assert_rel_close(g, ref_grads[name], 2 * REL_TOL[torch.bfloat16], f"grad of {name}")
    assert_zero_outside_linear_slice(grads, case)


@pytest.mark.gpu
@pytest.mark.parametrize("use_residual", [False, True], ids=["", "residual"])
def test_float64_under_autocast_runs_the_reference(use_residual):
    """Autocast leaves float64 alone (``F.linear``, ``F.layer_norm``): float64 CUDA inputs run the reference."""
    gen = torch.Generator().manual_seed(6)
    x, w, b = torch.randn(5, 7, generator=gen), torch.randn(3 * 6, 9, generator=gen), torch.randn(18, generator=gen)
    r = torch.randn(5, 3 * 4, generator=gen)
    x, w, b, r = (t.to("cuda", torch.float64) for t in (x, w, b, r))
    r = r if use_residual else None
    with torch.autocast("cuda", torch.bfloat16):
        with ops.set_backend("cuda"), OpLog() as log:
            got = ops.sliced_linear(x, w, b, 4, 3, True, r)
            got_ln = ops.sliced_layernorm(x, b, b, 1e-6)
        expected = reference.sliced_linear(x, w, b, 4, 3, True, r)
        expected_ln = reference.sliced_layernorm(x, b, b, 1e-6)
    assert expected.dtype == expected_ln.dtype == torch.float64
    assert got.dtype == got_ln.dtype == torch.float64, (got.dtype, got_ln.dtype)
    assert not any(name.startswith("focusformer::") for name in log.names), sorted(log.names)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_ln, expected_ln)


# -- GPU: layernorm ------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", LAYERNORM_CASES, ids=str)
def test_layernorm_matches_reference(case, dtype):
    lead, e, e_max = case
    gen = torch.Generator().manual_seed(0)
    inputs = layernorm_inputs(lead, e, e_max, gen)
    grad = torch.randn(*lead, e, generator=gen)
    grads = check_cuda_against_reference(*layernorm_fns(), inputs, grad, dtype, LAYERNORM_OPS)
    for name in ("weight", "bias"):
        assert torch.all(grads[name][e:] == 0), f"{name} gradient nonzero past E={e}"


@pytest.mark.gpu
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layernorm_under_bf16_autocast_computes_in_float32(x_dtype):
    """Under bf16 autocast: float32 output as the reference's, gradients in the leaves' dtypes."""
    gen = torch.Generator().manual_seed(7)
    inputs = layernorm_inputs((197,), 37, 48, gen)
    grad = torch.randn(197, 37, generator=gen)
    public, _ = layernorm_fns()
    results = {}
    for backend in ("cuda", "torch"):
        with OpLog() as log:
            with ops.set_backend(backend), torch.autocast("cuda", torch.bfloat16):
                leaves = {n: t.to("cuda", x_dtype if n == "x" else torch.float32) for n, t in inputs.items()}
                leaves = {n: t.requires_grad_() for n, t in leaves.items()}
                out = public(**leaves)
            out.backward(grad.to("cuda", out.dtype))
            torch.cuda.synchronize()
        results[backend] = out, {n: t.grad for n, t in leaves.items()}, log.names
    (out, grads, names), (ref_out, ref_grads, _) = results["cuda"], results["torch"]
    assert LAYERNORM_OPS <= names, f"{sorted(LAYERNORM_OPS - names)} did not run: the backend fell back"
    assert out.dtype == ref_out.dtype == torch.float32
    assert_rel_close(out, ref_out, REL_TOL[torch.float32], "output")
    for name, g in grads.items():
        assert g.dtype == ref_grads[name].dtype == (x_dtype if name == "x" else torch.float32), (name, g.dtype)
        assert_rel_close(g, ref_grads[name], REL_TOL[g.dtype], f"grad of {name}")


# -- GPU: opcheck --------------------------------------------------------------------------


def _cuda_randn(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to("cuda", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype, residual_dtype, gelu, with_bias",
    [
        (torch.float32, torch.float32, True, True),
        (torch.float32, None, False, False),
        (torch.bfloat16, torch.float32, True, True),  # bf16 bias and pre-activation, fp32 residual/output
        (torch.bfloat16, torch.float32, False, True),  # fp32 bias (added in the fp32 epilogue)
    ],
    ids=["f32-gelu-bias-residual", "f32-plain", "bf16-f32residual-gelu", "bf16-f32residual"],
)
def test_opcheck_linear(dtype, residual_dtype, gelu, with_bias):
    gen = torch.Generator().manual_seed(0)
    m, k, k_max, o, o_max, groups = 197, 37, 48, 23, 32, 3
    bias_dtype = dtype if gelu or residual_dtype is None else residual_dtype  # as cuda_backend passes it
    x, w = _cuda_randn(gen, m, k, dtype=dtype), _cuda_randn(gen, groups * o_max, k_max, dtype=dtype)
    b = _cuda_randn(gen, groups * o_max, dtype=bias_dtype) if with_bias else None
    r = None if residual_dtype is None else _cuda_randn(gen, m, groups * o, dtype=residual_dtype)
    args = (x, w, b, o, groups, gelu, r)
    grad_args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(OPS.sliced_linear_cpp.default, grad_args)
    out, preact = OPS.sliced_linear_cpp(*args)
    assert out.dtype == (dtype if residual_dtype is None else residual_dtype)
    grad_out = _cuda_randn(gen, m, groups * o, dtype=out.dtype)
    torch.library.opcheck(OPS.sliced_linear_backward_cpp.default, (grad_out, x, w, preact, o, groups, gelu))


@pytest.mark.gpu
def test_opcheck_layernorm_bfloat16():
    gen = torch.Generator().manual_seed(0)
    x, w, b = (_cuda_randn(gen, *s, dtype=torch.bfloat16) for s in ((197, 37), (48,), (48,)))
    torch.library.opcheck(OPS.sliced_layernorm_cpp.default, (x.clone().requires_grad_(), w.clone().requires_grad_(), b, 1e-6))
    _, mean, rstd = OPS.sliced_layernorm_cpp(x, w, b, 1e-6)
    assert mean.dtype == rstd.dtype == torch.float32
    torch.library.opcheck(OPS.sliced_layernorm_backward_cpp.default, (torch.randn_like(x), x, w, mean, rstd))


# -- GPU: bad inputs -----------------------------------------------------------------------


def _c(*shape, dtype=torch.float32, device="cuda"):
    return torch.zeros(*shape, dtype=dtype, device=device)


BF16, F16, F64 = torch.bfloat16, torch.float16, torch.float64


@pytest.mark.gpu
@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: OPS.sliced_linear_cpp(_c(6, 5, dtype=BF16), _c(8, 7, dtype=BF16), None, 3, 2, False, _c(6, 6, dtype=F64)),
         ("residual", "Double")),
        (lambda: OPS.sliced_linear_cpp(_c(6, 5, dtype=F16), _c(8, 7, dtype=F16), None, 3, 2, False, _c(6, 6, dtype=BF16)),
         ("residual", "BFloat16")),
        (lambda: OPS.sliced_linear_cpp(_c(6, 5), _c(8, 7, device="cpu"), None, 3, 2, False, None), ("weight", "cpu")),
        (lambda: OPS.sliced_linear_cpp(_c(6, 5), _c(8, 7), None, 3, 2, False, _c(6, 6, device="cpu")),
         ("residual", "cpu")),
        (lambda: OPS.sliced_linear_cpp(_c(6, 5, dtype=F64), _c(8, 7, dtype=F64), None, 3, 2, False, None),
         ("x", "Double")),
        (lambda: OPS.sliced_linear_cpp(_c(6, 5, dtype=BF16), _c(8, 7), None, 3, 2, False, None), ("weight", "Float")),
        (lambda: OPS.sliced_linear_cpp(_c(6, 5, dtype=BF16), _c(8, 7, dtype=BF16), _c(8, dtype=F64), 3, 2, True, None),
         ("bias", "Double")),
        (lambda: OPS.sliced_linear_cpp(_c(6, 5), _c(8, 7), None, 5, 2, False, None), ("out_features=5", "[1, 4]")),
        (lambda: OPS.sliced_linear_cpp(_c(6, 5), _c(8, 7), None, 3, 2, False, _c(6, 3)), ("residual", "[6, 3]")),
        (lambda: OPS.sliced_linear_backward_cpp(_c(6, 6, dtype=F64), _c(6, 5), _c(8, 7), _c(0), 3, 2, False),
         ("grad_out", "Double")),
        (lambda: OPS.sliced_layernorm_cpp(_c(4, 5, dtype=F16), _c(8, dtype=F16), _c(8, dtype=F16), 1e-6),
         ("x.dtype=Half must be float32 or bfloat16 on CUDA",)),
        (lambda: OPS.sliced_layernorm_cpp(_c(4, 5), _c(8, device="cpu"), _c(8), 1e-6), ("weight", "cpu")),
    ],
    ids=[
        "residual-f64", "residual-bf16-with-f16", "weight-on-cpu", "residual-on-cpu", "x-f64", "weight-dtype",
        "bias-f64", "out-features", "residual-shape", "grad-out-f64", "layernorm-f16", "layernorm-weight-on-cpu",
    ],
)
def test_bad_cuda_inputs_raise_naming_the_argument(call, words):
    with pytest.raises(RuntimeError) as info:
        call()
    message = str(info.value)
    assert all(w in message for w in words), f"{words} not all in: {message}"


# -- GPU: the whole supernet, attention ----------------------------------------------------


def _supernet_run(net, images, arch, backend, autocast_dtype=None):
    """Logits and every parameter's gradient of ``net(images, arch)`` on ``backend``, and the ops that ran."""
    net.zero_grad(set_to_none=True)
    with OpLog() as log:
        with ops.set_backend(backend), torch.autocast("cuda", autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            out = net(images, arch)
        out.float().square().mean().backward()
        torch.cuda.synchronize()
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    return {"logits": out.detach(), **grads}, log.names


@pytest.mark.gpu
@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["float32", "bf16-autocast"])
def test_supernet_autoformer_t_matches_torch_backend(autocast_dtype):
    """3 random autoformer-t subnets, batch 2: logits and all parameter gradients vs the ``torch`` backend.

    float32: relative error <= 1e-4, gradients exactly zero outside the entries the subnet uses.
    bf16 autocast: error vs the float32 run at most 2x the torch backend's own (+1e-3).
    """
    torch.manual_seed(0)
    space = SearchSpace.preset("autoformer-t")
    net = Supernet(space).cuda()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, space.in_chans, space.image_size, space.image_size, generator=gen).cuda()
    for seed in range(3):
        arch = space.sample(random.Random(seed))
        got, names = _supernet_run(net, images, arch, "cuda", autocast_dtype)
        assert LINEAR_OPS | LAYERNORM_OPS <= names, f"{arch}: the cuda kernels did not run"
        expected, _ = _supernet_run(net, images, arch, "torch", autocast_dtype)
        assert got.keys() == expected.keys(), arch
        if autocast_dtype is None:
            for name, value in got.items():
                assert rel_err(value, expected[name]) <= 1e-4, f"{arch}: {name}: {rel_err(value, expected[name]):.3g}"
                if name != "logits":
                    used = used_mask(name, value.shape, arch, space)
                    assert torch.all(value.cpu()[~used] == 0), f"{arch}: {name} nonzero outside the used slice"
        else:
            exact, _ = _supernet_run(net, images, arch, "torch")
            for name, value in exact.items():
                err, ref_err = rel_err(got[name], value), rel_err(expected[name], value)
                assert err <= 2 * ref_err + 1e-3, f"{arch}: {name}: {err:.3g} > 2 * {ref_err:.3g} + 1e-3"


@pytest.mark.gpu
def test_attention_bf16_error_at_most_twice_sdpa():
    """bf16 attention on the cuda backend: error vs float64, output and dqkv, at most 2x PyTorch SDPA's in bf16."""
    heads, hd = 3, 64
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(4, 197, 3 * heads * hd, generator=gen)
    grad = torch.randn(4, 197, heads * hd, generator=gen)

    def run(backend, dtype):
        leaf = qkv.to("cuda", dtype, copy=True).requires_grad_()
        with ops.set_backend(backend):
            out = ops.sliced_attention(leaf, heads, hd)
        out.backward(grad.to("cuda", dtype))
        return out, leaf.grad

    out, dqkv = run("cuda", torch.bfloat16)
    sdpa, sdpa_dqkv = run("torch", torch.bfloat16)
    exact, exact_dqkv = run("torch", torch.float64)
    assert out.dtype == dqkv.dtype == torch.bfloat16
    assert rel_err(out, exact) <= 2 * rel_err(sdpa, exact)
    assert rel_err(dqkv, exact_dqkv) <= 2 * rel_err(sdpa_dqkv, exact_dqkv)
