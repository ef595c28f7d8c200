"""Compute-dtype copies of parameters (``focusformer_fast.ops.casts``): one per change of the parameter,
shared by the forward and the backward, remade after every optimizer step; and their fixed-address
variant for graph mode.

On the CPU the ``triton`` backend runs under Triton's interpreter with float16 autocast (the
interpreter computes bfloat16 wrongly); on a GPU the ``cuda`` and ``triton`` backends run under
bf16 autocast. The reference casts each super-weight at every call (``F.linear`` under autocast).
"""

import pytest
import torch

from _backends import TARGETS, OpLog
from focusformer_fast import ops
from focusformer_fast.ops import casts

FAST = [pytest.param(t, id=t.id, marks=[pytest.mark.gpu] * t.gpu) for t in TARGETS if t.backend in ("triton", "cuda")]


def _param(*shape):
    return torch.nn.Parameter(torch.randn(*shape))


def test_cast_is_cached_until_the_parameter_changes():
    p = _param(8, 4)
    first = casts.cast(p, torch.bfloat16)
    assert first.dtype == torch.bfloat16 and not first.requires_grad
    torch.testing.assert_close(first, p.detach().bfloat16(), rtol=0, atol=0)
    assert casts.cast(p, torch.bfloat16) is first, "unchanged parameter: the same copy"
    assert casts.cast(p, torch.float16) is not first
    with torch.no_grad():
        p.add_(1.0)  # in place: the version counter moves
    second = casts.cast(p, torch.bfloat16)
    assert second is not first
    torch.testing.assert_close(second, p.detach().bfloat16(), rtol=0, atol=0)
    torch.testing.assert_close(first, (p.detach() - 1).bfloat16(), rtol=0, atol=1e-2)  # the old copy is untouched
    p.data = torch.randn(8, 4)  # new storage, no version bump
    assert casts.cast(p, torch.bfloat16) is not second


@pytest.mark.parametrize("kind", ["foreach", "fused", "single"])
def test_every_optimizer_step_invalidates(kind):
    """Fused optimizers update in place without bumping version counters; the step hook catches them."""
    p = _param(8, 4)
    before = casts.cast(p, torch.bfloat16)
    p.grad = torch.ones_like(p)
    torch.optim.AdamW([p], lr=0.1, **{kind: True} if kind != "single" else {"foreach": False}).step()
    after = casts.cast(p, torch.bfloat16)
    assert after is not before
    torch.testing.assert_close(after, p.detach().bfloat16(), rtol=0, atol=0)


def test_invalidate_covers_updates_through_data():
    p = _param(8, 4)
    before = casts.cast(p, torch.bfloat16)
    p.data.mul_(2)  # invisible to version and storage checks
    assert casts.cast(p, torch.bfloat16) is before
    casts.invalidate()
    torch.testing.assert_close(casts.cast(p, torch.bfloat16), p.detach().bfloat16(), rtol=0, atol=0)


def test_non_parameters_are_cast_every_call_and_same_dtype_is_free():
    t = torch.randn(8, 4)
    assert casts.cast(t, torch.bfloat16) is not casts.cast(t, torch.bfloat16)
    p = _param(8, 4)
    assert casts.cast(p, torch.float32).data_ptr() == p.data_ptr()


def test_static_casts_are_fixed_and_refreshed_in_place():
    p, q = _param(8, 4), _param(3)
    static = casts.StaticCasts()
    with static.scope():
        a, b = casts.cast(p, torch.bfloat16), casts.cast(q, torch.bfloat16)
        assert casts.cast(p, torch.bfloat16) is a
    assert casts.cast(p, torch.bfloat16) is not a, "outside the scope: the eager cache"
    assert static.refresh() == 0
    ptr = a.data_ptr()
    with torch.no_grad():
        p.mul_(3)
    assert static.refresh() == 1, "only the changed parameter is recast"
    assert a.data_ptr() == ptr
    torch.testing.assert_close(a, p.detach().bfloat16(), rtol=0, atol=0)
    torch.testing.assert_close(b, q.detach().bfloat16(), rtol=0, atol=0)


def _casts_of(log, param):
    """The dtype casts recorded in ``log`` of ``param`` or of views of it (slices)."""
    ptr = param.untyped_storage().data_ptr()
    return [args for name, args in log.calls if name == "aten::_to_copy" and args[0].untyped_storage().data_ptr() == ptr]


@pytest.mark.parametrize("target", FAST)
def test_fast_backends_cast_each_super_weight_once_per_optimizer_step(target):
    """Two training steps of a GELU MLP under autocast: each super-weight is cast once (shared by
    forward and backward) until the optimizer steps, then once more; the reference casts at every call."""
    dtype = torch.float16 if not target.gpu else torch.bfloat16
    torch.manual_seed(0)
    w1, b1, w2 = (torch.nn.Parameter(torch.randn(*shape, device=target.device)) for shape in ((48, 24), (48,), (24, 48)))
    x = torch.randn(2, 9, 20, device=target.device)
    opt = torch.optim.SGD([w1, b1, w2], lr=0.1)

    def step(backend):
        with OpLog() as log:
            with ops.set_backend(backend), torch.autocast(target.device, dtype=dtype):
                h = ops.sliced_linear(x, w1, b1, 40, gelu=True)
                y = ops.sliced_linear(h, w2, None, 20, residual=x)
            y.float().square().mean().backward()
        return len(_casts_of(log, w1)) + len(_casts_of(log, w2))

    assert step(target.backend) == 2
    assert step(target.backend) == 0, "no weight changed: the copies are reused"
    opt.step()
    assert step(target.backend) == 2
    assert step("torch") == 2 and step("torch") == 2, "the reference casts in every forward"
