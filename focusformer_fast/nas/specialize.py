"""Specialization: per budget, the best in-budget subnet a search finds, scored on val.

Each budget is searched on its own (:mod:`focusformer_fast.nas.search_methods`: the sampler's
proposals, AutoFormer's evolution, or random search) with ``n`` distinct in-budget archs scored on
the validation split with the supernet's weights, from a random stream seeded by the budget's
value and the seed. It then chooses among its own scored archs only (ties: lower val loss, then
lower cost), so its answer depends only on that budget, the run and the seed, never on the other
budgets asked. Scores are memoized across budgets (one arch, one val split, one score: a cache,
not a dependence). A budget may therefore report a lower val accuracy than a smaller one; the
row says so instead of hiding it. Selection never looks at the test split; test accuracy is only
reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from focusformer_fast.nas.costs import CostFn, fmt_cost
from focusformer_fast.nas.evaluate import Batches, accuracy, accuracy_and_loss
from focusformer_fast.nas.sampler.baselines import ArchSampler
from focusformer_fast.nas.search_methods import (METHODS, evolution_schedule, evolution_search, policy_search,
                                                 random_search)
from focusformer_fast.space import Arch, SearchSpace

INITS = ("random", "policy")
"""Where evolution's first population comes from: random in-budget archs (AutoFormer) or the sampler's proposals."""


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
    """One budget's search: ``candidates`` are the distinct scored archs that fit it, in evaluation
    order; ``best`` the chosen one (None when none fits); ``front`` their val Pareto front;
    ``seconds`` the search's wall time (0 where not timed)."""

    budget: float
    best: Candidate | None
    candidates: tuple[Candidate, ...]
    front: tuple[Candidate, ...]
    seconds: float = 0.0


def pareto_front(candidates: Iterable[Candidate]) -> tuple[Candidate, ...]:
    """Candidates no other beats on both cost (lower) and accuracy (higher), by ascending cost."""
    front: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (c.cost, -c.accuracy)):
        if not front or c.accuracy > front[-1].accuracy:
            front.append(c)
    return tuple(front)


def choose(budget: float, scored: Iterable[Candidate]) -> Specialization:
    """The best of the ``scored`` candidates that fit ``budget``: highest val accuracy, ties to the lower
    val loss, then the lower cost, then the earlier one."""
    fit = tuple(c for c in scored if c.cost <= budget)
    best = min(fit, key=lambda c: (-c.accuracy, c.loss, c.cost), default=None)
    return Specialization(budget, best, fit, pareto_front(fit))


