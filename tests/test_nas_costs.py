"""Costs and budgets (``nas.costs``): the default budget grid spans the space's cost range, and a budget
that is not a positive number or is below the smallest arch's cost is refused."""

from __future__ import annotations

import pytest

from _toy_sampler import FLOPS, HI, LO, SPACE
from focusformer_fast.nas.costs import budget_grid, check_budgets, make_cost_fn

pytestmark = pytest.mark.usefixtures("one_thread")


def test_budget_grid_spans_cost_range():
    grid = budget_grid(SPACE, FLOPS, 5)
    assert grid[-1] == HI
    assert grid == pytest.approx([LO + (HI - LO) * k / 5 for k in range(1, 6)])
    assert budget_grid(SPACE, make_cost_fn(SPACE, "params"), 3)[-1] == SPACE.params(SPACE.largest())


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), LO - 1])
def test_check_budgets_rejects(bad):
    with pytest.raises(ValueError, match="budget"):
        check_budgets(SPACE, FLOPS, [bad])
