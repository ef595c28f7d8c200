"""The sampler's reward (``nas.sampler.options.pareto_reward``): a feasible arch above an infeasible one,
the cheaper of two infeasible ones above the other, the better scored of two feasible ones above the
other."""

from __future__ import annotations

import random

import pytest

from _toy_sampler import HI, LO
from focusformer_fast.nas.sampler.options import pareto_reward

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pareto_reward_orders_feasible_above_infeasible():
    rng = random.Random(0)
    budget, span = 2e6, HI - LO
    for _ in range(200):
        s1, s2 = rng.random(), rng.random()
        c1, c2 = rng.uniform(LO, HI), rng.uniform(LO, HI)
        r1, r2 = pareto_reward(s1, c1, budget, span), pareto_reward(s2, c2, budget, span)
        if c1 <= budget < c2:
            assert r1 > r2
        elif c2 <= budget < c1:
            assert r2 > r1
        elif c1 > budget and c2 > budget:
            assert (r1 > r2) == (c1 < c2)
        elif c1 <= budget and c2 <= budget:
            assert (r1 > r2) == (s1 > s2)
