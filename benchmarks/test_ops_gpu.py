"""Per-op timings of the sliced ops on a GPU (pytest-benchmark): op x shape x fwd/bwd x mode.

Shapes are autoformer-t layers at batch 128 (197 tokens, head dim 64), bf16. Each case runs in
four modes, side by side in one group (``<op>-<shape>-<fwd|bwd>``):

* ``cuda``: the op on the ``cuda`` backend (cuBLASLt GEMMs reading the super-weight slice in
  place, the CUDA LayerNorm kernel; attention is SDPA on strided views, as ``torch-sliced``);
* ``triton``: the op on the ``triton`` backend (super-weights read through strides);
* ``torch-sliced``: the reference op on views of the super-weights (eager PyTorch): the
  baseline each group's ratios are taken against (``benchmarks/render.py``);
* ``contiguous``: cuBLAS / SDPA / LayerNorm on contiguous copies of the used slices (copied
  outside the timed region), i.e. a dense layer of the same shape.

``extra_info`` holds the work of one call (``flop`` or ``bytes``), the device and versions, and,
when timed, the achieved rate (``tflops`` or ``gbps``) and its fraction of the device's peak
(``PEAKS``, measured: H100 731 TFLOP/s bf16 dense and 3.02 TB/s copy, H200 780 TFLOP/s and
4.3 TB/s). Skipped without CUDA (and under ``TRITON_INTERPRET=1``); a mode whose backend cannot run here (e.g. ``cuda`` when
``focusformer_fast._C`` was built without CUDA) is skipped with the reason (``-rs`` shows it).

    python -m pytest -rs benchmarks/test_ops_gpu.py --benchmark-json=$OUT/ops_<device>.json
    python benchmarks/render.py $OUT/ops_<device>.json -o $OUT/ops_<device>.md
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _env import GPU_ONLY, environment, require_backend

from focusformer_fast import ops

pytestmark = GPU_ONLY

BATCH, TOKENS, HEAD_DIM = 128, 197, 64
DTYPE = torch.bfloat16
# (peak dense bf16 FLOP/s, peak memory bytes/s) by device-name substring, as measured on such a
# device (an 8192^3 bf16 matmul through PyTorch; a large device-to-device copy, bytes read + written)
PEAKS = {"H100": (731e12, 3.02e12), "H200": (780e12, 4.3e12)}

# name: (K, K_max, out_features, O_max, groups, gelu, residual)
LINEAR = {
    "qkv-e240-h4": (240, 240, 256, 256, 3, False, False),
    "qkv-e192-h3": (192, 240, 192, 256, 3, False, False),
    "proj-h4-e240": (256, 256, 240, 240, 1, False, True),
    "proj-h3-e216": (192, 256, 216, 240, 1, False, True),
    "fc1-e240-r4": (240, 240, 960, 960, 1, True, False),
    "fc1-e216-r3.5": (216, 240, 756, 960, 1, True, False),
    "fc2-r4-e240": (960, 960, 240, 240, 1, False, True),
    "fc2-r3.5-e216": (756, 960, 216, 240, 1, False, True),
}
LAYERNORM = {"e240": (240, 240), "e216": (216, 240)}
ATTENTION = {"h4": 4, "h3": 3}
MODES = ["cuda", "triton", "torch-sliced", "contiguous"]
BASELINE = "torch-sliced"
# the ops backend of each sliced mode (``contiguous`` calls torch.nn.functional directly)
BACKEND = {"cuda": "cuda", "triton": "triton", "torch-sliced": "torch"}


def _randn(*shape: int, device: torch.device, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape, device=device, dtype=torch.float32)).to(DTYPE).requires_grad_()


def linear_case(name: str, mode: str, device: torch.device, batch: int = BATCH) -> tuple[Callable, tuple, dict]:
    """``(fn, inputs, work)``: ``fn(*inputs)`` computes the layer in ``mode``; ``work`` its fwd/bwd FLOPs."""
    k, k_max, o, o_max, groups, gelu, residual = LINEAR[name]
    m = batch * TOKENS
    x = _randn(batch, TOKENS, k, device=device)
    w = _randn(groups * o_max, k_max, device=device, scale=k**-0.5)
    b = _randn(groups * o_max, device=device)
    r = _randn(batch, TOKENS, groups * o, device=device) if residual else None
    flop = 2 * m * groups * o * k
    work = {"fwd": {"flop": flop}, "bwd": {"flop": 2 * flop}}
    if mode == "contiguous":
        rows = torch.cat([torch.arange(g * o_max, g * o_max + o) for g in range(groups)]).to(device)
        wc = w.detach()[rows, :k].contiguous().requires_grad_()
        bc = b.detach()[rows].contiguous().requires_grad_()

        def dense(x, wc, bc, r):
            y = F.linear(x, wc, bc)
            y = F.gelu(y) if gelu else y
            return y if r is None else y + r

        return dense, (x, wc, bc, r), work
    backend = BACKEND[mode]

    def sliced(x, w, b, r):
        with ops.set_backend(backend):
            return ops.sliced_linear(x, w, b, o, groups, gelu, r)

    return sliced, (x, w, b, r), work


def layernorm_case(name: str, mode: str, device: torch.device, batch: int = BATCH) -> tuple[Callable, tuple, dict]:
    e, e_max = LAYERNORM[name]
    x = _randn(batch, TOKENS, e, device=device)
    w, b = _randn(e_max, device=device), _randn(e_max, device=device)
    elems = batch * TOKENS * e * DTYPE.itemsize
    work = {"fwd": {"bytes": 2 * elems}, "bwd": {"bytes": 3 * elems}}
    if mode == "contiguous":
        wc, bc = (t.detach()[:e].contiguous().requires_grad_() for t in (w, b))
        return (lambda x, w, b: F.layer_norm(x, (e,), w, b, 1e-6)), (x, wc, bc), work
    backend = BACKEND[mode]

    def sliced(x, w, b):
        with ops.set_backend(backend):
            return ops.sliced_layernorm(x, w, b, 1e-6)

    return sliced, (x, w, b), work


def attention_case(name: str, mode: str, device: torch.device, batch: int = BATCH) -> tuple[Callable, tuple, dict]:
    h = ATTENTION[name]
    qkv = _randn(batch, TOKENS, 3 * h * HEAD_DIM, device=device)
    flop = 4 * batch * h * TOKENS**2 * HEAD_DIM
    work = {"fwd": {"flop": flop}, "bwd": {"flop": 5 * flop // 2}}
    if mode == "contiguous":
        q, k, v = (t.detach().contiguous().requires_grad_()
                   for t in qkv.view(batch, TOKENS, 3, h, HEAD_DIM).permute(2, 0, 3, 1, 4))
        return F.scaled_dot_product_attention, (q, k, v), work
    backend = BACKEND[mode]

    def sliced(qkv):
        with ops.set_backend(backend):
            return ops.sliced_attention(qkv, h, HEAD_DIM)

    return sliced, (qkv,), work


CASES = {
    "linear": (LINEAR, linear_case),
    "layernorm": (LAYERNORM, layernorm_case),
    "attention": (ATTENTION, attention_case),
}


def timed(fn: Callable, inputs: tuple, direction: str, device: torch.device) -> Callable[[], Any]:
    """A synchronized call of ``fn`` (``fwd``) or of the backward of one saved forward (``bwd``)."""
    if direction == "fwd":
        def call() -> Any:
            out = fn(*inputs)
            torch.cuda.synchronize(device)
            return out

        return call
    out = fn(*inputs)
    grad = torch.randn_like(out)
    leaves = [t for t in inputs if t is not None]

    def call() -> Any:
        grads = torch.autograd.grad(out, leaves, grad, retain_graph=True)
        torch.cuda.synchronize(device)
        return grads

    return call


def _params() -> list[Any]:
    return [
        pytest.param(op, shape, direction, mode, id=f"{op}-{shape}-{direction}-{mode}")
        for op, (shapes, _) in CASES.items() for shape in shapes for direction in ("fwd", "bwd") for mode in MODES
    ]


@pytest.mark.parametrize(("op", "shape", "direction", "mode"), _params())
def test_op(benchmark, op: str, shape: str, direction: str, mode: str) -> None:
    if mode in BACKEND:
        require_backend(BACKEND[mode])
    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    fn, inputs, work = CASES[op][1](shape, mode, device)
    call = timed(fn, inputs, direction, device)
    for _ in range(3):
        call()
    env = environment(device)
    benchmark.group = f"{op}-{shape}-{direction}"
    benchmark.extra_info.update(kind="op", op=op, shape=shape, direction=direction, mode=mode, baseline=BASELINE,
                                batch=BATCH, tokens=TOKENS, dtype="bf16", **work[direction], **env)
    result = benchmark.pedantic(call, rounds=50, iterations=1, warmup_rounds=5)
    assert result is not None
    if benchmark.stats is not None:
        seconds = benchmark.stats.stats.median
        peak = next((p for key, p in PEAKS.items() if key in env["device"]), None)
        if "flop" in work[direction]:
            rate = work[direction]["flop"] / seconds
            benchmark.extra_info["tflops"] = rate / 1e12
            if peak is not None:
                benchmark.extra_info["fraction_of_peak"] = rate / peak[0]
        else:
            rate = work[direction]["bytes"] / seconds
            benchmark.extra_info["gbps"] = rate / 1e9
            if peak is not None:
                benchmark.extra_info["fraction_of_peak"] = rate / peak[1]
