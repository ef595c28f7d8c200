"""Search with a trained supernet: score subnets with inherited weights, specialize a budget.

Specialization (METHOD.md §5): for a target budget, draw candidate archs (from the trained
sampler π(·|c), or uniformly from the in-budget part of the space for supernets trained
without one), drop infeasible ones, score each on the validation split with the supernet's
weights, and return the best and the Pareto front. Selection never looks at the test split.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .sampler import CostFn, FocusSampler
from .space import Arch, SearchSpace

Batches = Iterable[tuple[Tensor, Tensor]]


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


@torch.no_grad()
def evaluate(net: nn.Module, arch: Arch, batches: Batches, device: torch.device) -> tuple[int, float, int]:
    """(correct top-1 predictions, summed cross-entropy in nats, samples) of ``arch`` over ``batches``.

    Runs ``net`` in eval mode (restoring its mode after), in bf16 autocast on CUDA.
    """
    was_training = net.training
    net.eval()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    correct, nll, total = 0, 0.0, 0
    try:
        for images, labels in batches:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with amp:
                logits = net(images, arch)
            correct += int((logits.argmax(dim=-1) == labels).sum())
            nll += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            total += labels.numel()
    finally:
        net.train(was_training)
    return correct, nll, total


def _reduced(net: nn.Module, arch: Arch, batches: Batches, device: torch.device, distributed: bool):
    correct, nll, total = evaluate(net, arch, batches, device)
    if distributed:
        sums = torch.tensor([correct, nll, total], dtype=torch.float64)
        dist.all_reduce(sums)
        correct, nll, total = int(sums[0]), float(sums[1]), int(sums[2])
    if total == 0:
        raise ValueError("cannot score a subnet on an empty split")
    return correct, nll, total


def accuracy(net: nn.Module, arch: Arch, batches: Batches, device: torch.device, *, distributed: bool = False) -> float:
    """Top-1 accuracy in [0, 1] of ``arch`` on ``batches``; summed over ranks when ``distributed``."""
    correct, _, total = _reduced(net, arch, batches, device, distributed)
    return correct / total


def likelihood(net: nn.Module, arch: Arch, batches: Batches, device: torch.device, *,
               distributed: bool = False) -> float:
    """``exp(-mean cross-entropy)`` in (0, 1]: the geometric mean of p(true class); a smooth accuracy."""
    _, nll, total = _reduced(net, arch, batches, device, distributed)
    return math.exp(-nll / total)


def pareto_front(candidates: Iterable[Candidate]) -> tuple[Candidate, ...]:
    """Candidates no other beats on both cost (lower) and accuracy (higher), by ascending cost."""
    front: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (c.cost, -c.accuracy)):
        if not front or c.accuracy > front[-1].accuracy:
            front.append(c)
    return tuple(front)


def policy_proposals(sampler: FocusSampler, budget: float, n: int, seed: int = 0) -> list[Arch]:
    """``n`` draws from the trained policy π(·|budget), from a private stream seeded by ``seed``."""
    return [r.arch for r in sampler.sample_many([budget] * n, rng=random.Random(seed))]


def random_proposals(space: SearchSpace, cost_fn: CostFn, budget: float, n: int, seed: int = 0) -> list[Arch]:
    """``n`` uniform archs that fit ``budget`` (rejection sampling; up to ``1000 * n`` tries)."""
    rng, out = random.Random(seed), []
    for _ in range(1000 * n):
        a = space.sample(rng)
        if cost_fn(a) <= budget:
            out.append(a)
            if len(out) == n:
                break
    return out


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
