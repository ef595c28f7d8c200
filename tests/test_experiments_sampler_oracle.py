"""The synthetic-frontier harness (``experiments.sampler_oracle``): its frontier is the brute-force best
over the whole space, an unknown function is a one-line error, and its report from raw results."""

from __future__ import annotations

import itertools
import json

import pytest

from focusformer_fast.experiments import sampler_oracle
from focusformer_fast.nas.costs import budget_grid, make_cost_fn
from focusformer_fast.space import Arch, SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")


SPACE = SearchSpace.preset("digits")
FLOPS = make_cost_fn(SPACE, "flops")


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
