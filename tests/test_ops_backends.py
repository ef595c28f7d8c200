"""Every backend on this machine against the float64 reference: one case table, one tolerance table.

The targets (``tests/_backends.py``): ``cpp`` on the CPU, ``triton`` under Triton's interpreter
(``TRITON_INTERPRET=1``, as CI runs), and on a GPU ``torch``, ``cuda`` and ``triton``; beside them
``reference-fp32-rounding``, the reference in float32 on the CPU, which measures float32's rounding.
For each target and each of its dtypes: the linear (bias, GELU, residual, ``[Q; K; V]`` groups,
widths that are not multiples of 16, an odd row stride, strided activations), the layernorm and
the attention, forward and every input gradient, weight/bias gradients exactly zero outside the
used slice, and the target's own kernels actually ran (no silent fallback to the reference).
Then autocast (output dtypes and values against the reference under the same autocast), float64
inputs under autocast (kept in float64 and run by the reference, as autocast leaves them), and
the whole supernet. ``gpu`` tests add the real autoformer-t sizes. What is particular to each backend:
``test_ops_backends_cpp.py``, ``test_ops_backends_cuda.py``, ``test_ops_backends_triton.py``.

    TRITON_INTERPRET=1 python -m pytest -q tests/test_ops_backends.py      # CPU
    FOCUSFORMER_TEST_BACKENDS=cuda python -m pytest -q -m gpu tests/test_ops_backends.py
"""

import random

import pytest
import torch

from _backends import REL_TOL, TARGETS, OpLog, check, rel_err, run
from _subnet_masks import used_mask
from focusformer_fast import SearchSpace, Supernet, ops

# (leading shape of x, K, K_max, out_features, O_max, groups, gelu, residual, bias). The
# interpreter tiles by 32: 33..70 span two or three tiles (main loop + masked tail).
LINEAR_CASES = [
    ((1,), 20, 24, 5, 8, 1, False, False, True),  # one row, narrower than a tile
    ((2, 17), 37, 48, 17, 24, 3, False, False, True),  # [Q; K; V] groups, widths not multiples of 16
    ((2, 5), 33, 40, 65, 72, 1, True, False, True),  # GELU; O spans three tiles
    ((2, 17), 40, 40, 20, 24, 1, False, True, True),  # residual
    ((3, 9), 24, 32, 9, 16, 3, True, True, False),  # GELU + residual, groups, no bias
    ((2, 65), 20, 24, 17, 24, 1, True, True, True),  # 130 rows: the weight-gradient reduction splits
    ((2, 9), 70, 80, 40, 48, 1, True, True, True),  # K over two tiles and a tail
    ((2, 7), 45, 45, 29, 45, 3, False, True, True),  # row stride 45: unaligned rows and group bias slices
    ((197,), 37, 48, 32, 32, 3, False, True, True),  # every group uses all its rows: one merged GEMM
]
# (leading shape of x, E, E_max, strided x)
LAYERNORM_CASES = [((1,), 5, 8, False), ((2, 17), 20, 27, True), ((3, 33), 48, 64, False), ((197,), 37, 48, False)]
# (batch, tokens, heads, head dim, strided qkv)
ATTENTION_CASES = [(2, 17, 3, 16, False), (1, 65, 2, 16, True), (1, 5, 1, 16, False), (2, 9, 2, 8, False)]
# autoformer-t at batch 8: e 216 of 240, h 4 (hd 64), MLP 864 of 960, 197 tokens
GPU_LINEAR_CASES = [
    ((8, 197), 216, 240, 256, 256, 3, False, False, True),  # qkv
    ((8, 197), 192, 256, 216, 240, 1, False, True, True),  # proj (3 heads) + residual
    ((8, 197), 216, 240, 756, 960, 1, True, False, True),  # fc1 (ratio 3.5) + GELU
    ((8, 197), 756, 960, 216, 240, 1, False, True, True),  # fc2 + residual
    ((8,), 216, 240, 1000, 1000, 1, False, False, True),  # head
]

GPU_TARGETS = [t for t in TARGETS if t.gpu]


def target_dtypes(targets, op="linear"):
    return [pytest.param(t, d, id=f"{t.id}-{str(d).removeprefix('torch.')}", marks=[pytest.mark.gpu] * t.gpu)
            for t in targets for d in t.dtypes_of(op)]


