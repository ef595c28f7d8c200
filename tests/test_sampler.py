"""The FocusFormer sampler and its baselines (CPU, toy rewards, seconds)."""

from __future__ import annotations

import random

import pytest

from focusformer_fast.nas.costs import budget_grid, check_budgets, make_cost_fn
from focusformer_fast.nas.sampler.focus import FocusSampler
from focusformer_fast.nas.sampler.baselines import SandwichSampler, UniformSampler, uniform_proposals
from focusformer_fast.nas.sampler.factory import make_sampler
from focusformer_fast.nas.sampler.options import pareto_reward
from focusformer_fast.nas.specialize import Candidate, pareto_front
from focusformer_fast.space import Arch, SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = SearchSpace.preset("digits")
FLOPS = make_cost_fn(SPACE, "flops")
LO, HI = SPACE.flops(SPACE.smallest()), SPACE.flops(SPACE.largest())


def bigger_is_better(archs):
    """Toy accuracy in [0, 1]: the arch's FLOPs, normalized over the space (from space.flops directly)."""
    return [(SPACE.flops(a) - LO) / (HI - LO) for a in archs]


def draws(sampler: FocusSampler, budget: float, n: int, seed: int) -> list[Arch]:
    return sampler.draw([budget] * n, rng=random.Random(seed)).archs()


def feasible_rate(sampler: FocusSampler, n: int, seed: int) -> float:
    ok = [SPACE.flops(a) <= b for b in sampler.budgets for a in draws(sampler, b, n, seed)]
    return sum(ok) / len(ok)


def test_budget_grid_spans_cost_range():
    grid = budget_grid(SPACE, FLOPS, 5)
    assert grid[-1] == HI
    assert grid == pytest.approx([LO + (HI - LO) * k / 5 for k in range(1, 6)])
    assert budget_grid(SPACE, make_cost_fn(SPACE, "params"), 3)[-1] == SPACE.params(SPACE.largest())


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), LO - 1])
def test_check_budgets_rejects(bad):
    with pytest.raises(ValueError, match="budget"):
        check_budgets(SPACE, FLOPS, [bad])


def test_masked_draws_and_proposals_fit_every_budget():
    rng = random.Random(0)
    budgets = [rng.uniform(LO, HI) for _ in range(6)]
    fs = FocusSampler(SPACE, FLOPS, budgets, seed=3)
    for b in fs.budgets:
        assert all(SPACE.flops(a) <= b for a in draws(fs, b, 25, 0))
        proposals = fs.propose(b, 30, random.Random(1))
        assert len(proposals) == len(set(proposals)) == 30 and all(SPACE.flops(a) <= b for a in proposals)


def test_tightest_budget_leaves_only_the_smallest_arch():
    fs = FocusSampler(SPACE, FLOPS, [LO], seed=0)
    assert set(draws(fs, LO, 20, 0)) == {SPACE.smallest()}
    assert fs.propose(LO, 5, random.Random(0)) == [SPACE.smallest()]  # the only arch that fits


def test_feasible_rate_rises_without_mask():
    fs = FocusSampler(SPACE, FLOPS, budget_grid(SPACE, FLOPS), seed=0, reward_model="none", budget_mask=False,
                      epsilon=0.0, update_every=1, samples_per_budget=2, sampler_lr=1e-2, background=False)
    before = feasible_rate(fs, 20, seed=123)
    for step in range(80):
        fs.update(step, bigger_is_better)
    after = feasible_rate(fs, 20, seed=123)
    assert before < 0.9
    assert after >= before + 0.1


def test_masked_sampler_learns_to_fill_the_budget():
    fs = FocusSampler(SPACE, FLOPS, budget_grid(SPACE, FLOPS), seed=0, reward_model="none", epsilon=0.0, update_every=1,
                      samples_per_budget=2, sampler_lr=1e-2, background=False)

    def mean_fill() -> float:
        return sum(SPACE.flops(a) / b for b in fs.budgets for a in draws(fs, b, 10, 5)) / 50

    before = mean_fill()
    for step in range(60):
        fs.update(step, bigger_is_better)
    assert mean_fill() > before + 0.1


DEPTH_ONLY = SearchSpace("depth-only", (32,), (2.0,), (2,), (2, 3, 4), image_size=8, patch_size=2, in_chans=1,
                         num_classes=10, head_dim=16)


