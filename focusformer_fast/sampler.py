"""Which subnet to train next: the FocusFormer sampler π(arch | budget) and its baselines.

Every sampler has the same small interface (:class:`ArchSampler`): ``next(step)`` gives the
arch to train at that step (and the budget it was drawn for, or ``None``), ``update(step,
score)`` lets it learn from accuracy estimates of the shared weights, and ``propose(budget, n,
rng)`` gives the candidates a search scores for a budget.

* :class:`FocusSampler` (docs/method.md, docs/sampler.md): the LSTM policy of
  :mod:`focusformer_fast.policy` conditioned on a normalized budget, trained by REINFORCE with a
  moving-average baseline per budget and an entropy bonus, on PNAG's Pareto-aware reward. Every
  real score joins a bounded record (:mod:`focusformer_fast.scored_record`); with
  ``reward_model="estimator"`` a reward estimator (:mod:`focusformer_fast.reward_estimator`)
  fitted on it feeds many more policy steps per round of real scores. It mixes in uniform archs
  (probability ``epsilon``) and samples uniformly during a warm-up. It proposes from its policy.
* :class:`UniformSampler` (AutoFormer) and :class:`SandwichSampler` (BigNAS: largest,
  smallest, random, one per step in rotation so every sampler trains one arch per step). They
  propose uniform archs that fit the budget.

Budgets are in the units of a cost function ``cost(arch) -> float`` (:mod:`focusformer_fast.costs`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .costs import CostFn, check_budgets, cost_range
from .policy import Rollout, SamplerPolicy, single_thread
from .reward_estimator import RewardEstimator, kendall_tau
from .scored_record import Scored, ScoredRecord
from .space import Arch, SearchSpace

ScoreFn = Callable[[Sequence[Arch]], Sequence[float]]
"""Scores in [0, 1] (accuracy estimates) of archs with the shared weights, one per arch."""

SAMPLERS = ("focus", "uniform", "sandwich")
REWARD_MODELS = ("none", "estimator")
ESTIMATOR_DRAWS = 8
"""Archs drawn per budget for each policy step against the estimator."""
COST_MEMO = 200_000
"""Costs memoized at most (the masks of many policy steps visit millions of partial archs)."""
HELD_OUT = 200
"""Held-out (prediction, real score) pairs kept for the estimator's rank correlation."""
TRUST_Z = 2.0
"""Standard errors of τ above 0 before the policy takes steps against the estimator."""


def pareto_reward(score: float, cost: float, budget: float, span: float) -> float:
    """PNAG's Pareto-aware rule as a scalar.

    A feasible arch (``cost <= budget``) gets its ``score`` (in [0, 1]). An infeasible one gets
    ``-1 - (cost - budget) / span`` (< -1): below every feasible arch, and among infeasible
    ones the cheaper wins. ``span`` (> 0, the space's cost range) keeps the penalty O(1).
    """
    if cost <= budget:
        return score
    return -1.0 - (cost - budget) / span


