"""The sampler comparison's results (``experiments.compare``: variants parsed, seeds merged) and its report
(``experiments.compare_report``): markdown tables of mean ± std over seeds and of paired differences, the
diagnostics beside the accuracies, a plot."""

from __future__ import annotations

import json

import pytest

from focusformer_fast.utils.cli import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_comparison_report_from_raw_results(tmp_path):
    from focusformer_fast.experiments.compare import _parse_variant
    from focusformer_fast.experiments.compare_report import write_outputs

    assert _parse_variant("slow:sampler=focus,sampler_lr=3e-4,budget-mask=false") == (
        "slow", {"sampler": "focus", "sampler_lr": 3e-4, "budget_mask": False})
    with pytest.raises(UsageError, match="needs a label and sampler"):
        _parse_variant("x:lr=0.1")

    def entry(variant, seed, accs, tau):
        rows = [{"budget": b, "cost": b / 2, "val_acc": a, "test_acc": a} for b, a in zip((1e6, 2e6), accs)]
        sampler = variant
        return {"variant": variant, "sampler": sampler, "seed": seed, "proposer": "random", "rows": rows,
                "seconds": 10.0, "tau": tau}

    raw = {"config": {"seeds": [0, 1], "steps": 5, "specialize_n": 3, "tau_subnets": 10, "standalone_steps": 7,
                      "threads": 1},
           "runs": [entry("uniform", 0, (0.90, 0.95), 0.1), entry("uniform", 1, (0.92, 0.97), 0.3),
                    entry("sandwich", 0, (0.91, 0.99), 0.2), entry("sandwich", 1, (0.95, 0.99), 0.4)],
           "standalone": [{"test_acc": 0.9}, {"test_acc": 0.95}], "seconds": 60.0, "versions": {"torch": "x"}}
    md, png, js = write_outputs(raw, str(tmp_path / "cmp"))
    text = md.read_text()
    assert "| 1.00M | 91.0 ± 1.4 | 93.0 ± 2.8 |" in text  # uniform, sandwich: mean ± sample std
    assert "| 2.00M | +3.0 ± 1.4 |" in text  # sandwich - uniform, paired by seed: +4 and +2 points
    assert "| uniform | 0.100, 0.300 | 0.200 ± 0.141 |" in text
    assert png.stat().st_size > 10_000 and json.loads(js.read_text()) == raw


def test_comparison_merges_seeds_and_shows_diagnostics_beside_accuracy(tmp_path):
    from focusformer_fast.experiments.compare import merge
    from focusformer_fast.experiments.compare_report import markdown
    from focusformer_fast.utils.cli import UsageError

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
