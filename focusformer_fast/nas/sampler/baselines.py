"""What every sampler answers (:class:`ArchSampler`), and the baselines: :class:`UniformSampler`
(AutoFormer) and :class:`SandwichSampler` (BigNAS: largest, smallest, random, one per step in
rotation so every sampler trains one arch per step). They propose distinct uniform archs that fit
the budget.

Every sampler has the same small interface: ``next(step)`` gives the arch to train at that step
(and the budget it was drawn for, or ``None``), ``update(step, score)`` lets it learn from
accuracy estimates of the shared weights, and ``propose(budget, n, rng)`` gives the distinct
candidates a search scores for a budget.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from focusformer_fast.nas.costs import CostFn
from focusformer_fast.space import Arch, SearchSpace

ScoreFn = Callable[[Sequence[Arch]], Sequence[float]]
"""Scores in [0, 1] (accuracy estimates) of archs with the shared weights, one per arch."""


def uniform_proposals(space: SearchSpace, cost_fn: CostFn, budget: float, n: int,
                      rng: random.Random) -> list[Arch]:
    """Up to ``n`` distinct uniform archs that fit ``budget`` (rejection sampling; ``1000 * n`` tries)."""
    out: dict[Arch, None] = {}
    for _ in range(1000 * n):
        a = space.sample(rng)
        if a not in out and cost_fn(a) <= budget:
            out[a] = None
            if len(out) == n:
                break
    return list(out)


class ArchSampler(Protocol):
    """What training and search need from a sampler."""

    name: str
    proposer: str
    """What :meth:`propose` draws from: ``"policy"`` or ``"random"`` (uniform in-budget)."""

    def next(self, step: int) -> tuple[Arch, float | None]:
        """The arch to train at global step ``step``, and the budget it was drawn for (or None)."""

    def update(self, step: int, score: ScoreFn) -> dict[str, float]:
        """Learn after step ``step`` (a no-op for the baselines); returns stats to log ({} if none)."""

    def propose(self, budget: float, n: int, rng: random.Random) -> list[Arch]:
        """Up to ``n`` distinct candidate archs for ``budget`` (fewer only when fewer fit), drawn from
        ``rng`` (the sampler's own streams untouched)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class SeededSampler:
    """Shared part of the samplers: a space, its cost function and a seeded ``random.Random``.

    Proposes distinct uniform in-budget archs; :class:`FocusSampler` overrides that with its policy.
    """

    name = ""
    proposer = "random"

    def __init__(self, space: SearchSpace, cost_fn: CostFn, seed: int):
        self.space = space
        self.cost_fn = cost_fn
        self.rng = random.Random(seed)

    def update(self, step: int, score: ScoreFn) -> dict[str, float]:
        return {}

    def propose(self, budget: float, n: int, rng: random.Random) -> list[Arch]:
        return uniform_proposals(self.space, self.cost_fn, budget, n, rng)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"sampler state is for {state.get('name')!r}, not {self.name!r}")
        self.rng.setstate(as_random_state(state["rng"]))


def as_random_state(s: Any) -> tuple:
    """``random.Random`` state from a checkpoint (tuples may come back as lists)."""
    return (s[0], tuple(s[1]), s[2])


class UniformSampler(SeededSampler):
    """AutoFormer: every step a uniformly random arch."""

    name = "uniform"

    def next(self, step: int) -> tuple[Arch, float | None]:
        return self.space.sample(self.rng), None


class SandwichSampler(SeededSampler):
    """BigNAS sandwich rule, one arch per step: largest, smallest, random, repeating."""

    name = "sandwich"

    def next(self, step: int) -> tuple[Arch, float | None]:
        phase = step % 3
        if phase == 0:
            return self.space.largest(), None
        if phase == 1:
            return self.space.smallest(), None
        return self.space.sample(self.rng), None
