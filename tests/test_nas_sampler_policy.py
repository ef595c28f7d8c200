"""The sampler's policy (``nas.sampler.policy``): its budget masks from per-block cost tables, and its draws,
against brute force over a small space (every arch enumerated), under FLOPs, params and a latency table that
is not monotone."""

from __future__ import annotations

import collections
import math

import pytest
import torch

from _block_costs import COSTS, TINY, every_arch
from focusformer_fast.nas.block_costs import BlockCosts
from focusformer_fast.nas.sampler.policy import SamplerPolicy, arch_key, keys_tensors
from focusformer_fast.space import Arch

pytestmark = pytest.mark.usefixtures("one_thread")


def exact_probabilities(policy: SamplerPolicy, table: BlockCosts, archs: list[Arch], budget: float,
                        lo: float, span: float) -> list[float]:
    keys = keys_tensors(TINY, [arch_key(table, a) for a in archs])
    b = torch.full((len(archs),), budget, dtype=torch.float64)
    with torch.no_grad():
        return policy.rollout((b - lo) / span, b, table, given=keys).log_prob.exp().tolist()


@pytest.mark.parametrize("metric", list(COSTS))
def test_masked_policy_puts_all_its_mass_on_exactly_the_in_budget_archs(metric):
    # exact for any per-block table: the non-monotone latency table included
    cost = COSTS[metric]
    table = BlockCosts.of(TINY, cost)
    policy = SamplerPolicy(TINY, hidden=16, seed=3)
    archs = every_arch(TINY)
    costs = sorted(cost(a) for a in archs)
    for budget in (costs[0], costs[7], costs[60], costs[120], costs[-1]):
        fits = [a for a in archs if cost(a) <= budget]
        p = exact_probabilities(policy, table, fits, budget, costs[0], costs[-1] - costs[0])
        assert all(x > 0 for x in p)  # every in-budget arch can be drawn
        assert sum(p) == pytest.approx(1.0, abs=1e-5)  # and nothing else: blocks past the depth are not decided


def test_draws_and_distinct_proposals_follow_the_policy():
    cost = COSTS["latency"]
    table = BlockCosts.of(TINY, cost)
    policy = SamplerPolicy(TINY, hidden=16, seed=1)
    with torch.no_grad():
        for p in policy.heads.parameters():
            p.mul_(20.0)  # a policy far from uniform
    archs = every_arch(TINY)
    budget = sorted(cost(a) for a in archs)[100]
    fits = [a for a in archs if cost(a) <= budget]
    prob = dict(zip(fits, exact_probabilities(policy, table, fits, budget, 0.0, 1.0)))
    gen = torch.Generator().manual_seed(0)
    n = 4000
    b = torch.full((n,), budget, dtype=torch.float64)
    with torch.no_grad():
        drawn = collections.Counter(policy.rollout(b, b, table, gen=gen).archs())
    top = sorted(prob, key=prob.get, reverse=True)[:5]
    for a in top:  # binomial: 4 standard deviations
        assert abs(drawn[a] / n - prob[a]) <= 4 * math.sqrt(prob[a] * (1 - prob[a]) / n) + 1e-3
    # without replacement: the first two proposals are {a, b} with p_a p_b / (1 - p_a) + p_b p_a / (1 - p_b)
    pairs = collections.Counter()
    trials = 1500
    for k in range(trials):
        d = policy.beam(budget, budget, table, 2, torch.Generator().manual_seed(k))
        got = d.archs()
        assert len(set(got)) == 2 and all(cost(a) <= budget for a in got)
        pairs[frozenset(got)] += 1
    a, c = top[0], top[1]
    want = prob[a] * prob[c] / (1 - prob[a]) + prob[c] * prob[a] / (1 - prob[c])
    assert abs(pairs[frozenset((a, c))] / trials - want) <= 4 * math.sqrt(want * (1 - want) / trials) + 1e-3
    every = policy.beam(budget, budget, table, 10 * len(fits), torch.Generator().manual_seed(0)).archs()
    assert sorted(map(str, every)) == sorted(map(str, fits))  # all of them, each once, when n exceeds them


def test_draws_keep_their_log_probability_when_scored():
    table = BlockCosts.of(TINY, COSTS["flops"])
    policy = SamplerPolicy(TINY, hidden=16, seed=2)
    b = torch.full((30,), table.max_cost() * 0.7, dtype=torch.float64)
    d = policy.rollout(b / table.max_cost(), b, table, gen=torch.Generator().manual_seed(4))
    again = policy.rollout(b / table.max_cost(), b, table, given=(d.e, d.d, d.h, d.r))
    assert torch.allclose(d.log_prob, again.log_prob, atol=1e-6)
    assert torch.allclose(d.entropy, again.entropy, atol=1e-6)
    with pytest.raises(ValueError, match="masked out by its budget"):
        big = keys_tensors(TINY, [arch_key(table, TINY.largest())])
        policy.rollout(b[:1] / table.max_cost(), b[:1], table, given=big)
