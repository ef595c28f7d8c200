"""Samplers on the digits space under FLOPs budgets, trained on a toy reward (CPU, seconds)."""

from __future__ import annotations

import random

from focusformer_fast.nas.costs import make_cost_fn
from focusformer_fast.space import Arch, SearchSpace

SPACE = SearchSpace.preset("digits")
FLOPS = make_cost_fn(SPACE, "flops")
LO, HI = SPACE.flops(SPACE.smallest()), SPACE.flops(SPACE.largest())


def bigger_is_better(archs):
    """Toy accuracy in [0, 1]: the arch's FLOPs, normalized over the space (from space.flops directly)."""
    return [(SPACE.flops(a) - LO) / (HI - LO) for a in archs]


def distinct(n: int, seed: int) -> list[Arch]:
    """``n`` distinct archs of :data:`SPACE`, drawn uniformly with ``seed``."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        a = SPACE.sample(rng)
        if a not in out:
            out.append(a)
    return out


def toy_run(sampler, steps: int, start: int = 0) -> list[tuple[Arch, float | None]]:
    out = []
    for step in range(start, start + steps):
        out.append(sampler.next(step))
        sampler.update(step, bigger_is_better)
    return out
