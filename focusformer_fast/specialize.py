"""Specialization: the best in-budget subnet among a sampler's proposals, scored on val.

For each target budget, a sampler proposes candidate archs (the trained policy π(·|c), or uniform
in-budget archs for supernets trained without one) from a stream seeded by the budget's value;
those over that budget are dropped, the rest are scored once on the validation split with the
supernet's weights. Every budget then picks the best of all scored archs that fit it (ties: lower
val loss, then lower cost), so the table is monotone in the budget. Selection never looks at the
test split; test accuracy is only reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .costs import CostFn, fmt_cost
from .evaluate import Batches, accuracy, accuracy_and_loss
from .sampler import ArchSampler
from .space import Arch


@dataclass(frozen=True)
class Candidate:
    """One scored subnet: ``cost`` in the budget's units, ``accuracy`` in [0, 1] on val and ``loss``,
    its mean val cross-entropy in nats (0 where not measured)."""

    arch: Arch
    cost: float
    accuracy: float
    loss: float = 0.0


@dataclass(frozen=True)
class Specialization:
    """Outcome of :func:`specialize` for one budget.

    ``best`` is None when no candidate fits. ``draws`` counts the archs drawn for this budget
    (duplicates included); ``candidates`` are the distinct scored archs that fit it.
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


def choose(budget: float, scored: Iterable[Candidate]) -> Specialization:
    """The best of the ``scored`` candidates that fit ``budget``: highest val accuracy, ties to the lower
    val loss, then the lower cost, then the earlier one. ``draws`` is left 0 for the caller."""
    fit = tuple(c for c in scored if c.cost <= budget)
    best = min(fit, key=lambda c: (-c.accuracy, c.loss, c.cost), default=None)
    return Specialization(budget, best, fit, pareto_front(fit), 0)


def specialize(
    budget: float, proposals: Sequence[Arch], cost_fn: CostFn, evaluate: Callable[[Arch], float]
) -> Specialization:
    """Score the distinct in-budget ``proposals`` with ``evaluate`` (val accuracy) and keep the best
    (:func:`choose`)."""
    scored = [Candidate(a, float(cost_fn(a)), float(evaluate(a))) for a in dict.fromkeys(proposals)
              if float(cost_fn(a)) <= budget]
    return dataclasses.replace(choose(budget, scored), draws=len(proposals))


def budget_seed(seed: int, budget: float) -> int:
    """The seed of ``budget``'s proposal stream: a function of ``seed`` and the budget's value only."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{float(budget)!r}".encode()).digest()[:8], "little")


def specialize_budgets(budgets: Sequence[float], propose: Callable[[float], Sequence[Arch]], cost_fn: CostFn,
                       evaluate: Callable[[Arch], tuple[float, float]]) -> list[Specialization]:
    """Specialize every budget over one pool: the distinct archs proposed for any budget that fit the
    budget they were proposed for, each scored once with ``evaluate`` (val accuracy, val loss).

    Each budget then chooses among all pooled archs that fit it (:func:`choose`), so a larger
    budget never gets a lower val accuracy than a smaller one.
    """
    pool: dict[Arch, Candidate] = {}
    draws = []
    for budget in budgets:
        proposals = propose(budget)
        draws.append(len(proposals))
        for a in proposals:
            cost = float(cost_fn(a))
            if a not in pool and cost <= budget:
                acc, loss = evaluate(a)
                pool[a] = Candidate(a, cost, float(acc), float(loss))
    return [dataclasses.replace(choose(b, pool.values()), draws=d) for b, d in zip(budgets, draws)]


def specialization_table(net: nn.Module, sampler: ArchSampler, cost_fn: CostFn, budgets: Sequence[float],
                         val: Batches, test: Batches | None, device: torch.device, *, n: int, seed: int,
                         distributed: bool = False) -> list[dict[str, Any]]:
    """Specialize each budget (:func:`specialize_budgets`): ``n`` of ``sampler``'s proposals per budget
    from a stream seeded by :func:`budget_seed`, scored on ``val``; the chosen arch's ``test`` accuracy.

    One JSON-ready row per budget: ``budget``, ``proposer``, ``draws``, ``scored`` (pooled archs that
    fit) and, when an arch fits, ``arch`` (dict), ``arch_str``, ``cost``, ``val_acc``, ``val_loss``,
    ``test_acc`` (if ``test``) and the val Pareto ``front``. Used by ``train``'s final table and ``search``.
    """
    results = specialize_budgets(
        budgets, lambda b: sampler.propose(b, n, random.Random(budget_seed(seed, b))), cost_fn,
        lambda a: accuracy_and_loss(net, a, val, device, distributed=distributed))
    rows = []
    for res in results:
        row: dict[str, Any] = {"budget": res.budget, "proposer": sampler.proposer, "draws": res.draws,
                               "scored": len(res.candidates)}
        if res.best is not None:
            row.update(arch=res.best.arch.to_dict(), arch_str=str(res.best.arch), cost=res.best.cost,
                       val_acc=res.best.accuracy, val_loss=res.best.loss)
            if test is not None:
                row["test_acc"] = accuracy(net, res.best.arch, test, device, distributed=distributed)
            row["front"] = [{"arch": c.arch.to_dict(), "cost": c.cost, "val_acc": c.accuracy} for c in res.front]
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]], metric: str) -> str:
    """Per budget the chosen arch, its cost, val and (when measured) test accuracy."""
    head = (f"{'budget (' + metric + ')':>16}  {'best in-budget arch':<36} {'cost':>9} {'val acc':>8} "
            f"{'test acc':>8}  candidates (drawn)")
    lines = [head, "-" * len(head)]
    for r in rows:
        b = fmt_cost(r["budget"], metric)
        if "arch" not in r:
            lines.append(f"{b:>16}  {'(no arch fits)':<36}")
            continue
        test = f"{100 * r['test_acc']:>7.1f}%" if "test_acc" in r else f"{'-':>8}"
        lines.append(f"{b:>16}  {r['arch_str']:<36} {fmt_cost(r['cost'], metric):>9} {100 * r['val_acc']:>7.1f}% "
                     f"{test}  {r['scored']} ({r['draws']} drawn, {r['proposer']})")
    return "\n".join(lines)