def target_params(targets):
    return [pytest.param(t, id=t.id, marks=[pytest.mark.gpu] * t.gpu) for t in targets]


def linear_inputs(case, gen):
    lead, k, k_max, o, o_max, groups, _, residual, bias = case
    return {
        "x": torch.randn(*lead, k, generator=gen),
        "weight": torch.randn(groups * o_max, k_max, generator=gen) / k**0.5,
        "bias": torch.randn(groups * o_max, generator=gen) if bias else None,
        "residual": torch.randn(*lead, groups * o, generator=gen) if residual else None,
    }


def linear_fn(case, strided=False):
    lead, k, _, o, _, groups, gelu, _, _ = case

    def fn(x, weight, bias, residual):
        if strided:  # x and the residual as column slices of wider buffers (row stride > width)
            x = torch.cat([x, x[..., :5]], dim=-1)[..., :k]
            if residual is not None:
                residual = torch.cat([residual, residual[..., :3]], dim=-1)[..., : groups * o]
        return ops.sliced_linear(x, weight, bias, o, groups, gelu, residual)

    return fn


def assert_zero_outside_linear_slice(grads, case):
    _, k, k_max, o, o_max, groups, _, _, bias = case
    used = torch.zeros(groups * o_max, k_max, dtype=torch.bool)
    for g in range(groups):
        used[g * o_max : g * o_max + o, :k] = True
    assert torch.all(grads["weight"].cpu()[~used] == 0), "weight gradient nonzero outside the used slice"
    if bias:
        assert torch.all(grads["bias"].cpu()[~used[:, 0]] == 0), "bias gradient nonzero outside the used slice"


def check_linear(target, case, dtype, strided=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inputs = linear_inputs(case, gen)
    lead, _, _, o, _, groups = case[:6]
    grad = torch.randn(*lead, groups * o, generator=gen)
    grads = check(target, "linear", linear_fn(case, strided), inputs, grad, dtype)
    assert_zero_outside_linear_slice(grads, case)


def check_layernorm(target, case, dtype):
    lead, e, e_max, strided = case
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "x": 3 * torch.randn(*lead, e, generator=gen) + 1,
        "weight": torch.randn(e_max, generator=gen),
        "bias": torch.randn(e_max, generator=gen),
    }
    grad = torch.randn(*lead, e, generator=gen)

    def fn(x, weight, bias):
        if strided:  # x as a view into a wider buffer: row stride 2*E
            x = torch.cat([x, x], dim=-1)[..., :e]
        return ops.sliced_layernorm(x, weight, bias, 1e-6)

    grads = check(target, "layernorm", fn, inputs, grad, dtype)
    for name in ("weight", "bias"):
        assert torch.all(grads[name][e:] == 0), f"{name} gradient nonzero past E={e}"


# -- ops -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", LINEAR_CASES, ids=str)
@pytest.mark.parametrize("target, dtype", target_dtypes(TARGETS))
def test_linear(target, dtype, case):
    check_linear(target, case, dtype)


@pytest.mark.parametrize("target, dtype", target_dtypes(TARGETS))
def test_linear_strided_activations(target, dtype):
    check_linear(target, LINEAR_CASES[1][:7] + (True, True), dtype, strided=True, seed=4)


@pytest.mark.parametrize("case", LAYERNORM_CASES, ids=str)
@pytest.mark.parametrize("target, dtype", target_dtypes(TARGETS, "layernorm"))
def test_layernorm(target, dtype, case):
    check_layernorm(target, case, dtype)


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=str)
@pytest.mark.parametrize("target, dtype", target_dtypes(TARGETS))
def test_attention(target, dtype, case):
    b, n, h, hd, strided = case
    gen = torch.Generator().manual_seed(0)
    inputs = {"qkv": torch.randn(b, n, 3 * h * hd, generator=gen)}
    grad = torch.randn(b, n, h * hd, generator=gen)

    def fn(qkv):
        if strided:  # qkv as the first columns of a wider projection output
            qkv = torch.cat([qkv, qkv[..., :5]], dim=-1)[..., : 3 * h * hd]
        return ops.sliced_attention(qkv, h, hd)

    check(target, "attention", fn, inputs, grad, dtype)


# -- autocast, float64 -----------------------------------------------------------------------


def autocast_dtype(target):
    """The autocast dtype a target is checked under: bf16, or fp16 under Triton's interpreter."""
    return torch.float16 if target.backend == "triton" and not target.gpu else torch.bfloat16


