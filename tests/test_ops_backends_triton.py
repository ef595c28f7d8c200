"""What is particular to the ``triton`` backend: its registration, its ops' contracts (``opcheck``) and the
weight gradient of a cast weight. The weight-gradient split of its linear kernels:
``test_ops_kernels_linear.py``; its values against the reference, with every other backend:
``test_ops_backends.py``.

Without a GPU these run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, tiny
shapes, float32/float16 only). With a GPU (and the interpreter off) they run on CUDA tensors:

    TRITON_INTERPRET=1 python -m pytest -q tests/test_ops_backends_triton.py      # CPU
    python -m pytest -q tests/test_ops_backends_triton.py                         # GPU
"""


import pytest
import torch

from _backends import OpLog, rel_err
from _triton import DEVICE, INTERPRET, require_triton
from focusformer_fast import ops
from focusformer_fast.ops import dispatch
from focusformer_fast.ops.backends import triton as triton_backend

require_triton()

OPS = torch.ops.focusformer


def test_backend_registered_and_auto_leaves_it_alone():
    """Explicit selection runs the triton ops; ``auto`` does not pick them until verified on a GPU."""
    assert "triton" in ops.available_backends(DEVICE)
    with ops.set_backend("triton"):
        assert dispatch.resolve("sliced_attention", DEVICE) is triton_backend.sliced_attention
    with ops.set_backend("auto"):
        assert dispatch.resolve("sliced_linear", "cuda") is not triton_backend.sliced_linear


# -- opcheck ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def opcheck_cases():
    d = dict(device=DEVICE)
    x, w, b = torch.randn(6, 20, **d), torch.randn(3 * 24, 32, **d), torch.randn(3 * 24, **d)
    r = torch.randn(6, 3 * 17, **d)
    f32, f16 = torch.float32, torch.float16
    w16 = w.to(f16)
    out, preact = OPS.sliced_linear_triton(x, w, b, 17, 3, True, r, f32, None)
    ln_x, ln_w, ln_b = torch.randn(6, 20, **d), torch.randn(24, **d), torch.randn(24, **d)
    _, mean, rstd = OPS.sliced_layernorm_triton(ln_x, ln_w, ln_b, 1e-6, f32)
    qkv = torch.randn(2, 9, 3 * 2 * 16, **d)
    att, lse = OPS.sliced_attention_triton(qkv, 2, 16, f32)
    return {
        "linear": (OPS.sliced_linear_triton, (x, w, b, 17, 3, True, r, f32, None)),
        "linear_nobias": (OPS.sliced_linear_triton, (x, w, None, 17, 3, False, None, f32, None)),
        "linear_weight_cast": (OPS.sliced_linear_triton, (x.to(f16), w, b, 17, 3, False, None, f16, w16)),
        "linear_backward": (
            OPS.sliced_linear_backward_triton,
            (torch.randn_like(out), x, w, None, b, preact, 17, 3, True, True, True, f32),
        ),
        "layernorm": (OPS.sliced_layernorm_triton, (ln_x, ln_w, ln_b, 1e-6, f32)),
        "layernorm_half_out": (OPS.sliced_layernorm_triton, (ln_x, ln_w, ln_b, 1e-6, f16)),
        "layernorm_backward": (OPS.sliced_layernorm_backward_triton, (torch.randn_like(ln_x), ln_x, ln_w, mean, rstd)),
        "attention": (OPS.sliced_attention_triton, (qkv, 2, 16, f32)),
        "attention_backward": (
            OPS.sliced_attention_backward_triton, (torch.randn_like(att), qkv, att, lse, 2, 16, f32)
        ),
    }


# The interpreter cannot run kernels on the fake tensors of opcheck's aot_dispatch tests.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor") if INTERPRET else None


@pytest.mark.parametrize("name", [
    "linear", "linear_nobias", "linear_weight_cast", "linear_backward", "layernorm", "layernorm_half_out",
    "layernorm_backward", "attention", "attention_backward",
])
def test_opcheck(opcheck_cases, name):
    op, args = opcheck_cases[name]
    if not name.endswith("backward"):  # forward ops: also check their autograd formulas
        args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                     and a.dtype == torch.float32 else a for a in args)
    kwargs = {} if OPCHECK_UTILS is None else {"test_utils": OPCHECK_UTILS}
    torch.library.opcheck(op, args, **kwargs)


def test_weight_gradient_of_a_cast_weight_is_the_parameters():
    """Under autocast the GEMMs read the weight's copy in the compute dtype; its gradient arrives in
    the float32 parameter, equal to the reference's under the same autocast."""
    dtype = torch.float16 if INTERPRET else torch.bfloat16
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 7, 20, generator=gen).to(DEVICE)
    w = (torch.randn(48, 24, generator=gen) / 5).to(DEVICE).requires_grad_()
    grads = {}
    for backend in ("triton", "torch"):
        w.grad = None
        with ops.set_backend(backend), torch.autocast(DEVICE, dtype=dtype), OpLog() as log:
            y = ops.sliced_linear(x, w, None, 40)
        y.float().sum().backward()
        grads[backend] = w.grad
        if backend == "triton":
            assert "focusformer::sliced_linear_triton" in log.names
    assert grads["triton"].dtype == torch.float32
    assert rel_err(grads["triton"], grads["torch"]) <= 5e-3