def _option(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class SamplerOptions:
    """How :class:`FocusSampler` trains; these names are also the trainer's config fields and flags.

    ``metadata["help"]`` of each field is its flag's help text.
    """

    epsilon: float = _option(0.2, "focus: probability of a uniform arch (default 0.2)")
    sampler_warmup: int | None = _option(
        None, "focus: uniform steps first (default 20%% of steps; a sampler built directly: none)")
    update_every: int = _option(10, "focus: REINFORCE update every k steps (default 10)")
    samples_per_budget: int = _option(1, "focus: archs drawn per budget per update (default 1)")
    # PNAG's; 3e-3 concentrated the policy faster and scored 0.4 points lower on digits
    sampler_lr: float = _option(3e-4, "focus: Adam learning rate of the policy (default 3e-4)")
    entropy_coef: float = _option(1e-3, "focus: weight of the entropy bonus (default 1e-3)")
    baseline_decay: float = _option(0.9, "focus: decay of the per-budget reward baseline (default 0.9)")
    budget_mask: bool = _option(True, "focus: mask choices that cannot fit the budget (default on)")
    # estimator: 2-10x less regret than none per real evaluation on the synthetic frontiers, and the best
    # digits accuracy in the comparison (within noise); docs/sampler.md
    reward_model: str = _option(
        "estimator", "focus: none (one REINFORCE step per round of real scores) or estimator (a reward estimator "
                     "fitted on every real score so far; many policy steps against it per round) (default estimator)")
    estimator_steps: int = _option(20, "focus, --reward-model estimator: policy steps against the estimator "
                                       "per update round (default 20)")

    @classmethod
    def of(cls, obj: Any) -> "SamplerOptions":
        """The sampler options held by ``obj`` (any object with these fields, e.g. a train config)."""
        return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field out of range."""
        if self.reward_model not in REWARD_MODELS:
            raise ValueError(f"reward_model={self.reward_model!r} is unknown; allowed: {', '.join(REWARD_MODELS)}")
        for name in ("update_every", "samples_per_budget", "sampler_lr", "estimator_steps"):
            v = getattr(self, name)
            if not v > 0:
                raise ValueError(f"{name}={v!r} must be > 0")
        for name in ("sampler_warmup", "entropy_coef"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ValueError(f"{name}={v!r} must be >= 0")
        for name in ("epsilon", "baseline_decay"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v!r} must be in [0, 1]")


def uniform_proposals(space: SearchSpace, cost_fn: CostFn, budget: float, n: int,
                      rng: random.Random) -> list[Arch]:
    """``n`` uniform archs that fit ``budget`` (rejection sampling; up to ``1000 * n`` tries)."""
    out: list[Arch] = []
    for _ in range(1000 * n):
        a = space.sample(rng)
        if cost_fn(a) <= budget:
            out.append(a)
            if len(out) == n:
                break
    return out


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
        """``n`` candidate archs for ``budget``, drawn from ``rng`` (the sampler's own streams untouched)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _Seeded:
    """Shared part of the samplers: a space, its cost function and a seeded ``random.Random``.

    Proposes uniform in-budget archs; :class:`FocusSampler` overrides that with its policy.
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
        self.rng.setstate(_as_random_state(state["rng"]))


def _as_random_state(s: Any) -> tuple:
    """``random.Random`` state from a checkpoint (tuples may come back as lists)."""
    return (s[0], tuple(s[1]), s[2])


class UniformSampler(_Seeded):
    """AutoFormer: every step a uniformly random arch."""

    name = "uniform"

    def next(self, step: int) -> tuple[Arch, float | None]:
        return self.space.sample(self.rng), None


class SandwichSampler(_Seeded):
    """BigNAS sandwich rule, one arch per step: largest, smallest, random, repeating."""

    name = "sandwich"

    def next(self, step: int) -> tuple[Arch, float | None]:
        phase = step % 3
        if phase == 0:
            return self.space.largest(), None
        if phase == 1:
            return self.space.smallest(), None
        return self.space.sample(self.rng), None


class FocusSampler(_Seeded):
    """The FocusFormer sampler: π(arch | budget) trained on accuracy with shared weights.

    Args:
        space: the search space.
        cost_fn: ``cost(arch)`` in the budgets' units.
        budgets: the budget prior (drawn uniformly), each >= the smallest arch's cost.
        seed: seeds the step stream (ε draws, budgets, uniform archs), the policy's draws
            and its initialization.
        hidden: LSTM width.
        **options: :class:`SamplerOptions` fields: ``epsilon`` (probability of a uniform arch
            after the warm-up), ``sampler_warmup`` (steps of uniform sampling before the policy
            is used and trained), ``update_every`` (a REINFORCE update every k steps),
            ``samples_per_budget`` (archs drawn per budget per update), ``sampler_lr`` (Adam
            learning rate of the policy), ``entropy_coef`` (weight of the entropy bonus),
            ``baseline_decay`` (moving-average decay of the per-budget reward baseline),
            ``budget_mask`` (mask choices whose cheapest completion exceeds the budget),
            ``reward_model`` (``"none"``: one REINFORCE step per round of real scores;
            ``"estimator"``: then ``estimator_steps`` more steps against the reward estimator).
    """

    name = "focus"
    proposer = "policy"

    def __init__(self, space: SearchSpace, cost_fn: CostFn, budgets: Sequence[float], *, seed: int = 0,
                 hidden: int = 64, **options: Any):
        super().__init__(space, cost_fn, seed)
        self.options = SamplerOptions(**options)
        self.options.check()
        self.budgets = check_budgets(space, cost_fn, budgets)
        self.lo, self.hi = cost_range(space, cost_fn)
        self.span = max(self.hi - self.lo, 1e-12)
        o = self.options
        self.epsilon, self.warmup_steps, self.update_every = o.epsilon, o.sampler_warmup or 0, o.update_every
        self.samples_per_budget, self.entropy_coef = o.samples_per_budget, o.entropy_coef
        self.baseline_decay, self.budget_mask = o.baseline_decay, o.budget_mask
        self.seed, self.hidden = seed, hidden
        self.policy = SamplerPolicy(space, hidden, seed)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=o.sampler_lr)
        self.draw_rng = random.Random(f"{seed}:policy")  # the policy's draws; the step stream is self.rng
        self.baselines: list[float | None] = [None] * len(self.budgets)
        self._costs: dict[Arch, float] = {}
        self.record = ScoredRecord()
        self.reward_model, self.estimator_steps = o.reward_model, o.estimator_steps
        self.estimator = RewardEstimator(space, seed=seed) if o.reward_model == "estimator" else None
        self.held_out: list[tuple[float, float]] = []  # (estimate before the refit, real score), newest last

    def initial(self) -> "FocusSampler":
        """A sampler like this one before any update (its seed's initial policy), for comparisons."""
        return FocusSampler(self.space, self.cost_fn, self.budgets, seed=self.seed, hidden=self.hidden,
                            **dataclasses.asdict(self.options))

    def cost(self, arch: Arch) -> float:
        """``cost_fn(arch)``, memoized."""
        c = self._costs.get(arch)
        if c is None:
            if len(self._costs) >= COST_MEMO:
                self._costs.clear()
            c = self._costs[arch] = float(self.cost_fn(arch))
        return c

    def normalize(self, budget: float) -> float:
        return (budget - self.lo) / self.span

    def _fits(self, budgets: Sequence[float]) -> list[Callable[[Arch], bool]] | None:
        if not self.budget_mask:
            return None
        return [lambda a, b=b: self.cost(a) <= b for b in budgets]

    def sample_many(self, budgets: Sequence[float], *, grad: bool = False,
                    rng: random.Random | None = None) -> list[Rollout]:
        """One draw from π(·|c) per budget c, batched (masked to the budget if ``budget_mask``).

        Draws from the sampler's own stream unless ``rng`` is given.
        """
        with torch.set_grad_enabled(grad), single_thread():
            return self.policy.rollout([self.normalize(b) for b in budgets], rng=rng or self.draw_rng,
                                       fits=self._fits(budgets))

    def sample(self, budget: float, *, grad: bool = False, rng: random.Random | None = None) -> Rollout:
        """One draw from π(·|budget); see :meth:`sample_many`."""
        return self.sample_many([budget], grad=grad, rng=rng)[0]

    def score(self, arch: Arch, budget: float) -> Rollout:
        """Log-probability (with grad) and entropy of drawing ``arch`` under ``budget``."""
        with single_thread():
            return self.policy.rollout([self.normalize(budget)], fits=self._fits([budget]), archs=[arch])[0]

    def propose(self, budget: float, n: int, rng: random.Random) -> list[Arch]:
        """``n`` draws from the trained policy π(·|budget), from ``rng``."""
        return [r.arch for r in self.sample_many([budget] * n, rng=rng)]

    def next(self, step: int) -> tuple[Arch, float | None]:
        if step < self.warmup_steps or self.rng.random() < self.epsilon:
            return self.space.sample(self.rng), None
        budget = self.rng.choice(self.budgets)
        return self.sample(budget).arch, budget

    def update(self, step: int, score: ScoreFn) -> dict[str, float]:
        """Every ``update_every`` steps after the warm-up: one round of real scores.

        Draws ``samples_per_budget`` archs per budget, scores them with ``score`` (shared
        weights), turns scores into Pareto-aware rewards, and takes one REINFORCE step on
        ``-mean((R - b_c) * log π) - entropy_coef * mean(H)``; baselines ``b_c`` move after.
        The scored archs join the record. With ``reward_model="estimator"`` the estimator is
        then refit on the record and the policy takes ``estimator_steps`` more steps against it.
        """
        if step < self.warmup_steps or (step + 1) % self.update_every:
            return {}
        which = [i for i in range(len(self.budgets)) for _ in range(self.samples_per_budget)]
        drawn = list(zip(which, self.sample_many([self.budgets[i] for i in which], grad=True)))
        scores = [float(s) for s in score([r.arch for _, r in drawn])]
        rewards, feasible = [], 0
        for (i, r), s in zip(drawn, scores):
            cost, budget = self.cost(r.arch), self.budgets[i]
            feasible += cost <= budget
            rewards.append(pareto_reward(s, cost, budget, self.span))
        advantages = []
        for (i, _), rew in zip(drawn, rewards):
            base = self.baselines[i]
            advantages.append(0.0 if base is None else rew - base)
        for (i, _), rew in zip(drawn, rewards):
            base = self.baselines[i]
            self.baselines[i] = rew if base is None else self.baseline_decay * base + (1 - self.baseline_decay) * rew
        log_probs = torch.stack([r.log_prob for _, r in drawn])
        entropies = torch.stack([r.entropy for _, r in drawn])
        loss = -(torch.tensor(advantages) * log_probs).mean() - self.entropy_coef * entropies.mean()
        self._step(loss)
        self.record.add(Scored(r.arch, self.budgets[i], self.cost(r.arch), s, step) for (i, r), s in zip(drawn, scores))
        n = len(drawn)
        stats = {"reward": sum(rewards) / n, "score": sum(scores) / n, "feasible": feasible / n,
                 "entropy": entropies.mean().item(), "policy_loss": loss.item()}
        if self.estimator is not None:
            stats.update(self._estimator_round(step, [r.arch for _, r in drawn], scores))
        return stats

    def _step(self, loss: torch.Tensor) -> None:
        with single_thread():
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    def _estimator_round(self, step: int, archs: list[Arch], scores: list[float]) -> dict[str, float]:
        """Refit the estimator on the record, then ``estimator_steps`` policy steps against it
        if it ranks held-out real scores better than chance (:meth:`estimator_trusted`).

        Each step draws :data:`ESTIMATOR_DRAWS` archs per budget; their estimated scores become
        Pareto-aware rewards, the baseline of a draw is the mean reward of its budget's draws.
        """
        assert self.estimator is not None
        with single_thread():
            if self.estimator.fitted:  # this round's archs are held out: the estimator has not seen them
                self.held_out.extend(zip(self.estimator.predict(archs).tolist(), scores))
                del self.held_out[:-HELD_OUT]
            entries = list(self.record)
            fit_loss = self.estimator.fit([e.arch for e in entries], [e.score for e in entries],
                                          self.record.weights(step))
        stats = {"estimator_loss": fit_loss, "estimator_steps": 0.0}
        tau = self.estimator_tau()
        if tau is None:
            return stats
        stats["estimator_tau"] = tau
        if not self.estimator_trusted():
            return stats
        stats["estimator_steps"] = float(self.estimator_steps)
        k = len(self.budgets)
        which = [i for i in range(k) for _ in range(ESTIMATOR_DRAWS)]
        for _ in range(self.estimator_steps):
            drawn = self.sample_many([self.budgets[i] for i in which], grad=True)
            with single_thread():
                est = self.estimator.predict([r.arch for r in drawn]).tolist()
            rewards = torch.tensor([pareto_reward(e, self.cost(r.arch), self.budgets[i], self.span)
                                    for i, r, e in zip(which, drawn, est)]).view(k, ESTIMATOR_DRAWS)
            advantages = (rewards - rewards.mean(dim=1, keepdim=True)).view(-1)
            log_probs = torch.stack([r.log_prob for r in drawn])
            entropies = torch.stack([r.entropy for r in drawn])
            self._step(-(advantages * log_probs).mean() - self.entropy_coef * entropies.mean())
        return stats

    def estimator_tau(self) -> float | None:
        """Kendall τ of the estimator's predictions vs the real scores of archs it had not seen.

        Over the last :data:`HELD_OUT` real scores (each predicted before the refit that used
        it); ``None`` without an estimator or before 10 such pairs.
        """
        if len(self.held_out) < 10:
            return None
        tau = kendall_tau([p for p, _ in self.held_out], [s for _, s in self.held_out])
        return None if tau != tau else tau

    def estimator_trusted(self) -> bool:
        """Whether the estimator ranks held-out real scores better than chance: τ at least
        :data:`TRUST_Z` standard errors above 0 (the std of τ under independence is
        ``sqrt(2 (2n + 5) / (9 n (n - 1)))`` for ``n`` pairs). On a flat or pure-noise reward it
        is not, and the policy takes no steps against the estimator's artifacts."""
        tau, n = self.estimator_tau(), len(self.held_out)
        return tau is not None and tau >= TRUST_Z * math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1)))

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "budgets": list(self.budgets),
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "draw_rng": self.draw_rng.getstate(),
            "baselines": list(self.baselines),
            "record": self.record.state_dict(),
            "estimator": None if self.estimator is None else self.estimator.state_dict(),
            "held_out": [list(p) for p in self.held_out],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = copy.deepcopy(state)  # optimizer states would otherwise share tensors with the caller's
        super().load_state_dict(state)
        if [float(b) for b in state["budgets"]] != list(self.budgets):
            raise ValueError(f"sampler state has budgets {state['budgets']}, this run {list(self.budgets)}")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.draw_rng.setstate(_as_random_state(state["draw_rng"]))
        self.baselines = list(state["baselines"])
        if "record" not in state:  # written before the record existed: nothing recorded, no estimator
            return
        self.record.load_state_dict(state["record"])
        if (state["estimator"] is None) != (self.estimator is None):
            raise ValueError(f"sampler state is {'without' if state['estimator'] is None else 'with'} a reward "
                             f"estimator; this run has reward_model={self.reward_model!r}")
        if self.estimator is not None:
            self.estimator.load_state_dict(state["estimator"])
        self.held_out = [(float(p), float(s)) for p, s in state["held_out"]]


def make_sampler(name: str, space: SearchSpace, cost_fn: CostFn, budgets: Sequence[float], *, seed: int,
                 options: SamplerOptions | None = None) -> ArchSampler:
    """A sampler by name (``focus``, ``uniform``, ``sandwich``); ``focus`` trains with ``options``
    (any object holding the :class:`SamplerOptions` fields; default: their defaults)."""
    if name == "focus":
        opts = SamplerOptions() if options is None else SamplerOptions.of(options)
        return FocusSampler(space, cost_fn, budgets, seed=seed, **dataclasses.asdict(opts))
    if name == "uniform":
        return UniformSampler(space, cost_fn, seed)
    if name == "sandwich":
        return SandwichSampler(space, cost_fn, seed)
    raise ValueError(f"sampler {name!r} is unknown; allowed: {', '.join(SAMPLERS)}")
