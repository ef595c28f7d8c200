"""Random search, AutoFormer's evolution and policy search against brute force over small spaces.

Every arch of a tiny space is enumerated, so the exact best in-budget arch, the in-budget set and the
law of random draws are known independently of the searches.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest
from scipy import stats

from focusformer_fast.nas import search_methods as sm
from focusformer_fast.space import Arch, SearchSpace

TINY = SearchSpace("tiny", (8, 16, 24), (1.0, 2.0, 3.0), (1, 2), (1, 2, 3), image_size=4, patch_size=2, in_chans=1,
                   num_classes=3, head_dim=4)
"""774 archs."""


def every_arch(space: SearchSpace) -> list[Arch]:
    return [Arch(e, d, hs, rs) for d in space.depths for e in space.embed_dims
            for rs in itertools.product(space.mlp_ratios, repeat=d)
            for hs in itertools.product(space.num_heads, repeat=d)]


def flops(space: SearchSpace):
    return lambda arch: space.cost(arch, "flops")


def budget_at(space: SearchSpace, frac: float) -> float:
    lo, hi = flops(space)(space.smallest()), flops(space)(space.largest())
    return lo + frac * (hi - lo)


def additive_score(space: SearchSpace, seed: int = 1):
    """A fixed random score, a sum of one weight per decision: the structure evolution exploits."""
    g = random.Random(seed)
    w = {("e", e): g.random() for e in space.embed_dims}
    for i in range(space.max_depth):
        w.update({("r", i, r): g.random() for r in space.mlp_ratios})
        w.update({("h", i, h): g.random() for h in space.num_heads})
    return lambda a: w["e", a.embed_dim] + sum(w["r", i, r] + w["h", i, h]
                                               for i, (r, h) in enumerate(zip(a.mlp_ratio, a.num_heads)))


def hashed_score(arch: Arch) -> float:
    """A distinct pseudo-random score per arch."""
    return random.Random(str(arch)).random()


class Recorder:
    """A batch scorer that records every batch it was asked to score."""

    def __init__(self, score):
        self.score, self.batches = score, []

    def __call__(self, archs):
        self.batches.append(list(archs))
        return [self.score(a) for a in archs]

    @property
    def scored(self) -> list[Arch]:
        return [a for b in self.batches for a in b]


class ListProposer:
    """A sampler whose proposals are a fixed stream, in order; counts what it was asked for."""

    def __init__(self, stream):
        self.stream, self.asked = iter(stream), []

    def propose(self, budget, n, rng):
        self.asked.append(n)
        return list(itertools.islice(self.stream, n))


class UniformProposer:
    """Proposes ``space.sample`` draws (in budget or not), like an untrained sampler without a mask."""

    def __init__(self, space):
        self.space = space

    def propose(self, budget, n, rng):
        return [self.space.sample(rng) for _ in range(n)]


def run(method: str, space: SearchSpace, budget: float, evaluate, n: int, seed: int):
    cost_fn, rng = flops(space), random.Random(seed)
    if method == "policy":
        return sm.policy_search(UniformProposer(space), cost_fn, budget, evaluate, n, rng)
    return getattr(sm, f"{method}_search")(space, cost_fn, budget, evaluate, n, rng)


@pytest.mark.parametrize("method", sm.METHODS)
@pytest.mark.parametrize("frac,n", [(0.3, 37), (0.8, 120)])
def test_each_method_scores_exactly_n_distinct_in_budget_archs_once_each(method, frac, n):
    budget = budget_at(TINY, frac)
    fit = {a for a in every_arch(TINY) if flops(TINY)(a) <= budget}
    evaluate = Recorder(hashed_score)
    out = run(method, TINY, budget, evaluate, n, seed=3)
    archs = [a for a, _ in out]
    assert len(archs) == n == len(set(archs))
    assert set(archs) <= fit
    assert evaluate.scored == archs  # evaluation order, each arch scored once
    assert [s for _, s in out] == [hashed_score(a) for a in archs]
    assert run(method, TINY, budget, Recorder(hashed_score), n, seed=3) == out  # a function of the rng state


@pytest.mark.parametrize("method", ["random", "evolution"])
def test_a_budget_admitting_fewer_archs_than_asked_returns_every_one_of_them(method):
    budget = budget_at(TINY, 0.05)
    fit = {a for a in every_arch(TINY) if flops(TINY)(a) <= budget}
    assert 5 < len(fit) < 100  # 21
    out = run(method, TINY, budget, Recorder(hashed_score), 100, seed=0)
    assert len(out) == len(fit) and {a for a, _ in out} == fit


@pytest.mark.parametrize("method", ["random", "evolution"])
def test_a_budget_that_rejection_cannot_hit_still_finds_its_only_arch(method):
    # 2 * 16^6 archs; only the smallest fits its own cost, and a uniform draw is it with probability 3e-8
    space = SearchSpace("deep", (8, 16), (1.0, 2.0, 3.0, 4.0), (1, 2, 3, 4), (6,), image_size=4, patch_size=2,
                        in_chans=1, num_classes=3, head_dim=4)
    out = run(method, space, flops(space)(space.smallest()), Recorder(hashed_score), 3, seed=0)
    assert [a for a, _ in out] == [space.smallest()]


def test_evolution_finds_the_brute_force_best_where_random_search_rarely_does():
    budget, score = budget_at(TINY, 0.5), additive_score(TINY)
    fit = [a for a in every_arch(TINY) if flops(TINY)(a) <= budget]
    best = max(score(a) for a in fit)
    n, seeds = 120, range(20)  # 120 of 566 in-budget archs
    hits = {m: sum(max(s for _, s in run(m, TINY, budget, Recorder(score), n, seed)) == best for seed in seeds)
            for m in ("evolution", "random")}
    # random search hits the best with probability about n / 566 per seed
    assert hits["evolution"] >= 18 and hits["random"] <= 10, hits


def test_evolution_seeded_with_initial_archs_scores_them_first():
    budget = budget_at(TINY, 0.4)
    archs = every_arch(TINY)
    over = next(a for a in archs if flops(TINY)(a) > budget)
    fit = [a for a in archs if flops(TINY)(a) <= budget][::7][:5]
    evaluate = Recorder(hashed_score)
    sm.evolution_search(TINY, flops(TINY), budget, evaluate, 40, random.Random(0),
                        initial=[fit[0], over, fit[1], fit[0], *fit[2:]])
    first = evaluate.batches[0]
    assert first[:5] == fit and len(first) == sm.evolution_schedule(40).population
    assert all(len(b) <= len(first) for b in evaluate.batches)


def test_random_search_draws_like_the_space_conditioned_on_the_budget():
    """First draws: P(a) = P(space.sample gives a | a fits), the product of the uniform choices."""
    budget = budget_at(TINY, 0.3)
    fit = [a for a in every_arch(TINY) if flops(TINY)(a) <= budget]
    law = {a: 1 / (3 * 3 * 6 ** a.depth) for a in fit}
    total = sum(law.values())
    draws = 3000
    counts = Counter(run("random", TINY, budget, Recorder(hashed_score), 1, seed)[0][0] for seed in range(draws))
    assert set(counts) <= set(fit)
    # pool the rare archs so every expected count is >= 5
    common = [a for a in fit if draws * law[a] / total >= 5]
    observed = [counts[a] for a in common] + [draws - sum(counts[a] for a in common)]
    expected = [draws * law[a] / total for a in common]
    expected.append(draws - sum(expected))
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_random_best_of_n_follows_sampling_without_replacement():
    """One depth, so every in-budget arch is equally likely: P(best of n distinct has rank >= r) =
    C(M - r + 1, n) / C(M, n)."""
    space = SearchSpace("flat", (8, 16, 24), (1.0, 2.0, 3.0), (1, 2), (3,), image_size=4, patch_size=2, in_chans=1,
                        num_classes=3, head_dim=4)
    budget = budget_at(space, 0.5)
    fit = sorted((a for a in every_arch(space) if flops(space)(a) <= budget), key=hashed_score, reverse=True)
    rank = {a: r for r, a in enumerate(fit, 1)}
    m, n, runs = len(fit), 10, 600
    best_ranks = [min(rank[a] for a, _ in run("random", space, budget, Recorder(hashed_score), n, seed))
                  for seed in range(runs)]
    for r in (2, 5, 10, 20, 40):
        p = math.comb(m - r + 1, n) / math.comb(m, n)
        observed = sum(b >= r for b in best_ranks) / runs
        assert abs(observed - p) <= 4 * math.sqrt(p * (1 - p) / runs) + 1e-9, (r, observed, p)


def test_policy_search_takes_the_first_distinct_in_budget_proposals_in_order():
    budget = budget_at(TINY, 0.3)
    archs = every_arch(TINY)
    fit = [a for a in archs if flops(TINY)(a) <= budget]
    over = [a for a in archs if flops(TINY)(a) > budget]
    stream = [fit[0], over[0], fit[0], fit[1], over[1], fit[2], fit[1], fit[3], fit[4]]
    proposer = ListProposer(stream)
    evaluate = Recorder(hashed_score)
    out = sm.policy_search(proposer, flops(TINY), budget, evaluate, 4, random.Random(0))
    assert [a for a, _ in out] == fit[:4] and evaluate.batches == [fit[:4]]
    assert proposer.asked == [4, 2, 1, 1]  # asks for what is still missing


def test_policy_search_gives_up_on_a_collapsed_sampler_after_a_bounded_number_of_draws():
    budget = budget_at(TINY, 0.3)
    one = TINY.smallest()
    proposer = ListProposer(itertools.repeat(one))
    out = sm.policy_search(proposer, flops(TINY), budget, Recorder(hashed_score), 20, random.Random(0))
    assert [a for a, _ in out] == [one]
    assert sum(proposer.asked) <= sm.PROPOSAL_DRAWS * 20 + 20


def test_evolution_schedule_is_autoformers_at_1000_evaluations():
    assert sm.evolution_schedule(1000) == sm.EvolutionSchedule(population=50, parents=10, mutations=25, crossovers=25)
    assert sm.evolution_schedule(3).population == 3


@pytest.mark.parametrize("method", sm.METHODS)
def test_bad_arguments_say_what_is_wrong(method):
    with pytest.raises(ValueError, match="evaluations=0 must be an int >= 1"):
        run(method, TINY, budget_at(TINY, 0.5), Recorder(hashed_score), 0, seed=0)
    with pytest.raises(ValueError, match=r"returned 1 scores for \d+ archs; it must return one per arch"):
        run(method, TINY, budget_at(TINY, 0.5), lambda archs: [0.0], 5, seed=0)
