"""The focus sampler (``nas.sampler.focus``) on toy rewards (CPU, seconds): masked draws and proposals fit
every budget, REINFORCE raises the log-probability of a rewarded choice, the sampler learns to fill the
budget, a run is the same threaded or not and across a state round trip, warm-up and epsilon draws. Its
whole state resumes exactly through ``train --stop-at`` / ``--resume`` (one tiny real run, whose
diagnostics train and search print), and a state written before its newest fields loads for search."""

from __future__ import annotations

import json
import random

import pytest
import torch

from _toy_sampler import FLOPS, HI, LO, SPACE, bigger_is_better, toy_run
from focusformer_fast.nas.costs import budget_grid
from focusformer_fast.nas.sampler.focus import FocusSampler
from focusformer_fast.search import main as search_main
from focusformer_fast.space import Arch, SearchSpace
from focusformer_fast.train import main as train_main
from focusformer_fast.training.runs import CHECKPOINT_NAME, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def draws(sampler: FocusSampler, budget: float, n: int, seed: int) -> list[Arch]:
    return sampler.draw([budget] * n, rng=random.Random(seed)).archs()


def feasible_rate(sampler: FocusSampler, n: int, seed: int) -> float:
    ok = [SPACE.flops(a) <= b for b in sampler.budgets for a in draws(sampler, b, n, seed)]
    return sum(ok) / len(ok)


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


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory):
    """The same tiny estimator run, uninterrupted and stopped after step 14 then resumed, via the CLI."""
    root = tmp_path_factory.mktemp("est")
    args = ["--steps", "24", "--batch-size", "128", "--sampler-warmup", "2", "--update-every", "2",
            "--reward-model", "estimator", "--estimator-steps", "2", "--reward-batch-size", "64",
            "--specialize-n", "2", "--log-every", "4", "--no-progress"]
    assert train_main([*args, "--output", str(root / "full")]) == 0
    assert train_main([*args, "--output", str(root / "part"), "--stop-at", "14"]) == 0
    part = read_checkpoint(root / "part" / CHECKPOINT_NAME)
    assert train_main(["--resume", str(root / "part"), "--no-progress"]) == 0  # to the run's last step
    return root, part


def test_record_and_estimator_resume_exactly_through_train_resume(resumed_runs):
    root, part = resumed_runs
    full = read_checkpoint(root / "full" / CHECKPOINT_NAME)["sampler"]
    resumed = read_checkpoint(root / "part" / CHECKPOINT_NAME)["sampler"]
    assert 0 < len(part["sampler"]["record"]["entries"]) < len(full["record"]["entries"]) == 5 * 11
    assert resumed["record"] == full["record"]  # every arch, budget, cost, score (floats exact) and step
    assert resumed["held_out"] == full["held_out"]
    # the last round's job, learned on the worker thread and installed at the next round, and the draws
    assert part["sampler"]["job"] is not None and resumed["job"] == full["job"]
    assert resumed["plan"] == full["plan"] and resumed["scale"] == full["scale"]
    assert torch.equal(resumed["draw_gen"], full["draw_gen"])
    for name, t in full["estimator"]["model"].items():
        assert torch.equal(t, resumed["estimator"]["model"][name]), name
    for name, t in full["policy"].items():
        assert torch.equal(t, resumed["policy"][name]), name


def test_train_and_search_print_the_diagnostics(resumed_runs, capsys):
    root, _ = resumed_runs
    last = [json.loads(x) for x in (root / "full" / "metrics.jsonl").read_text().splitlines()][-1]
    diag = last["sampler_diagnostics"]
    assert last["step"] == 24 and diag["reward_model"] == "estimator" and len(diag["budgets"]) == 5
    assert search_main([str(root / "full"), "--proposals", "2"]) == 0
    out = capsys.readouterr().out
    assert "sampler diagnostics (200 draws per budget, reward model estimator)" in out
    assert "KL(π‖uniform)" in out


def test_sampler_state_from_todays_main_loads_for_search():
    budgets = budget_grid(SPACE, FLOPS)
    fs = FocusSampler(SPACE, FLOPS, budgets, seed=0, update_every=1, epsilon=0.0)
    for step in range(3):
        fs.update(step, lambda archs: [0.8] * len(archs))
    old = fs.state_dict()  # the fields of a state written by the sampler before this version, and no others
    for key in ("version", "trained_on_grid", "draw_gen", "scale", "plan", "job"):
        del old[key]
    old["draw_rng"] = random.Random(0).getstate()
    fresh = FocusSampler(SPACE, FLOPS, budgets, seed=5)
    fresh.load_state_dict(old)
    assert fresh.trained_range() == (budgets[0], budgets[-1])  # it trained at its grid's budgets only
    assert len(fresh.record) == len(fs.record) and fresh.held_out == []  # pairs of repeated archs: not held out
    for b in budgets:
        assert fresh.propose(b, 10, random.Random(0)) == fs.propose(b, 10, random.Random(0))  # the same policy
    for key in ("record", "estimator", "held_out"):  # and from before the record
        del old[key]
    FocusSampler(SPACE, FLOPS, budgets, seed=0).load_state_dict(old)
