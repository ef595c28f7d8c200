"""Search one budget with a fixed number of distinct evaluations: random, evolution, the trained policy.

Every method gets one ``budget``, a batch scorer ``evaluate(archs) -> scores`` (higher is better,
e.g. val accuracy with the supernet's weights) and a count ``evaluations``. It scores exactly that
many distinct archs that fit the budget (fewer only when it cannot find more), never one arch twice,
and returns them in evaluation order with their scores (:data:`Evaluated`); the caller chooses among
them. The result depends only on the arguments and the state of ``rng`` (a ``random.Random``, the
only source of randomness), never on other budgets or earlier searches.

* :func:`random_search`: distinct draws of :meth:`SearchSpace.sample` that fit (rejection sampling).
* :func:`evolution_search`: AutoFormer's evolution (Chen et al., ICCV 2021): a population of
  in-budget archs; each generation the top-k of everything scored so far are the parents of
  mutations and crossovers, infeasible and already-scored children are rejected, and random archs
  fill what they leave. The population and generations scale with ``evaluations``
  (:func:`evolution_schedule`: AutoFormer's 50 x 20 at 1000). ``initial`` seeds the first
  population, e.g. with a trained policy's proposals (the policy+evolution hybrid).
* :func:`policy_search`: a sampler's proposals for the budget (``sampler.propose(budget, n, rng)``:
  the trained policy π(·|budget), or uniform in-budget archs), drawn until enough are distinct.

Random draws that fit are found by rejection; when :data:`PATIENCE` draws in a row bring no new
arch (a budget near the smallest arch's cost, or a space that holds fewer archs than asked), the
search switches to budget-masked draws (each decision uniform among the values whose cheapest
completion still fits) and stops after :data:`MASKED_PATIENCE` fruitless ones.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from focusformer_fast.nas.costs import CostFn
from focusformer_fast.space import Arch, SearchSpace

Evaluated = list[tuple[Arch, float]]
"""Distinct in-budget archs in evaluation order, each with its score (higher is better)."""

Evaluate = Callable[[Sequence[Arch]], Sequence[float]]
"""Scores a batch of archs, one score per arch, higher is better."""

METHODS = ("policy", "evolution", "random")

PATIENCE = 10_000
"""Random draws in a row without a new in-budget arch before switching to masked draws."""

MASKED_PATIENCE = 1_000
"""Masked draws in a row without a new arch before random draws give up."""

MUTATION_PROB = 0.2
"""AutoFormer's ``m_prob``: probability of redrawing each block's MLP ratio and, separately, its heads."""

STRUCTURE_PROB = 0.4
"""AutoFormer's ``s_prob``: probability of redrawing the depth and, separately, the embedding width."""

CHILD_TRIES = 10
"""Tries per wanted child (mutation or crossover) before giving up on it (AutoFormer's bound)."""

PROPOSAL_DRAWS = 10
""":func:`policy_search` draws at most this many proposals per wanted arch."""


class Proposer(Protocol):
    """What :func:`policy_search` needs from a sampler (:class:`focusformer_fast.nas.sampler.baselines.ArchSampler`)."""

    def propose(self, budget: float, n: int, rng: random.Random) -> list[Arch]: ...


@dataclass(frozen=True)
class EvolutionSchedule:
    """Sizes of one evolution search: ``population`` archs per generation, the top ``parents`` of all
    scored archs breed ``mutations`` and ``crossovers`` children per generation, random archs fill the rest."""

    population: int
    parents: int
    mutations: int
    crossovers: int


def evolution_schedule(evaluations: int) -> EvolutionSchedule:
    """AutoFormer's proportions scaled to ``evaluations``: population ``sqrt(2.5 N)`` (50 at N = 1000,
    so about 20 generations; 11 at 50, 22 at 200), parents a fifth of it (10 of 50), children half
    mutations, half crossovers (25 + 25)."""
    population = min(evaluations, max(4, round(math.sqrt(2.5 * evaluations))))
    mutations = population // 2
    return EvolutionSchedule(population, max(2, round(population / 5)), mutations, population - mutations)


