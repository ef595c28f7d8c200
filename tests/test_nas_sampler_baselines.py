"""The baseline samplers (``nas.sampler.baselines``, made by ``nas.sampler.factory``): uniform and sandwich
runs are seeded, valid and never budget-conditioned, sandwich alternates the largest and the smallest arch,
an unknown sampler names the allowed ones; uniform in-budget proposals are distinct and fit; the Pareto front
of scored candidates."""

from __future__ import annotations

import random

import pytest

from _toy_sampler import FLOPS, HI, SPACE, toy_run
from focusformer_fast.nas.costs import budget_grid
from focusformer_fast.nas.sampler.baselines import SandwichSampler, UniformSampler, uniform_proposals
from focusformer_fast.nas.sampler.factory import make_sampler
from focusformer_fast.nas.specialize import Candidate, pareto_front

pytestmark = pytest.mark.usefixtures("one_thread")


def test_baselines():
    for name, cls in (("uniform", UniformSampler), ("sandwich", SandwichSampler)):
        s = make_sampler(name, SPACE, FLOPS, [HI], seed=4)
        assert isinstance(s, cls)
        run = toy_run(s, 9)
        assert run == toy_run(make_sampler(name, SPACE, FLOPS, [HI], seed=4), 9)
        assert all(budget is None for _, budget in run)
        for arch, _ in run:
            SPACE.validate(arch)
    sandwich = [a for a, _ in toy_run(SandwichSampler(SPACE, FLOPS, 0), 6)]
    assert sandwich[0] == sandwich[3] == SPACE.largest()
    assert sandwich[1] == sandwich[4] == SPACE.smallest()
    with pytest.raises(ValueError, match="allowed: focus, uniform, sandwich"):
        make_sampler("evolution", SPACE, FLOPS, [HI], seed=0)


def test_pareto_front_and_random_proposals():
    cands = [Candidate(SPACE.smallest(), 1.0, 0.5), Candidate(SPACE.middle(), 2.0, 0.4),
             Candidate(SPACE.largest(), 3.0, 0.9)]
    assert [c.cost for c in pareto_front(cands)] == [1.0, 3.0]
    budget = budget_grid(SPACE, FLOPS)[0]
    props = uniform_proposals(SPACE, FLOPS, budget, 20, random.Random(1))
    assert len(set(props)) == 20 and all(SPACE.flops(a) <= budget for a in props)