@pytest.mark.parametrize("target", [2, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_reinforce_raises_log_prob_of_rewarded_choice(target, seed):
    # In this space an arch is its depth, so log π(arch) is exactly the depth decision's log-prob. Every arch
    # costs the same, so every one fits every budget and the reward is the score.
    top = 1.0
    fs = FocusSampler(DEPTH_ONLY, lambda arch: top, [top], seed=seed, reward_model="none", epsilon=0.0,
                      update_every=1, samples_per_budget=16, entropy_coef=0.0, background=False)
    fs.baselines = [0.3]
    archs = [Arch(32, d, (2,) * d, (2.0,) * d) for d in DEPTH_ONLY.depths]
    before = dict(zip(DEPTH_ONLY.depths, fs.score(archs, [top] * 3).log_prob.tolist()))
    stats = fs.update(0, lambda batch: [float(a.depth == target) for a in batch])
    assert 0 < stats["score"] < 1  # the batch held both rewarded and unrewarded draws
    after = dict(zip(DEPTH_ONLY.depths, fs.score(archs, [top] * 3).log_prob.tolist()))
    assert after[target] > before[target]
    for d in DEPTH_ONLY.depths:
        if d != target:
            assert after[d] - before[d] < after[target] - before[target]


def toy_run(sampler, steps: int, start: int = 0) -> list[tuple[Arch, float | None]]:
    out = []
    for step in range(start, start + steps):
        out.append(sampler.next(step))
        sampler.update(step, bigger_is_better)
    return out


def focus(seed: int, background: bool = True) -> FocusSampler:
    return FocusSampler(SPACE, FLOPS, budget_grid(SPACE, FLOPS), seed=seed, epsilon=0.3, sampler_warmup=5,
                        update_every=4, background=background)


def test_same_seed_same_archs_threaded_or_not_and_state_round_trip():
    a = toy_run(focus(0), 40)
    assert a == toy_run(focus(0, background=False), 40)  # a round's learning is installed at the next round
    assert a != toy_run(focus(1), 40)
    first = focus(0)
    toy_run(first, 22)  # stops mid-window, with a job pending
    second = focus(7)
    second.load_state_dict(first.state_dict())
    assert toy_run(first, 20, start=22) == toy_run(second, 20, start=22)


def test_warmup_epsilon_and_budgets_from_the_whole_range():
    always_uniform = FocusSampler(SPACE, FLOPS, [HI], seed=0, epsilon=1.0)
    assert all(budget is None for _, budget in toy_run(always_uniform, 20))
    policy_only = FocusSampler(SPACE, FLOPS, [HI], seed=0, epsilon=0.0, sampler_warmup=10)
    run = toy_run(policy_only, 40)
    assert [b for _, b in run[:10]] == [None] * 10
    budgets = [b for _, b in run[10:]]
    assert all(LO <= b <= HI for b in budgets) and min(budgets) < LO + 0.3 * (HI - LO)  # not only the grid (HI)
    assert all(SPACE.flops(a) <= b for a, b in run[10:])
    assert policy_only.trained_range() == (LO, HI)


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


def test_pareto_reward_orders_feasible_above_infeasible():
    rng = random.Random(0)
    budget, span = 2e6, HI - LO
    for _ in range(200):
        s1, s2 = rng.random(), rng.random()
        c1, c2 = rng.uniform(LO, HI), rng.uniform(LO, HI)
        r1, r2 = pareto_reward(s1, c1, budget, span), pareto_reward(s2, c2, budget, span)
        if c1 <= budget < c2:
            assert r1 > r2
        elif c1 > budget and c2 > budget:
            assert (r1 > r2) == (c1 < c2)
        elif c1 <= budget and c2 <= budget:
            assert (r1 > r2) == (s1 > s2)


def test_pareto_front_and_random_proposals():
    cands = [Candidate(SPACE.smallest(), 1.0, 0.5), Candidate(SPACE.middle(), 2.0, 0.4),
             Candidate(SPACE.largest(), 3.0, 0.9)]
    assert [c.cost for c in pareto_front(cands)] == [1.0, 3.0]
    budget = budget_grid(SPACE, FLOPS)[0]
    props = uniform_proposals(SPACE, FLOPS, budget, 20, random.Random(1))
    assert len(set(props)) == 20 and all(SPACE.flops(a) <= budget for a in props)