class _Budget:
    """One search's view of a budget: memoized costs, the archs already taken, random in-budget draws."""

    def __init__(self, space: SearchSpace, cost_fn: CostFn, budget: float):
        self.space, self.cost_fn, self.budget = space, cost_fn, float(budget)
        self.costs: dict[Arch, float] = {}
        self.taken: set[Arch] = set()
        self.masked = False  # rejection sampling found nothing for PATIENCE draws: masked draws from now on

    def cost(self, arch: Arch) -> float:
        c = self.costs.get(arch)
        if c is None:
            c = self.costs[arch] = float(self.cost_fn(arch))
        return c

    def take(self, arch: Arch | None) -> bool:
        """Take ``arch`` if it fits and was not taken before; whether it was taken."""
        if arch is None or arch in self.taken or self.cost(arch) > self.budget:
            return False
        self.taken.add(arch)
        return True

    def random(self, count: int, rng: random.Random) -> list[Arch]:
        """Up to ``count`` new in-budget archs from random draws (module docstring: rejection, then masked)."""
        out: list[Arch] = []
        misses = 0
        while len(out) < count:
            arch = self._masked_draw(rng) if self.masked else self.space.sample(rng)
            if self.take(arch):
                out.append(arch)
                misses = 0
                continue
            misses += 1
            if self.masked and misses >= MASKED_PATIENCE:
                break
            if misses >= PATIENCE:
                self.masked, misses = True, 0
        return out

    def _masked_draw(self, rng: random.Random) -> Arch | None:
        """Depth, width, then each block's MLP ratio and heads, each uniform among the values whose
        cheapest completion fits; None when no value of a decision fits (a cost that is not monotone)."""
        s = self.space
        picked: dict[str, Any] = {"depth": None, "embed": None, "ratios": [], "heads": []}

        def cheapest(**choice: Any) -> Arch:
            v = {**picked, **choice}
            d = v["depth"] if v["depth"] is not None else s.depths[0]
            e = v["embed"] if v["embed"] is not None else s.embed_dims[0]
            return Arch(e, d, tuple(v["heads"] + [s.num_heads[0]] * (d - len(v["heads"]))),
                        tuple(v["ratios"] + [s.mlp_ratios[0]] * (d - len(v["ratios"]))))

        def pick(key: str, values: Sequence[Any]) -> bool:
            per_block = key in ("ratios", "heads")
            fit = [v for v in values
                   if self.cost(cheapest(**{key: picked[key] + [v] if per_block else v})) <= self.budget]
            if not fit:
                return False
            v = rng.choice(fit)
            if per_block:
                picked[key].append(v)
            else:
                picked[key] = v
            return True

        if not (pick("depth", s.depths) and pick("embed", s.embed_dims)):
            return None
        for _ in range(picked["depth"]):
            if not (pick("ratios", s.mlp_ratios) and pick("heads", s.num_heads)):
                return None
        return cheapest()


def _evaluate(evaluate: Evaluate, archs: Sequence[Arch], into: Evaluated) -> None:
    """Score ``archs`` in one batch and append them to ``into``."""
    if not archs:
        return
    scores = list(evaluate(list(archs)))
    if len(scores) != len(archs):
        raise ValueError(f"evaluate returned {len(scores)} scores for {len(archs)} archs; it must return one per arch")
    into.extend((a, float(s)) for a, s in zip(archs, scores))


def _check(evaluations: int) -> None:
    if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 1:
        raise ValueError(f"evaluations={evaluations!r} must be an int >= 1")


def random_search(space: SearchSpace, cost_fn: CostFn, budget: float, evaluate: Evaluate, evaluations: int,
                  rng: random.Random) -> Evaluated:
    """``evaluations`` distinct random archs that fit ``budget`` (module docstring), scored in one batch."""
    _check(evaluations)
    out: Evaluated = []
    _evaluate(evaluate, _Budget(space, cost_fn, budget).random(evaluations, rng), out)
    return out


