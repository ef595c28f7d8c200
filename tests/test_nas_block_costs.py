"""A cost function as per-block tables (``nas.block_costs``), against brute force over a small space (every
arch enumerated): the tables reproduce FLOPs, params and a latency table that is not monotone, and a cost
that is not a per-block sum is refused."""

from __future__ import annotations

import pytest

from _block_costs import COSTS, TINY, every_arch
from focusformer_fast.nas.block_costs import BlockCosts
from focusformer_fast.nas.sampler.policy import arch_key, keys_tensors

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("metric", list(COSTS))
def test_cost_tables_reproduce_the_cost_function(metric):
    cost = COSTS[metric]
    table = BlockCosts.of(TINY, cost)
    archs = every_arch(TINY)
    for a in archs:
        assert table.arch_cost(a) == pytest.approx(cost(a), rel=1e-12)
    e, d, h, r = keys_tensors(TINY, [arch_key(table, a) for a in archs])
    assert table.costs(e, d, h, r).tolist() == pytest.approx([cost(a) for a in archs], rel=1e-12)
    assert table.min_cost() == pytest.approx(min(cost(a) for a in archs), rel=1e-12)
    assert table.max_cost() == pytest.approx(max(cost(a) for a in archs), rel=1e-12)


def test_latency_table_here_is_not_monotone():
    cost, s = COSTS["latency"], TINY
    bigger_is_cheaper = [(a, b) for a in every_arch(s) for b in every_arch(s)
                         if a.depth == b.depth and a.embed_dim == b.embed_dim and cost(b) < cost(a)
                         and all(x >= y for x, y in zip(b.num_heads + b.mlp_ratio, a.num_heads + a.mlp_ratio))]
    assert bigger_is_cheaper


def test_a_cost_that_is_not_a_per_block_sum_is_refused():
    flops = COSTS["flops"]
    with pytest.raises(ValueError, match="not a sum of per-block costs over space 'tiny'"):
        BlockCosts.of(TINY, lambda a: flops(a) ** 2)