def budget_seed(seed: int, budget: float) -> int:
    """The seed of ``budget``'s search stream: a function of ``seed`` and the budget's value only."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{float(budget)!r}".encode()).digest()[:8], "little")


class ScoreCache:
    """Val scores memoized across the budgets of one specialization: ``score(arch) -> (accuracy, loss)``
    runs once per arch, whichever budget asks first."""

    def __init__(self, score: Callable[[Arch], tuple[float, float]], cost_fn: CostFn):
        self.score, self.cost_fn = score, cost_fn
        self.scored: dict[Arch, Candidate] = {}

    def candidate(self, arch: Arch) -> Candidate:
        c = self.scored.get(arch)
        if c is None:
            acc, loss = self.score(arch)
            c = self.scored[arch] = Candidate(arch, float(self.cost_fn(arch)), float(acc), float(loss))
        return c

    def accuracies(self, archs: Sequence[Arch]) -> list[float]:
        """The batch scorer of :mod:`focusformer_fast.nas.search_methods`: val accuracy per arch."""
        return [self.candidate(a).accuracy for a in archs]


def search_budget(budget: float, method: str, space: SearchSpace, sampler: ArchSampler, cost_fn: CostFn,
                  cache: ScoreCache, *, n: int, seed: int, init: str = "random") -> Specialization:
    """Search ``budget`` alone with ``method`` (``policy``, ``evolution``, ``random``) and ``n`` distinct
    in-budget evaluations from the stream :func:`budget_seed` ``(seed, budget)``; choose among them.

    ``init="policy"`` seeds evolution's first population with ``sampler.propose`` (the hybrid).
    ``seconds`` is the wall time of this budget's search, cached scores included.
    """
    if method not in METHODS:
        raise ValueError(f"search method {method!r} is unknown; allowed: {', '.join(METHODS)}")
    if init not in INITS:
        raise ValueError(f"evolution init {init!r} is unknown; allowed: {', '.join(INITS)}")
    rng = random.Random(budget_seed(seed, budget))
    start = time.perf_counter()
    if method == "policy":
        found = policy_search(sampler, cost_fn, budget, cache.accuracies, n, rng)
    elif method == "random":
        found = random_search(space, cost_fn, budget, cache.accuracies, n, rng)
    else:
        initial = sampler.propose(budget, evolution_schedule(n).population, rng) if init == "policy" else ()
        found = evolution_search(space, cost_fn, budget, cache.accuracies, n, rng, initial=initial)
    chosen = choose(budget, [cache.candidate(a) for a, _ in found])
    return dataclasses.replace(chosen, seconds=time.perf_counter() - start)


def method_label(method: str, init: str, proposer: str) -> str:
    """What searched a row, for people: ``policy``, ``uniform`` (the proposals of a sampler without a
    policy), ``evolution``, ``evolution+policy`` (seeded with the policy's proposals), ``random``."""
    if method == "policy":
        return "policy" if proposer == "policy" else "uniform"
    if method == "evolution" and init == "policy":
        return "evolution+policy" if proposer == "policy" else "evolution"
    return method


def trained_range(sampler: ArchSampler) -> tuple[float, float] | None:
    """The budgets ``sampler``'s policy was trained on, lowest and highest; None without a policy.

    The sampler's own ``trained_range()`` where it has one; else the span of its training budgets
    (a policy trained at its prior's budgets only).
    """
    if sampler.proposer != "policy":
        return None
    own = getattr(sampler, "trained_range", None)
    if callable(own):
        return own()
    budgets = getattr(sampler, "budgets", None)
    return (min(budgets), max(budgets)) if budgets else None


def warn_outside_trained_range(sampler: ArchSampler, budgets: Sequence[float], metric: str) -> None:
    """One warning per budget outside :func:`trained_range`: the policy's proposals there are extrapolated."""
    span = trained_range(sampler)
    if span is None:
        return
    lo, hi = span
    for b in budgets:
        if not lo <= b <= hi:
            warnings.warn(f"budget {fmt_cost(b, metric)} is outside the range the sampler was trained on "
                          f"({fmt_cost(lo, metric)} to {fmt_cost(hi, metric)}): its proposals there are untrained; "
                          f"compare with --method evolution", stacklevel=2)


HELD_BYTES = 256 * 2**20
"""A val split up to this size (float32 images) is decoded once and held on the device for a whole table."""


def held(loader: Any, space: SearchSpace, device: torch.device) -> Any:
    """``loader``'s batches decoded once and kept on ``device`` if the split's images take at most
    :data:`HELD_BYTES`, else ``loader`` (every evaluation then reads and decodes the split again).
    Batches already in memory (a list) are returned as they are."""
    if isinstance(loader, list) or len(loader.dataset) * space.in_chans * space.image_size ** 2 * 4 > HELD_BYTES:
        return loader
    return [(images.to(device), labels.to(device)) for images, labels in loader]


def specialization_table(net: nn.Module, sampler: ArchSampler, cost_fn: CostFn, budgets: Sequence[float],
                         val: Batches, test: Batches | None, device: torch.device, *, n: int, seed: int,
                         distributed: bool = False, method: str = "policy", init: str = "random",
                         timed: bool = False) -> list[dict[str, Any]]:
    """Search each budget on its own (:func:`search_budget`, ``n`` distinct evaluations on ``val``) and
    report the chosen arch's ``test`` accuracy. A small ``val`` is decoded once for the table (:func:`held`).

    One JSON-ready row per budget: ``budget``, ``method`` (:func:`method_label`), ``evaluations``
    (distinct archs scored for this budget), with ``timed`` the search's wall ``seconds`` (left out
    otherwise, so that equal runs write equal tables) and, when an arch fits, ``arch`` (dict),
    ``arch_str``, ``cost``, ``val_acc``, ``val_loss``, ``test_acc`` (if ``test``), the val Pareto
    ``front`` of its evaluations and, if a smaller budget reports a higher val accuracy,
    ``below_smaller`` (the smallest such budget). Used by ``train``'s final table and ``search``.
    """
    val = held(val, net.space, device)
    cache = ScoreCache(lambda a: accuracy_and_loss(net, a, val, device, distributed=distributed), cost_fn)
    label = method_label(method, init, sampler.proposer)
    rows: list[dict[str, Any]] = []
    for budget in budgets:
        res = search_budget(budget, method, net.space, sampler, cost_fn, cache, n=n, seed=seed, init=init)
        row: dict[str, Any] = {"budget": res.budget, "method": label, "evaluations": len(res.candidates)}
        if timed:
            row["seconds"] = res.seconds
        if res.best is not None:
            row.update(arch=res.best.arch.to_dict(), arch_str=str(res.best.arch), cost=res.best.cost,
                       val_acc=res.best.accuracy, val_loss=res.best.loss)
            if test is not None:
                row["test_acc"] = accuracy(net, res.best.arch, test, device, distributed=distributed)
            row["front"] = [{"arch": c.arch.to_dict(), "cost": c.cost, "val_acc": c.accuracy} for c in res.front]
        rows.append(row)
    _flag_below_smaller(rows)
    return rows


def _flag_below_smaller(rows: list[dict[str, Any]]) -> None:
    """Mark each row whose val accuracy is below that of a row of a smaller budget."""
    for row in rows:
        if "val_acc" not in row:
            continue
        better = [r["budget"] for r in rows
                  if r["budget"] < row["budget"] and r.get("val_acc", -1.0) > row["val_acc"]]
        if better:
            row["below_smaller"] = min(better)


BELOW_SMALLER = ("* val accuracy below a smaller budget's: each budget chooses among its own evaluations only; "
                 "more evaluations (-n) may find better")


def format_table(rows: Sequence[dict[str, Any]], metric: str) -> str:
    """Per budget the chosen arch, its cost, val and (when measured) test accuracy, the distinct archs
    evaluated for it, the method and (when timed) the search's seconds; ``*`` marks a row below a
    smaller budget."""
    timed = all("seconds" in r for r in rows)
    head = (f"{'budget (' + metric + ')':>16}  {'best in-budget arch':<36} {'cost':>9} {'val acc':>8} "
            f"{'test acc':>8}  {'evals':>5}  {'method':<16}" + (f" {'time':>7}" if timed else "")).rstrip()
    lines = [head, "-" * len(head)]
    for r in rows:
        b = fmt_cost(r["budget"], metric)
        tail = f"{r['evaluations']:>5}  {r['method']:<16}" + (f" {r['seconds']:>6.1f}s" if timed else "")
        if "arch" not in r:
            lines.append(f"{b:>16}  {'(no arch fits)':<36} {'':>9} {'':>8} {'':>8}  {tail}")
            continue
        test = f"{100 * r['test_acc']:>7.1f}%" if "test_acc" in r else f"{'-':>8}"
        mark = "*" if "below_smaller" in r else " "
        lines.append(f"{b:>16}  {r['arch_str']:<36} {fmt_cost(r['cost'], metric):>9} {100 * r['val_acc']:>6.1f}%{mark} "
                     f"{test}  {tail}")
    if any("below_smaller" in r for r in rows):
        lines.append(BELOW_SMALLER)
    return "\n".join(line.rstrip() for line in lines)
