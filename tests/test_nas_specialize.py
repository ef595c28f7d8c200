"""Specialization without a supernet (``nas.specialize``): choosing among scored archs (val accuracy ties go
to the lower val loss, then the lower cost), one budget's search alone or after others, the score cache."""

from __future__ import annotations

import random

import pytest

from focusformer_fast.nas.costs import budget_grid, make_cost_fn
from focusformer_fast.nas.sampler.factory import make_sampler
from focusformer_fast.nas.search_methods import METHODS
from focusformer_fast.nas.specialize import Candidate, ScoreCache, choose, search_budget, trained_range
from focusformer_fast.space import SearchSpace

SPACE = SearchSpace.preset("digits")
FLOPS = make_cost_fn(SPACE, "flops")
GRID = budget_grid(SPACE, FLOPS)


def score(arch):
    """A fixed pseudo-random (accuracy, loss) per arch."""
    g = random.Random(str(arch))
    return g.random(), g.random()


def test_choose_keeps_the_best_in_budget_and_its_undominated_front():
    archs = list(dict.fromkeys(SPACE.sample(random.Random(i)) for i in range(30)))
    budget = GRID[1]
    scored = [Candidate(a, FLOPS(a), *score(a)) for a in archs]
    res = choose(budget, scored)
    feasible = [a for a in archs if FLOPS(a) <= budget]
    assert [c.arch for c in res.candidates] == feasible
    assert res.best.arch == max(feasible, key=lambda a: score(a)[0])
    assert res.front[-1] == res.best
    for c in res.candidates:  # nothing on the front is dominated
        for f in res.front:
            assert not (c.cost <= f.cost and c.accuracy > f.accuracy)


@pytest.mark.usefixtures("one_thread")
def test_val_accuracy_ties_go_to_the_lower_val_loss_then_the_lower_cost():
    small, mid, large = SPACE.smallest(), SPACE.middle(), SPACE.largest()
    pool = [Candidate(large, 3.0, 0.5, 0.9), Candidate(mid, 2.0, 0.5, 0.7), Candidate(small, 1.0, 0.5, 0.7)]
    assert choose(10.0, pool).best.arch == small
    pool[0] = Candidate(large, 3.0, 0.5, 0.1)
    assert choose(10.0, pool).best.arch == large
    assert choose(2.5, pool).best.arch == small


@pytest.mark.parametrize("method, init", [("policy", "random"), ("evolution", "random"), ("evolution", "policy"),
                                          ("random", "random")])
def test_one_budgets_search_is_the_same_alone_or_after_others_and_scores_each_arch_once(method, init):
    sampler = make_sampler("focus", SPACE, FLOPS, GRID, seed=0)
    calls = []

    def counted(arch):
        calls.append(arch)
        return score(arch)

    def search(budget, cache):
        res = search_budget(budget, method, SPACE, sampler, FLOPS, cache, n=12, seed=5, init=init)
        return res.best, res.candidates

    target = 2.0e6  # off the grid
    alone = search(target, ScoreCache(counted, FLOPS))
    shared = ScoreCache(counted, FLOPS)
    others = [search(b, shared) for b in GRID[::-1]]
    calls.clear()
    after = search(target, shared)
    assert after == alone and len(alone[1]) == 12
    assert len(calls) == len(set(calls)) == len({c.arch for c in alone[1]} - {c.arch for o in others for c in o[1]})


def test_an_unknown_method_or_init_names_the_allowed_ones():
    sampler = make_sampler("uniform", SPACE, FLOPS, GRID, seed=0)
    with pytest.raises(ValueError, match="search method 'grid' is unknown; allowed: " + ", ".join(METHODS)):
        search_budget(GRID[0], "grid", SPACE, sampler, FLOPS, ScoreCache(score, FLOPS), n=2, seed=0)
    with pytest.raises(ValueError, match="evolution init 'best' is unknown; allowed: random, policy"):
        search_budget(GRID[0], "evolution", SPACE, sampler, FLOPS, ScoreCache(score, FLOPS), n=2, seed=0, init="best")


def test_trained_range_is_the_policy_s_and_none_without_one():
    assert trained_range(make_sampler("uniform", SPACE, FLOPS, GRID, seed=0)) is None
    lo, hi = trained_range(make_sampler("focus", SPACE, FLOPS, GRID, seed=0))
    assert GRID[0] >= lo >= FLOPS(SPACE.smallest()) and hi == GRID[-1]
