"""A cost function as per-block tables: ``cost(arch) = base[e, d] + Σ_{i < d} delta[e, h_i, r_i]``.

FLOPs, parameters and the latency table's predictions are all sums of an embed-dim term (stem,
head) and one term per block that depends on the block's shape ``(embed dim, heads, mlp ratio)``
only (:mod:`focusformer_fast.nas.costs`, :mod:`focusformer_fast.nas.latency.table`). :class:`BlockCosts`
recovers those terms from the cost function itself, with ``|E|·|D| + |E|·|H|·|R|`` calls (36 on
every preset), and checks the decomposition on the extreme archs and random ones. The sampler's
budget masks then cost a few tensor gathers per decision instead of cost calls on partial archs,
and they are exact for any such table, monotone or not (:meth:`BlockCosts.cheapest_completion`
minimizes over every completion), to the tables' precision: a cost within :data:`RTOL` (relative)
of a budget fits it (:attr:`BlockCosts.tolerance`).

Index convention: ``e``, ``d``, ``h``, ``r`` index ``space.embed_dims``, ``space.depths``,
``space.num_heads``, ``space.mlp_ratios``. ``base[e, d]`` is the cost of the arch of embed ``e``
and depth ``d`` whose blocks all take the first heads and mlp ratio; ``delta[e, h, r]`` what one
block of shape ``(h, r)`` costs more than a block of the first shape (so ``delta[:, 0, 0] == 0``).
Costs are float64, in the cost function's units.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
from torch import Tensor

from focusformer_fast.space import Arch, SearchSpace

CHECKS = 64
"""Random archs on which the tables are checked against the cost function (besides the extremes)."""
RTOL = 1e-9
"""Relative agreement required between the tables and the cost function."""


class BlockCosts:
    """Per-block cost tables of one cost function over one space (module docstring).

    Attributes:
        base: ``[len(embed_dims), len(depths)]`` float64.
        delta: ``[len(embed_dims), len(num_heads), len(mlp_ratios)]`` float64.
        depth_values: ``[len(depths)]`` the depths as float64.
    """

    def __init__(self, space: SearchSpace, base: Tensor, delta: Tensor):
        self.space = space
        self.base = base.to(torch.float64)
        self.delta = delta.to(torch.float64)
        self.depth_values = torch.tensor(space.depths, dtype=torch.float64)
        self.block_min = self.delta.flatten(1).min(dim=1).values  # [E]: the cheapest block per embed
        self.ratio_min = self.delta.min(dim=1).values  # [E, R]: the cheapest block of each mlp ratio
        # [E, D]: the cheapest arch of each embed and depth
        self.floor = self.base + self.depth_values[None, :] * self.block_min[:, None]
        # sums of the tables and of the cost function may differ in their last bits: "fits" allows that much
        self.tolerance = RTOL * max(abs(self.floor).max().item(), 1e-300)

    @classmethod
    def of(cls, space: SearchSpace, cost_fn: Callable[[Arch], float], seed: int = 0) -> "BlockCosts":
        """Tables of ``cost_fn`` over ``space``; ``ValueError`` if it is not such a per-block sum."""
        d0, h0, r0 = space.depths[0], space.num_heads[0], space.mlp_ratios[0]
        base = torch.tensor([[float(cost_fn(Arch(e, d, (h0,) * d, (r0,) * d))) for d in space.depths]
                             for e in space.embed_dims], dtype=torch.float64)
        delta = torch.tensor([[[float(cost_fn(Arch(e, d0, (h,) + (h0,) * (d0 - 1), (r,) + (r0,) * (d0 - 1))))
                                - base[i, 0].item() for r in space.mlp_ratios] for h in space.num_heads]
                              for i, e in enumerate(space.embed_dims)], dtype=torch.float64)
        table = cls(space, base, delta)
        rng = random.Random(f"{seed}:block-costs")
        for arch in [space.smallest(), space.largest(), space.middle()] + [space.sample(rng) for _ in range(CHECKS)]:
            want, got = float(cost_fn(arch)), table.arch_cost(arch)
            if not abs(want - got) <= table.tolerance:
                raise ValueError(f"the cost function is not a sum of per-block costs over space {space.name!r}: "
                                 f"{arch} costs {want!r}, its per-block tables say {got!r}")
        return table

    def indices(self, arch: Arch) -> tuple[int, int, list[int], list[int]]:
        """``(e, d, [h_i], [r_i])`` indices of ``arch`` (``ValueError`` for a value outside the space)."""
        s = self.space
        s.validate(arch)

        def at(v: float, values: tuple) -> int:
            return next(i for i, c in enumerate(values) if math.isclose(v, c))

        return (at(arch.embed_dim, s.embed_dims), at(arch.depth, s.depths),
                [at(h, s.num_heads) for h in arch.num_heads], [at(r, s.mlp_ratios) for r in arch.mlp_ratio])

    def arch_cost(self, arch: Arch) -> float:
        """The tables' cost of one arch."""
        e, d, hs, rs = self.indices(arch)
        return self.base[e, d].item() + sum(self.delta[e, h, r].item() for h, r in zip(hs, rs))

    def costs(self, e: Tensor, d: Tensor, h: Tensor, r: Tensor) -> Tensor:
        """``[B]`` costs of archs given as indices: ``e``, ``d`` ``[B]``; ``h``, ``r`` ``[B, max_depth]``
        (entries of blocks at or past the depth are ignored)."""
        active = torch.arange(h.shape[1])[None, :] < self.depth_values[d][:, None]
        blocks = torch.where(active, self.delta[e[:, None], h, r], 0.0).sum(dim=1)
        return self.base[e, d] + blocks

    def min_cost(self) -> float:
        """The cheapest arch's cost (for a table that is not monotone, not always the smallest arch's)."""
        return self.floor.min().item()

    def max_cost(self) -> float:
        """The dearest arch's cost."""
        block_max = self.delta.flatten(1).max(dim=1).values
        return (self.base + self.depth_values[None, :] * block_max[:, None]).max().item()
