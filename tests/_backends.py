"""The backends a conformance test runs on here, the one tolerance table, and the helpers that compare a
backend with the float64 reference.

A *target* is a backend on a device: ``cpp`` on the CPU, ``triton`` on the CPU under
Triton's interpreter (``TRITON_INTERPRET=1``; float32/float16 only, the interpreter computes
bfloat16 wrongly), and on a GPU ``torch``, ``cuda`` and ``triton`` (interpreter off) on CUDA
tensors. One target is no backend: ``reference-fp32-rounding`` runs the float64 reference's own code in
float32 on the CPU, so it measures only the rounding of float32 (a floor for the other targets'
float32 errors). Targets that cannot run here are not listed (their tests are not generated), and
``FOCUSFORMER_TEST_BACKENDS=cuda,triton`` narrows the list to those backends (so each backend's
GPU tests can run in a process of its own).
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from focusformer_fast import ops
from focusformer_fast.ops.backends import compiled

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# max |got - expected| / max |expected|, expected from float64 on the same (rounded) inputs
REL_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}

# the dispatcher ops each backend's linear and layernorm run (none: the backend is the reference)
_TRITON_OPS = {
    "linear": ("focusformer::sliced_linear_triton", "focusformer::sliced_linear_backward_triton"),
    "layernorm": ("focusformer::sliced_layernorm_triton", "focusformer::sliced_layernorm_backward_triton"),
    "attention": ("focusformer::sliced_attention_triton", "focusformer::sliced_attention_backward_triton"),
}
_COMPILED_OPS = {"linear": compiled.LINEAR_OPS, "layernorm": compiled.LAYERNORM_OPS, "attention": ()}
KERNEL_OPS = {"torch": {}, "cpp": _COMPILED_OPS, "cuda": _COMPILED_OPS, "triton": _TRITON_OPS}


@dataclasses.dataclass(frozen=True)
class Target:
    """A backend on a device, and the dtypes its kernels are checked in there."""

    backend: str
    device: str
    dtypes: tuple[torch.dtype, ...]
    measures: str | None = None  # what the target measures when that is not the backend on the device

    @property
    def id(self) -> str:
        return self.measures or f"{self.backend}-{self.device}"

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    def dtypes_of(self, op: str) -> tuple[torch.dtype, ...]:
        """The dtypes ``op`` is checked in (the cuda layernorm kernels take no float16)."""
        if op == "layernorm" and self.backend == "cuda":
            return tuple(d for d in self.dtypes if d != torch.float16)
        return self.dtypes

    def ops(self, op: str) -> set[str]:
        """The dispatcher ops that must run for ``op`` on this target (no silent fallback)."""
        return set(KERNEL_OPS[self.backend].get(op, ()))


def selected(backend: str) -> bool:
    """Whether ``FOCUSFORMER_TEST_BACKENDS`` (comma-separated; unset: all) selects ``backend``."""
    wanted = os.environ.get("FOCUSFORMER_TEST_BACKENDS")
    return not wanted or backend in {name.strip() for name in wanted.split(",")}


def _all_targets() -> list[Target]:
    f32, f16, bf16, f64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
    found = [Target("torch", "cpu", (f32,), measures="reference-fp32-rounding")]
    if "cpp" in ops.available_backends("cpu"):
        found.append(Target("cpp", "cpu", (f32, bf16, f64)))
    if INTERPRET and "triton" in ops.available_backends("cpu"):
        found.append(Target("triton", "cpu", (f32, f16)))
    if torch.cuda.is_available():
        found.append(Target("torch", "cuda", (f32, bf16)))
        if "cuda" in ops.available_backends("cuda"):
            found.append(Target("cuda", "cuda", (f32, bf16, f16)))
        if not INTERPRET and "triton" in ops.available_backends("cuda"):
            found.append(Target("triton", "cuda", (f32, bf16)))
    return [t for t in found if selected(t.backend)]


TARGETS = _all_targets()


class OpLog(TorchDispatchMode):
    """Names (``ns::op``) of the dispatcher ops run inside the context, autograd's backward included."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()
        self.calls: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        self.calls.append((func.name(), args))
        return func(*args, **(kwargs or {}))


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    got, expected = got.detach().double().cpu(), expected.detach().double().cpu()
    return ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def run(fn, inputs: dict, grad: torch.Tensor, dtype: torch.dtype, device: str):
    """``fn(**leaves)`` and each leaf's gradient after backpropagating ``grad``; leaves in ``dtype`` on ``device``."""
    leaves = {n: None if t is None else t.to(device, dtype, copy=True).requires_grad_() for n, t in inputs.items()}
    out = fn(**leaves)
    out.backward(grad.to(device, out.dtype))
    return out, {n: t.grad for n, t in leaves.items() if t is not None}


def check(target: Target, op: str, fn, inputs: dict, grad: torch.Tensor, dtype: torch.dtype) -> dict:
    """``fn`` on ``target`` in ``dtype`` vs the reference in float64 on the CPU: output and every input
    gradient (value, dtype, device), and that the target's kernels for ``op`` ran. Inputs are rounded
    to ``dtype`` first, so only the op's own error is measured. Returns the target's gradients."""
    inputs = {n: None if t is None else t.to(dtype) for n, t in inputs.items()}
    grad = grad.to(dtype)
    with ops.set_backend(target.backend), OpLog() as log:
        out, grads = run(fn, inputs, grad, dtype, target.device)
    missing = target.ops(op) - log.names
    assert not missing, f"{sorted(missing)} did not run: the {target.backend} backend fell back"
    with ops.set_backend("torch"):
        expected, expected_grads = run(fn, inputs, grad, torch.float64, "cpu")
    assert out.dtype == dtype and out.device.type == target.device, (out.dtype, out.device)
    tol = REL_TOL[dtype]
    assert rel_err(out, expected) <= tol, f"output: relative error {rel_err(out, expected):.3g} > {tol:g}"
    assert grads.keys() == expected_grads.keys()
    for name, g in grads.items():
        assert g.dtype == dtype and g.device.type == target.device, (name, g.dtype, g.device)
        assert g.shape == expected_grads[name].shape, name
        err = rel_err(g, expected_grads[name])
        assert err <= tol, f"grad of {name}: relative error {err:.3g} > {tol:g}"
    return grads
