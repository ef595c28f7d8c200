"""The sampler's diagnostics (``nas.sampler.diagnostics``): KL from masked uniform, entropy and the median
cost / budget against a direct computation on a small space, and the warning that the policy has not moved
(a flat reward, or a run too short) or that the estimator cannot rank noisy scores."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from focusformer_fast.nas.costs import budget_grid, make_cost_fn
from focusformer_fast.nas.sampler.diagnostics import FLAT_KL, diagnose, flat_warning
from focusformer_fast.nas.sampler.focus import FocusSampler
from focusformer_fast.space import Arch, SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")


SPACE = SearchSpace.preset("digits")
FLOPS = make_cost_fn(SPACE, "flops")
LO, HI = FLOPS(SPACE.smallest()), FLOPS(SPACE.largest())


def test_flat_warning_fires_when_the_estimator_cannot_rank_noisy_scores():
    noise = random.Random(0)
    fs = FocusSampler(SPACE, FLOPS, budget_grid(SPACE, FLOPS), seed=0, reward_model="estimator",
                      estimator_steps=3, epsilon=0.0, update_every=1, sampler_lr=0.05)
    for step in range(30):  # scores of a 256-image val batch on which every arch is equally good
        fs.update(step, lambda archs: [0.9 + noise.gauss(0, 0.02) for _ in archs])
    diag = diagnose(fs)
    assert diag["estimator_trusted"] is False
    assert flat_warning(diag) is not None


TINY = SearchSpace("tiny", (32, 48), (2.0, 4.0), (2,), (1, 2), image_size=8, patch_size=2, in_chans=1,
                   num_classes=10, head_dim=16)


def tiny_archs() -> list[Arch]:
    return [Arch(e, d, (2,) * d, r) for e in TINY.embed_dims for d in TINY.depths
            for r in itertools.product(TINY.mlp_ratios, repeat=d)]


def masked_uniform_prob(arch: Arch, budget: float, cost) -> float:
    """Brute force: each decision uniform over the choices some in-budget arch extends."""
    fits = [a for a in tiny_archs() if cost(a) <= budget]
    prefix = lambda a, k: (a.depth, a.embed_dim, *a.mlp_ratio)[:k]  # noqa: E731 (decision order)
    p = 1.0
    for k in range(2 + arch.depth):
        allowed = {prefix(a, k + 1) for a in fits if prefix(a, k) == prefix(arch, k) and len(prefix(a, k + 1)) > k}
        p /= len(allowed)
    return p


def test_diagnostics_match_a_direct_computation_on_a_small_space():
    cost = make_cost_fn(TINY, "flops")
    budgets = [cost(TINY.largest()), sorted(cost(a) for a in tiny_archs())[5]]
    fs = FocusSampler(TINY, cost, budgets, seed=0, update_every=1, epsilon=0.0, sampler_lr=0.05, reward_model="none")
    for step in range(30):  # move the policy well away from uniform
        fs.update(step, lambda archs: [float(a.embed_dim == 48) for a in archs])
    diag = diagnose(fs, draws=4000)
    for b, row in zip(fs.budgets, diag["budgets"]):
        fit = [a for a in tiny_archs() if cost(a) <= b]
        p = dict(zip(fit, fs.score(fit, [b] * len(fit)).log_prob.exp().tolist()))
        assert sum(p.values()) == pytest.approx(1.0, abs=1e-5)
        kl = sum(q * (math.log(q) - math.log(masked_uniform_prob(a, b, cost))) for a, q in p.items())
        ent = -sum(q * math.log(q) for q in p.values())
        assert kl > 0.1
        assert row["kl_uniform"] == pytest.approx(kl, abs=0.03)
        assert row["entropy"] == pytest.approx(ent, abs=0.03)
        ratios = sorted((cost(a) / b, q) for a, q in p.items())
        acc = 0.0
        for r, q in ratios:  # the exact median of cost / budget under π
            acc += q
            if acc >= 0.5:
                break
        assert row["cost_median"] == pytest.approx(r, abs=1e-9)


def test_flat_warning_fires_on_a_constant_score_and_not_on_an_informative_one():
    def trained(score):
        fs = FocusSampler(SPACE, FLOPS, budget_grid(SPACE, FLOPS), seed=0, update_every=1, epsilon=0.0,
                          samples_per_budget=2, sampler_lr=1e-2, reward_model="none")
        for step in range(40):
            fs.update(step, score)
        return diagnose(fs)

    flat = trained(lambda archs: [0.8] * len(archs))
    informative = trained(lambda archs: [(FLOPS(a) - LO) / (HI - LO) for a in archs])
    assert "has not moved from masked uniform" in flat_warning(flat)
    assert flat_warning(flat).endswith("the reward is flat on this data")
    assert max(r["kl_uniform"] - r["kl_initial"] for r in informative["budgets"]) > FLAT_KL
    assert flat_warning(informative) is None


def test_flat_warning_on_an_unmoved_policy_with_a_trusted_estimator_says_train_longer():
    """A short run: the estimator ranks real scores (τ 0.42) but the policy had few rounds to move."""
    fs = FocusSampler(SPACE, FLOPS, budget_grid(SPACE, FLOPS), seed=0)
    unmoved = {**diagnose(fs), "estimator_tau": 0.42, "estimator_trusted": True}
    line = flat_warning(unmoved)
    assert "has not moved from masked uniform" in line and "τ 0.42" in line
    assert "train longer" in line and "flat" not in line.split("sampling")[-1]