@pytest.mark.parametrize("target", target_params([t for t in TARGETS if t.backend != "cpp"]))
def test_autocast_dtypes_and_values_match_reference(target):
    """Under autocast: the reference's output dtypes (LayerNorm: the autocast dtype on the fast
    backends, float32 on the reference), its values within the dtype's tolerance, float32 gradients."""
    dtype = autocast_dtype(target)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 17, 20, generator=gen)
    params = {
        "ln_w": torch.randn(24, generator=gen), "ln_b": torch.randn(24, generator=gen),
        "w": torch.randn(3 * 32, 24, generator=gen) / 5, "b": torch.randn(3 * 32, generator=gen),
        "w2": torch.randn(24, 32, generator=gen) / 5,
    }

    def block(x, ln_w, ln_b, w, b, w2):
        y = ops.sliced_layernorm(x, ln_w, ln_b, 1e-6)
        qkv = ops.sliced_linear(y, w, b, 32, groups=3)
        a = ops.sliced_attention(qkv, 2, 16)
        out = ops.sliced_linear(a, w2, None, 20, residual=x)
        return [y, qkv, a, out]

    results = {}
    for backend in ("torch", target.backend):
        leaves = {n: t.to(target.device).requires_grad_() for n, t in {"x": x, **params}.items()}
        with ops.set_backend(backend), torch.autocast(target.device, dtype=dtype):
            outs = block(**leaves)
        outs[-1].float().square().sum().backward()
        results[backend] = outs, {n: t.grad for n, t in leaves.items()}
    (outs, grads), (ref_outs, ref_grads) = results[target.backend], results["torch"]
    expected_dtypes = [o.dtype for o in ref_outs]
    if target.backend != "torch":
        expected_dtypes[0] = dtype  # LayerNorm writes the compute dtype the next linear reads
    assert [o.dtype for o in outs] == expected_dtypes
    for o, r in zip(outs, ref_outs):
        assert rel_err(o, r) <= REL_TOL[dtype]
    for name, g in grads.items():
        assert g.dtype == torch.float32
        assert rel_err(g, ref_grads[name]) <= 5 * REL_TOL[dtype], name


@pytest.mark.parametrize("target", target_params([t for t in TARGETS if t.backend != "cpp"]))
def test_float64_under_autocast_stays_float64(target):
    """Autocast leaves float64 alone (``F.linear``, ``F.layer_norm``, SDPA), so the backends do too:
    float64 output, the reference's values, no kernel of the backend ran."""
    torch.manual_seed(6)
    f64 = dict(dtype=torch.float64, device=target.device)
    x, w, b = torch.randn(5, 7, **f64), torch.randn(3 * 6, 9, **f64), torch.randn(18, **f64)
    r, qkv = torch.randn(5, 3 * 4, **f64), torch.randn(2, 5, 3 * 2 * 8, **f64)
    with torch.autocast(target.device, dtype=autocast_dtype(target)):
        with ops.set_backend(target.backend), OpLog() as log:
            got = [ops.sliced_linear(x, w, b, 4, 3, True, r), ops.sliced_layernorm(x, b, b, 1e-6),
                   ops.sliced_attention(qkv, 2, 8)]
        with ops.set_backend("torch"):
            expected = [ops.sliced_linear(x, w, b, 4, 3, True, r), ops.sliced_layernorm(x, b, b, 1e-6),
                        ops.sliced_attention(qkv, 2, 8)]
    assert [g.dtype for g in got] == [torch.float64] * 3
    assert not any(name.startswith("focusformer::") for name in log.names), sorted(log.names)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


# -- the whole supernet ----------------------------------------------------------------------


def supernet_run(net, images, arch, backend, autocast_dtype=None):
    """Logits and every parameter's gradient of ``net(images, arch)`` on ``backend``."""
    net.zero_grad(set_to_none=True)
    enabled = autocast_dtype is not None
    with ops.set_backend(backend), torch.autocast(images.device.type, autocast_dtype, enabled=enabled):
        out = net(images, arch)
    out.float().square().mean().backward()
    return {"logits": out.detach(), **{n: p.grad for n, p in net.named_parameters() if p.grad is not None}}


