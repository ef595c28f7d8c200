"""The record of scored subnets, the reward estimator, the sampler's diagnostics and the
synthetic-frontier harness (CPU, seconds; one tiny real train --resume and search)."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch
from scipy.stats import kendalltau

from focusformer_fast.nas.costs import budget_grid, make_cost_fn
from focusformer_fast.experiments import sampler_oracle
from focusformer_fast.nas.sampler.reward_estimator import Encoder, RewardEstimator, kendall_tau
from focusformer_fast.training.runs import CHECKPOINT_NAME, read_checkpoint
from focusformer_fast.nas.sampler.focus import FocusSampler
from focusformer_fast.nas.sampler.options import SamplerOptions
from focusformer_fast.nas.sampler.diagnostics import FLAT_KL, diagnose, flat_warning
from focusformer_fast.nas.sampler.scored_record import Scored, ScoredRecord
from focusformer_fast.search import main as search_main
from focusformer_fast.space import Arch, SearchSpace
from focusformer_fast.train import main as train_main

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


def distinct(n: int, seed: int) -> list[Arch]:
    rng, out = random.Random(seed), []
    while len(out) < n:
        a = SPACE.sample(rng)
        if a not in out:
            out.append(a)
    return out


# -- the record -----------------------------------------------------------------------------
def test_record_keeps_the_newest_and_weighs_by_age():
    rec = ScoredRecord(capacity=3, half_life=10)
    archs = distinct(5, 0)
    rec.add(Scored(a, 1e6, float(i), 0.5, step=10 * i) for i, a in enumerate(archs))
    assert [e.arch for e in rec] == archs[2:]
    assert rec.weights(now=40) == pytest.approx([0.5 ** 2, 0.5 ** 1, 1.0])
    back = ScoredRecord()
    back.load_state_dict(rec.state_dict())
    assert list(back) == list(rec) and back.capacity == 3 and back.weights(40) == rec.weights(40)


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


# -- the estimator --------------------------------------------------------------------------
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


def test_flat_warning_fires_when_the_estimator_cannot_rank_noisy_scores():
    noise = random.Random(0)
    fs = FocusSampler(SPACE, FLOPS, budget_grid(SPACE, FLOPS), seed=0, reward_model="estimator",
                      estimator_steps=3, epsilon=0.0, update_every=1, sampler_lr=0.05)
    for step in range(30):  # scores of a 256-image val batch on which every arch is equally good
        fs.update(step, lambda archs: [0.9 + noise.gauss(0, 0.02) for _ in archs])
    diag = diagnose(fs)
    assert diag["estimator_trusted"] is False
    assert flat_warning(diag) is not None


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


# -- diagnostics ----------------------------------------------------------------------------
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


# -- the harness ----------------------------------------------------------------------------
def test_harness_frontier_is_the_brute_force_best_over_the_whole_space():
    archs = [Arch(e, d, h, r) for e in SPACE.embed_dims for d in SPACE.depths
             for h in itertools.product(SPACE.num_heads, repeat=d)
             for r in itertools.product(SPACE.mlp_ratios, repeat=d)]
    budgets = budget_grid(SPACE, FLOPS)
    f = sampler_oracle.heads_mlp
    values = [(SPACE.flops(a), f(SPACE, a)) for a in archs]
    best = [max(v for c, v in values if c <= b) for b in budgets]
    assert sampler_oracle.frontier(SPACE, f, budgets) == pytest.approx(best, abs=1e-12)


def test_harness_rejects_an_unknown_function(capsys):
    assert sampler_oracle.main(["--functions", "digits/nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --functions: 'digits/nope' is unknown") and "\n" not in err


def test_harness_report_from_raw_results(tmp_path):
    def specialized(regret, distinct):
        return {"regret": [regret] * 5, "distinct_proposals": [50] * 5, "distinct_draws": [distinct] * 5}

    def run(seed, policy, evolution):
        curve = [{"evaluations": e, "grid": specialized(policy * k, 30), "off": specialized(2 * policy * k, 20 + seed),
                  "estimator_tau": 0.5, "seconds": 1.0} for e, k in ((0, 3.0), (200, 2.0), (800, 1.0))]
        base = [{"method": m, "evaluations": n, "grid": [evolution * f] * 5, "off": [evolution * f] * 5}
                for m, f in (("random", 2.0), ("evolution", 1.0)) for n in (50, 200, 1000)]
        return {"function": "digits/capacity", "seed": seed, "grid": [1.0] * 5, "off": [1.0] * 5, "policy": curve,
                "baselines": base}

    raw = {"functions": ["digits/capacity"], "seeds": [0, 1], "options": {"reward_model": "estimator"},
           "policy_n": 50, "curve": [0, 200, 800], "search_evaluations": [50, 200, 1000], "seconds": 60.0,
           "versions": {"torch": "x"}, "runs": [run(0, 0.01, 0.02), run(1, 0.03, 0.02)]}
    md, png, js = sampler_oracle.write_outputs(raw, str(tmp_path / "oracle"))
    text = md.read_text()
    # policy: 0.01, 0.03 on the grid (mean 0.02 = evolution @200: met), 0.02, 0.06 off it (0.04 > 0.02: not met)
    assert ("| digits/capacity | on grid | 0.0200 ± 0.0141 | 0.0200 ± 0.0000 | 0.0200 ± 0.0000 | 0.0200 ± 0.0000 "
            "| 0.0400 ± 0.0000 | 0.0400 ± 0.0000 | 0.0400 ± 0.0000 | yes |") in text
    assert "| digits/capacity | off grid | 0.0400 ± 0.0283 |" in text and text.count("| no |") == 1
    assert "| digits/capacity | 0.0600 / 0.1200 | 0.0400 / 0.0800 | 0.0200 / 0.0400 | 50 | 20 | 0.50, 0.50 |" in text
    assert png.stat().st_size > 10_000 and json.loads(js.read_text()) == raw


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


def test_bad_reward_model_is_one_line(tmp_path, capsys):
    assert train_main(["--reward-model", "oracle", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --reward-model='oracle' is unknown; allowed: none, estimator"
    assert not (tmp_path / "x").exists()


def test_comparison_merges_seeds_and_shows_diagnostics_beside_accuracy(tmp_path):
    from focusformer_fast.utils.cli import UsageError
    from focusformer_fast.experiments.compare import merge
    from focusformer_fast.experiments.compare_report import markdown

    def part(seed, acc, kl):
        diag = {"draws": 200, "reward_model": "estimator", "estimator_tau": 0.4 + seed / 10,
                "budgets": [{"budget": 1e6, "kl_uniform": kl, "kl_initial": 0.01, "entropy": 5.0,
                             "cost_p10": 0.5, "cost_median": 0.9, "cost_p90": 1.0}]}
        run = {"variant": "focus-estimator", "sampler": "focus", "seed": seed, "proposer": "policy", "tau": 0.1,
               "seconds": 5.0, "rows": [{"budget": 1e6, "cost": 9e5, "val_acc": acc, "test_acc": acc}],
               "diagnostics": diag}
        return {"config": {"seeds": [seed], "steps": 5, "specialize_n": 3, "tau_subnets": 10, "standalone_steps": 7,
                           "threads": 1, "output": f"o{seed}", "work": f"w{seed}"},
                "tau_subnets": [], "runs": [run], "standalone": [{"seed": seed, "test_acc": 0.9}],
                "uniform_in_budget": [{"budget": 1e6, "cost_p10": 0.3, "cost_median": 0.6, "cost_p90": 0.9}],
                "seconds": 60.0 + seed, "versions": {"torch": "x"}}

    raw = merge([part(0, 0.90, 0.2), part(1, 0.94, 0.4)])
    assert raw["config"]["seeds"] == [0, 1] and len(raw["runs"]) == 2 and raw["seconds"] == 61.0
    text = markdown(raw)
    assert "| 1.00M | focus-estimator | 92.0 ± 2.8 | 0.300 ± 0.141 (0.010) | 5.00 | 0.50 / 0.90 / 1.00 |" in text
    assert "| 1.00M | uniform in-budget | | | | 0.30 / 0.60 / 0.90 |" in text
    assert "held-out real scores per seed: 0.40, 0.50." in text
    other = part(2, 0.9, 0.1)
    other["config"]["steps"] = 6
    with pytest.raises(UsageError, match="differ in more than their seeds"):
        merge([part(0, 0.9, 0.1), other])
