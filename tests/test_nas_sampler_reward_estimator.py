"""The reward estimator (``nas.sampler.reward_estimator``): Kendall's tau against scipy and by hand, the
encoding of an arch, held-out archs of a known function ranked, the estimator's steps taken only when it
ranks held-out real scores, and a policy learning faster with it than REINFORCE alone per real
evaluation (CPU, seconds)."""

from __future__ import annotations

import math
import random

import pytest
from scipy.stats import kendalltau

from _toy_sampler import distinct
from focusformer_fast.experiments import sampler_oracle
from focusformer_fast.nas.costs import budget_grid, make_cost_fn
from focusformer_fast.nas.sampler.focus import FocusSampler
from focusformer_fast.nas.sampler.options import SamplerOptions
from focusformer_fast.nas.sampler.reward_estimator import Encoder, RewardEstimator, kendall_tau
from focusformer_fast.space import Arch, SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")


SPACE = SearchSpace.preset("digits")
FLOPS = make_cost_fn(SPACE, "flops")
LO, HI = FLOPS(SPACE.smallest()), FLOPS(SPACE.largest())


def known(arch: Arch) -> float:
    """A known accuracy-like function: heads help, a high mlp ratio hurts, capacity (params) helps."""
    heads = sum(arch.num_heads) / (arch.depth * max(SPACE.num_heads))
    ratio = sum(arch.mlp_ratio) / (arch.depth * max(SPACE.mlp_ratios))
    cap = math.log(SPACE.params(arch)) / math.log(SPACE.params(SPACE.largest()))
    return 0.3 * cap + 0.3 * heads - 0.2 * ratio + 0.05 * arch.depth


def test_kendall_tau_matches_scipy():
    rng = random.Random(3)
    for n in (2, 7, 40, 200):
        x = [rng.randint(0, 5) for _ in range(n)]  # ties on both sides
        y = [xi + rng.randint(-3, 3) for xi in x]
        assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic, abs=1e-12, nan_ok=True)


def test_kendall_tau_by_hand_with_ties_and_undefined():
    # pairs of [1, 2, 2, 3] vs [1, 3, 2, 2]: 3 concordant, 1 discordant, 1 tied in x, 1 tied in y: 2 / sqrt(5 * 5)
    assert kendall_tau([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.4)
    assert kendall_tau([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert math.isnan(kendall_tau([1], [1]))


def test_encoding_zeroes_blocks_past_the_depth():
    arch = Arch(32, 2, (2, 3), (2.0, 4.0))
    x = Encoder(SPACE)([arch])[0].tolist()
    per_block = 1 + len(SPACE.mlp_ratios) + len(SPACE.num_heads)
    start = len(SPACE.depths) + len(SPACE.embed_dims)
    assert x[start: start + per_block] == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # active, mlp 2.0, heads 2
    assert x[start + 2 * per_block: start + 4 * per_block] == [0.0] * (2 * per_block)  # blocks 2, 3: past depth
    log_flops = (math.log(SPACE.flops(arch)) - math.log(LO)) / (math.log(HI) - math.log(LO))
    assert x[-4:] == pytest.approx([(0.0 + 1.0) / 2 / 1, (0.0 + 0.5) / 2, log_flops,
                                    (math.log(SPACE.params(arch)) - math.log(SPACE.params(SPACE.smallest())))
                                    / (math.log(SPACE.params(SPACE.largest())) - math.log(SPACE.params(SPACE.smallest())))])


@pytest.mark.parametrize("loss", ["regression", "ranking"])
def test_estimator_ranks_held_out_archs_of_a_known_function(loss):
    archs = distinct(500, 1)
    train, held = archs[:300], archs[300:]
    est = RewardEstimator(SPACE, loss=loss, fit_steps=400, seed=0)
    est.fit(train, [known(a) for a in train], [1.0] * len(train))
    tau = kendalltau(est.predict(held).tolist(), [known(a) for a in held]).statistic
    assert tau >= 0.8, tau


def test_estimator_steps_only_when_it_ranks_held_out_scores():
    def run(score):
        fs = FocusSampler(SPACE, FLOPS, budget_grid(SPACE, FLOPS), seed=0, reward_model="estimator",
                          estimator_steps=3, epsilon=0.0)
        return [fs.update(10 * k + 9, score) for k in range(9)]

    informative = run(lambda archs: [(FLOPS(a) - LO) / (HI - LO) for a in archs])
    flat = run(lambda archs: [0.7] * len(archs))
    assert informative[-1]["estimator_tau"] > 0.5 and informative[-1]["estimator_steps"] == 3
    assert all(s.get("estimator_steps", 0) == 0 for s in flat) and "estimator_tau" not in flat[-1]


def test_estimator_policy_learns_faster_than_reinforce_per_real_evaluation():
    # the policy's own draws after 200 real evaluations: mean regret over the 11 budgets of the harness
    name, f = "digits/heads-mlp", sampler_oracle.heads_mlp
    regret = {}
    for model in ("none", "estimator"):
        fs = sampler_oracle.new_sampler(name, 0, SamplerOptions(reward_model=model))
        sampler_oracle.learn(fs, sampler_oracle.noisy(fs.space, f, random.Random(0)), 0, 200)
        budgets = [b for part in sampler_oracle.budgets_of(fs.space) for b in part]
        best = sampler_oracle.frontier(fs.space, f, budgets)
        regret[model] = sum(top - sum(f(fs.space, a) for a in fs.draw([b] * 32, rng=random.Random(1)).archs()) / 32
                            for b, top in zip(budgets, best)) / len(budgets)
    assert regret["estimator"] <= 0.85 * regret["none"], regret  # measured 0.066 vs 0.092
