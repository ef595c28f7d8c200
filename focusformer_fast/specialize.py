"""Specialization: the best in-budget subnet among a sampler's proposals, scored on val.

For a target budget, a sampler proposes candidate archs (the trained policy π(·|c), or uniform
in-budget archs for supernets trained without one), infeasible ones are dropped, each is scored
on the validation split with the supernet's weights, and the best and the Pareto front are kept.
Selection never looks at the test split; test accuracy is only reported.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .costs import CostFn, fmt_cost
from .evaluate import Batches, accuracy
from .sampler import ArchSampler
from .space import Arch


@dataclass(frozen=True)
class Candidate:
    """One scored subnet: ``cost`` in the budget's units, ``accuracy`` in [0, 1] on val."""

    arch: Arch
    cost: float
    accuracy: float


@dataclass(frozen=True)
class Specialization:
    """Outcome of :func:`specialize` for one budget.

    ``best`` is None when no candidate fits. ``draws`` counts the archs drawn (duplicates
    included); ``candidates`` are the distinct in-budget ones that were scored.
    """

    budget: float
    best: Candidate | None
    candidates: tuple[Candidate, ...]
    front: tuple[Candidate, ...]
    draws: int


def pareto_front(candidates: Iterable[Candidate]) -> tuple[Candidate, ...]:
    """Candidates no other beats on both cost (lower) and accuracy (higher), by ascending cost."""
    front: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (c.cost, -c.accuracy)):
        if not front or c.accuracy > front[-1].accuracy:
            front.append(c)
    return tuple(front)


def specialize(
    budget: float, proposals: Sequence[Arch], cost_fn: CostFn, evaluate: Callable[[Arch], float]
) -> Specialization:
    """Score the distinct in-budget ``proposals`` with ``evaluate`` (val accuracy) and keep the best.

    Ties in accuracy go to the cheaper arch, then to the earlier proposal.
    """
    seen: dict[Arch, None] = {}
    for a in proposals:
        seen.setdefault(a)
    scored = []
    for a in seen:
        cost = float(cost_fn(a))
        if cost <= budget:
            scored.append(Candidate(a, cost, float(evaluate(a))))
    best = max(scored, key=lambda c: (c.accuracy, -c.cost), default=None)
    return Specialization(budget, best, tuple(scored), pareto_front(scored), len(proposals))


def specialization_table(net: nn.Module, sampler: ArchSampler, cost_fn: CostFn, budgets: Sequence[float],
                         val: Batches, test: Batches | None, device: torch.device, *, n: int, seed: int,
                         distributed: bool = False) -> list[dict[str, Any]]:
    """Specialize each budget: ``n`` of ``sampler``'s proposals, the best on ``val``, its ``test`` accuracy.

    One JSON-ready row per budget: ``budget``, ``proposer``, ``draws``, ``scored`` and, when an
    arch fits, ``arch`` (dict), ``arch_str``, ``cost``, ``val_acc``, ``test_acc`` (if ``test``) and
    the val Pareto ``front``. Budget ``i`` draws from a stream seeded by ``seed + i``.
    """
    rows = []
    for i, budget in enumerate(budgets):
        proposals = sampler.propose(budget, n, random.Random(seed + i))
        res = specialize(budget, proposals, cost_fn, lambda a: accuracy(net, a, val, device, distributed=distributed))
        row: dict[str, Any] = {"budget": budget, "proposer": sampler.proposer, "draws": res.draws,
                               "scored": len(res.candidates)}
        if res.best is not None:
            row.update(arch=res.best.arch.to_dict(), arch_str=str(res.best.arch), cost=res.best.cost,
                       val_acc=res.best.accuracy)
            if test is not None:
                row["test_acc"] = accuracy(net, res.best.arch, test, device, distributed=distributed)
            row["front"] = [{"arch": c.arch.to_dict(), "cost": c.cost, "val_acc": c.accuracy} for c in res.front]
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]], metric: str) -> str:
    """Per budget the chosen arch, its cost, val and (when measured) test accuracy."""
    head = f"{'budget (' + metric + ')':>16}  {'best in-budget arch':<36} {'cost':>9} {'val acc':>8} {'test acc':>8}  scored/drawn"
    lines = [head, "-" * len(head)]
    for r in rows:
        b = fmt_cost(r["budget"], metric)
        if "arch" not in r:
            lines.append(f"{b:>16}  {'(no arch fits)':<36}")
            continue
        test = f"{100 * r['test_acc']:>7.1f}%" if "test_acc" in r else f"{'-':>8}"
        lines.append(f"{b:>16}  {r['arch_str']:<36} {fmt_cost(r['cost'], metric):>9} {100 * r['val_acc']:>7.1f}% "
                     f"{test}  {r['scored']}/{r['draws']} ({r['proposer']})")
    return "\n".join(lines)