def supernet_case(preset, batch, seed, device):
    torch.manual_seed(seed)
    space = SearchSpace.preset(preset)
    net = Supernet(space).to(device)
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, space.in_chans, space.image_size, space.image_size, generator=g).to(device)
    return space, net, images


@pytest.mark.parametrize("target", target_params(TARGETS))
def test_supernet_digits_matches_torch_backend(target):
    """Random digits subnets, float32: logits and all gradients, exactly zero outside each parameter's used slice."""
    space, net, images = supernet_case("digits", batch=2, seed=0, device=target.device)
    rng = random.Random(0)
    for arch in (space.sample(rng), space.sample(rng)):
        got = supernet_run(net, images, arch, target.backend)
        expected = supernet_run(net, images, arch, "torch")
        assert got.keys() == expected.keys(), arch
        for name, value in got.items():
            assert rel_err(value, expected[name]) <= 1e-5, f"{arch}: {name}"
            if name != "logits":
                assert torch.all(value.cpu()[~used_mask(name, value.shape, arch, space)] == 0), f"{arch}: {name}"


# -- real sizes on a GPU ---------------------------------------------------------------------


@pytest.mark.parametrize("case", GPU_LINEAR_CASES, ids=str)
@pytest.mark.parametrize("target, dtype", target_dtypes(GPU_TARGETS))
def test_gpu_linear_real_sizes(target, dtype, case):
    check_linear(target, case, dtype)


@pytest.mark.parametrize("e", [192, 216, 240])
@pytest.mark.parametrize("target, dtype", target_dtypes(GPU_TARGETS, "layernorm"))
def test_gpu_layernorm_real_sizes(target, dtype, e):
    check_layernorm(target, ((128, 197), e, 240, False), dtype)


@pytest.mark.parametrize("heads", [3, 4])
@pytest.mark.parametrize("target", target_params(GPU_TARGETS))
def test_gpu_attention_bf16_error_at_most_twice_sdpa(target, heads):
    """bf16: error vs float64, output and dqkv, at most 2x that of PyTorch's SDPA in bf16."""
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(8, 197, 3 * heads * 64, generator=gen)
    grad = torch.randn(8, 197, heads * 64, generator=gen)
    fn = lambda qkv: ops.sliced_attention(qkv, heads, 64)  # noqa: E731
    with ops.set_backend(target.backend):
        out, grads = run(fn, {"qkv": qkv}, grad, torch.bfloat16, "cuda")
    with ops.set_backend("torch"):
        sdpa, sdpa_grads = run(fn, {"qkv": qkv}, grad, torch.bfloat16, "cuda")
        exact, exact_grads = run(fn, {"qkv": qkv}, grad, torch.float64, "cuda")
    assert out.dtype == grads["qkv"].dtype == torch.bfloat16
    assert rel_err(out, exact) <= 2 * rel_err(sdpa, exact)
    assert rel_err(grads["qkv"], exact_grads["qkv"]) <= 2 * rel_err(sdpa_grads["qkv"], exact_grads["qkv"])


@pytest.mark.parametrize("autocast", [None, torch.bfloat16], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("target", target_params(GPU_TARGETS))
def test_gpu_supernet_autoformer_t_matches_torch_backend(target, autocast):
    """3 random autoformer-t subnets, batch 2, vs the ``torch`` backend: float32 within 1e-4 and zero
    outside the used slices; bf16 autocast: error vs the float32 run at most 2x the torch backend's (+1e-3)."""
    space, net, images = supernet_case("autoformer-t", batch=2, seed=0, device="cuda")
    for seed in range(3):
        arch = space.sample(random.Random(seed))
        got = supernet_run(net, images, arch, target.backend, autocast)
        expected = supernet_run(net, images, arch, "torch", autocast)
        assert got.keys() == expected.keys(), arch
        if autocast is None:
            for name, value in got.items():
                assert rel_err(value, expected[name]) <= 1e-4, f"{arch}: {name}: {rel_err(value, expected[name]):.3g}"
                if name != "logits":
                    assert torch.all(value.cpu()[~used_mask(name, value.shape, arch, space)] == 0), f"{arch}: {name}"
        else:
            exact = supernet_run(net, images, arch, "torch")
            for name, value in exact.items():
                err, ref_err = rel_err(got[name], value), rel_err(expected[name], value)
                assert err <= 2 * ref_err + 1e-3, f"{arch}: {name}: {err:.3g} > 2 * {ref_err:.3g} + 1e-3"