def _mutate(space: SearchSpace, parent: Arch, rng: random.Random) -> Arch:
    """AutoFormer's mutation: a new depth (blocks added with random choices, or cut) with probability
    :data:`STRUCTURE_PROB`, each block's MLP ratio and heads redrawn with probability :data:`MUTATION_PROB`
    each, a new width with probability :data:`STRUCTURE_PROB`."""
    depth, ratios, heads = parent.depth, list(parent.mlp_ratio), list(parent.num_heads)
    if rng.random() < STRUCTURE_PROB:
        depth = rng.choice(space.depths)
        ratios = (ratios + [rng.choice(space.mlp_ratios) for _ in range(depth - len(ratios))])[:depth]
        heads = (heads + [rng.choice(space.num_heads) for _ in range(depth - len(heads))])[:depth]
    ratios = [rng.choice(space.mlp_ratios) if rng.random() < MUTATION_PROB else r for r in ratios]
    heads = [rng.choice(space.num_heads) if rng.random() < MUTATION_PROB else h for h in heads]
    embed = rng.choice(space.embed_dims) if rng.random() < STRUCTURE_PROB else parent.embed_dim
    return Arch(embed, depth, tuple(heads), tuple(ratios))


def _cross(a: Arch, b: Arch, rng: random.Random) -> Arch:
    """Uniform crossover: the depth and the width each from either parent, each block's MLP ratio and
    heads from either parent that has the block."""
    depth = rng.choice((a.depth, b.depth))
    embed = rng.choice((a.embed_dim, b.embed_dim))
    ratios, heads = [], []
    for i in range(depth):
        have = [p for p in (a, b) if i < p.depth]
        ratios.append(rng.choice(have).mlp_ratio[i])
        heads.append(rng.choice(have).num_heads[i])
    return Arch(embed, depth, tuple(heads), tuple(ratios))


def _children(count: int, make: Callable[[], Arch], state: _Budget) -> list[Arch]:
    """Up to ``count`` new in-budget children of ``make``, in at most :data:`CHILD_TRIES` tries each."""
    out: list[Arch] = []
    for _ in range(CHILD_TRIES * count):
        if len(out) == count:
            break
        child = make()
        if state.take(child):
            out.append(child)
    return out


def evolution_search(space: SearchSpace, cost_fn: CostFn, budget: float, evaluate: Evaluate, evaluations: int,
                     rng: random.Random, *, initial: Iterable[Arch] = ()) -> Evaluated:
    """AutoFormer's evolution (module docstring) with ``evaluations`` distinct in-budget archs.

    The first population is the distinct in-budget archs of ``initial`` (up to the population size, in
    order), filled with random ones. Each later generation: the top :attr:`EvolutionSchedule.parents`
    of everything scored so far (ties to the earlier) breed mutations of one random parent and
    crossovers of two, then random archs fill the population. Each generation is one ``evaluate`` batch.
    """
    _check(evaluations)
    sched = evolution_schedule(evaluations)
    state = _Budget(space, cost_fn, budget)
    out: Evaluated = []
    first: list[Arch] = []
    for arch in initial:
        if len(first) == sched.population:
            break
        if state.take(arch):
            first.append(arch)
    _evaluate(evaluate, first + state.random(sched.population - len(first), rng), out)
    while 0 < len(out) < evaluations:
        want = min(sched.population, evaluations - len(out))
        ranked = sorted(range(len(out)), key=lambda i: -out[i][1])
        parents = [out[i][0] for i in ranked[:sched.parents]]
        mutations = _children(min(sched.mutations, want), lambda: _mutate(space, rng.choice(parents), rng), state)
        crossovers = _children(min(sched.crossovers, want - len(mutations)),
                               lambda: _cross(rng.choice(parents), rng.choice(parents), rng), state)
        generation = mutations + crossovers
        generation += state.random(want - len(generation), rng)
        if not generation:
            break
        _evaluate(evaluate, generation, out)
    return out


def policy_search(sampler: Proposer, cost_fn: CostFn, budget: float, evaluate: Evaluate, evaluations: int,
                  rng: random.Random) -> Evaluated:
    """The first ``evaluations`` distinct in-budget archs of ``sampler.propose(budget, n, rng)``, asked
    for the missing count until found or :data:`PROPOSAL_DRAWS` per wanted arch were drawn; one batch."""
    _check(evaluations)
    taken: set[Arch] = set()
    found: list[Arch] = []
    drawn = 0
    while len(found) < evaluations and drawn < PROPOSAL_DRAWS * evaluations:
        batch = sampler.propose(budget, evaluations - len(found), rng)
        if not batch:
            break
        drawn += len(batch)
        for arch in batch:
            if arch not in taken and len(found) < evaluations:
                taken.add(arch)
                if float(cost_fn(arch)) <= budget:
                    found.append(arch)
    out: Evaluated = []
    _evaluate(evaluate, found, out)
    return out
