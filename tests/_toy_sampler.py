"""Samplers on the digits space under FLOPs budgets, trained on a toy reward (CPU, seconds)."""

from __future__ import annotations

from focusformer_fast.nas.costs import make_cost_fn
from focusformer_fast.space import Arch, SearchSpace

SPACE = SearchSpace.preset("digits")
FLOPS = make_cost_fn(SPACE, "flops")
LO, HI = SPACE.flops(SPACE.smallest()), SPACE.flops(SPACE.largest())


def bigger_is_better(archs):
    """Toy accuracy in [0, 1]: the arch's FLOPs, normalized over the space (from space.flops directly)."""
    return [(SPACE.flops(a) - LO) / (HI - LO) for a in archs]


def toy_run(sampler, steps: int, start: int = 0) -> list[tuple[Arch, float | None]]:
    out = []
    for step in range(start, start + steps):
        out.append(sampler.next(step))
        sampler.update(step, bigger_is_better)
    return out
