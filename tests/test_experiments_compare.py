"""``python -m focusformer_fast.experiments.compare`` end to end on a tiny setting: every supernet searched
by every method, each budget with its own distinct evaluations, diagnostics beside the accuracies."""

from __future__ import annotations

import json

import pytest

from focusformer_fast.experiments.compare import main
from focusformer_fast.nas.costs import budget_grid, make_cost_fn
from focusformer_fast.space import SearchSpace

SPACE = SearchSpace.preset("digits")
FLOPS = make_cost_fn(SPACE, "flops")


@pytest.mark.usefixtures("one_thread")
def test_compare_searches_each_supernet_with_each_method_on_and_off_the_grid(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["--seeds", "0", "--samplers", "uniform,focus", "--steps", "8", "--specialize-n", "3",
                 "--tau-subnets", "10", "--standalone-steps", "2", "--output", str(out), "--work",
                 str(tmp_path / "work")]) == 0
    raw = json.loads((tmp_path / "cmp_raw.json").read_text())
    searched = [(r["variant"], r["search"]) for r in raw["runs"]]
    # a sampler without a policy proposes uniform in-budget archs: random search, so no separate policy search
    assert searched == [("uniform", "evolution"), ("uniform", "random"),
                        ("focus", "policy"), ("focus", "evolution"), ("focus", "random")]
    grid = budget_grid(SPACE, FLOPS)
    lo = FLOPS(SPACE.smallest())
    expected = sorted({*grid, *((a + b) / 2 for a, b in zip([lo, *grid], grid))})
    for run in raw["runs"]:
        assert [row["budget"] for row in run["rows"]] == pytest.approx(expected)
        for row in run["rows"]:
            assert row["evaluations"] == 3 and row["cost"] <= row["budget"] and 0 <= row["test_acc"] <= 1
    md = (tmp_path / "cmp.md").read_text()
    assert "| 1.27M (off) |" in md and "| 0.95M |" in md
    assert "| budget | variant | test % | KL (init) | entropy | cost/budget p10 / median / p90 | distinct evals |" in md
    diag_rows = [ln for ln in md.splitlines() if ln.startswith("| 0.95M | focus |")]
    assert len(diag_rows) == 1 and diag_rows[0].endswith("| 3 |")
    assert (tmp_path / "cmp.png").stat().st_size > 10_000


def test_compare_refuses_an_unknown_method_in_one_line(tmp_path, capsys):
    assert main(["--methods", "policy,grid", "--output", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--methods 'policy,grid' must list some of policy, evolution, random" in err
    assert not list(tmp_path.iterdir())
