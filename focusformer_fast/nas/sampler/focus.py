"""The FocusFormer sampler π(arch | budget) (docs/method.md §4, docs/sampler.md).

The LSTM policy of :mod:`focusformer_fast.nas.sampler.policy` conditioned on a normalized budget,
trained for every budget of the cost range by REINFORCE on PNAG's Pareto-aware reward, with
advantages in units of the reward's own scale and an entropy bonus against them. Every real score
joins a bounded record (:mod:`focusformer_fast.nas.sampler.scored_record`); with
``reward_model="estimator"`` a reward estimator (:mod:`focusformer_fast.nas.sampler.reward_estimator`)
fitted on it feeds more policy draws per round, with a weight that grows with how well it ranks
archs it has never seen. Its learning runs on a worker thread, off the trainer's critical path,
and is installed at the next round. It mixes in uniform archs (probability ``epsilon``) and samples
uniformly during a warm-up. It proposes from its policy, without replacement.

Budgets are in the units of a cost function ``cost(arch) -> float`` (:mod:`focusformer_fast.nas.costs`)
that is a sum of per-block costs (:mod:`focusformer_fast.nas.block_costs`: FLOPs, params, latency tables).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from focusformer_fast.nas.block_costs import BlockCosts
from focusformer_fast.nas.costs import CostFn, check_budgets
from focusformer_fast.nas.sampler.baselines import ScoreFn, SeededSampler
from focusformer_fast.nas.sampler.options import (FIT_STEPS, GROUP, HELD_OUT, PROPOSAL_TEMPERATURE, SCALE_DECAY,
                                                  TRUST_Z, SamplerOptions, pareto_reward)
from focusformer_fast.nas.sampler.policy import (ArchKey, Draws, SamplerPolicy, arch_key, key_arch, key_row,
                                                 keys_tensors, single_thread, split_rows)
from focusformer_fast.nas.sampler.reward_estimator import RewardEstimator, kendall_tau
from focusformer_fast.nas.sampler.scored_record import Scored, ScoredRecord
from focusformer_fast.space import Arch, SearchSpace

STATE_VERSION = 2


@dataclass
class _Eval:
    """An arch drawn for a round of real scores: its key, the budget it was drawn for, its stratum,
    and whether it was drawn masked-uniform (exploration) rather than from the policy."""

    key: ArchKey
    arch: Arch
    budget: float
    stratum: int
    explore: bool = False


@dataclass
class _Drawn:
    """What a job hands the trainer: the archs of the next round of real scores and the plan of the
    steps after it (step -> (arch, budget or None)), with the learning stats of the job."""

    evals: list[_Eval]
    plan: dict[int, tuple[Arch, float | None]]
    stats: dict[str, float]


class _Request:
    """The draws of a round and its window, asked of one rollout: the round's archs (one per
    stratum and sample, if ``evals``) and, per step of ``steps``, a uniform arch with probability
    ε or else a policy draw at a budget uniform over the cost range (from the step stream)."""

    def __init__(self, fs: "FocusSampler", steps: range, evals: bool = False):
        self.space = fs.space
        self.strata = fs._strata(len(fs.budgets), fs.samples_per_budget) if evals else []
        self.explore = set(fs.rng.sample(range(len(self.strata)), round(fs.options.explore * len(self.strata))))
        self.plan: dict[int, tuple[Arch, float | None]] = {}
        self.plan_steps: list[int] = []
        self.plan_budgets: list[float] = []
        for s in steps:
            if fs.rng.random() < fs.epsilon:
                self.plan[s] = (fs.space.sample(fs.rng), None)
            else:
                self.plan_steps.append(s)
                self.plan_budgets.append(fs.lo + fs.span * fs.rng.random())

    def budgets(self) -> list[float]:
        return [b for _, b in self.strata] + self.plan_budgets

    def uniform(self, before: int) -> list[bool]:
        """Per row of a rollout with ``before`` other rows first: drawn masked-uniform (exploration)."""
        return [False] * before + [i in self.explore for i in range(len(self.strata))] + [False] * len(self.plan_budgets)

    def result(self, d: Draws | None, start: int, stats: dict[str, float] | None = None) -> _Drawn:
        """The :class:`_Drawn` from rows ``start:`` of ``d`` (drawn for :meth:`budgets`; ``None`` if none)."""
        keys = [] if d is None else d.keys(start)
        k = len(self.strata)
        space = self.space
        evals = [_Eval(key, key_arch(space, key), b, i, j in self.explore)
                 for j, (key, (i, b)) in enumerate(zip(keys[:k], self.strata))]
        self.plan.update((s, (key_arch(space, key), b)) for s, key, b in zip(self.plan_steps, keys[k:],
                                                                              self.plan_budgets))
        return _Drawn(evals, dict(sorted(self.plan.items())), stats or {})


class FocusSampler(SeededSampler):
    """The FocusFormer sampler: π(arch | budget) trained on accuracy with shared weights.

    Args:
        space: the search space.
        cost_fn: ``cost(arch)`` in the budgets' units, a sum of per-block costs (:class:`BlockCosts`).
        budgets: the report grid (sorted; each >= the cheapest arch's cost). Training draws its
            budgets from the whole cost range, in as many strata as the grid has budgets.
        seed: seeds the step stream (ε draws, budgets, uniform archs), the policy's draws
            and its initialization.
        hidden: LSTM width.
        background: learn on a worker thread (results are the same either way: a round's
            learning is installed at the next round, always).
        **options: :class:`SamplerOptions` fields.

    Pipeline: at the round after step ``t`` (every ``update_every`` steps after the warm-up)
    the trainer scores the round's archs; a job then learns from those scores (one REINFORCE
    step, the record, the estimator and its policy steps) and draws the next round's archs and
    the archs of the ``update_every`` steps after that round. The job runs while the trainer
    trains; its result is installed at the next round, so every run, interrupted or not,
    threaded or not, draws the same archs.
    """

    name = "focus"
    proposer = "policy"

    def __init__(self, space: SearchSpace, cost_fn: CostFn, budgets: Sequence[float], *, seed: int = 0,
                 hidden: int = 64, background: bool = True, **options: Any):
        super().__init__(space, cost_fn, seed)
        self.options = SamplerOptions(**options)
        self.options.check()
        self.budgets = check_budgets(space, cost_fn, budgets)
        self.costs = BlockCosts.of(space, cost_fn)
        self.lo, self.hi = self.costs.min_cost(), self.costs.max_cost()
        self.span = max(self.hi - self.lo, 1e-12)
        o = self.options
        self.epsilon, self.warmup_steps, self.update_every = o.epsilon, o.sampler_warmup or 0, o.update_every
        self.samples_per_budget, self.entropy_coef = o.samples_per_budget, o.entropy_coef
        self.baseline_decay, self.budget_mask = o.baseline_decay, o.budget_mask
        self.reward_model, self.estimator_steps = o.reward_model, o.estimator_steps
        self.seed, self.hidden, self.background = seed, hidden, background
        self.policy = SamplerPolicy(space, hidden, seed)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=o.sampler_lr, fused=True)
        self.draw_gen = torch.Generator().manual_seed(seed)  # the policy's draws; the step stream is self.rng
        self.baselines: list[float | None] = [None] * len(self.budgets)  # per stratum of the cost range
        self.scale: float | None = None  # the real rewards' advantages, root mean square (moving)
        self.record = ScoredRecord()
        self._record_rows: deque[torch.Tensor] = deque(maxlen=self.record.capacity)  # the record's archs as key_row s
        self.estimator = RewardEstimator(space, fit_steps=FIT_STEPS, seed=seed) if o.reward_model == "estimator" else None
        self.held_out: list[tuple[float, float]] = []  # (estimate before the refit, real score), newest last
        self.trained_on_grid = False  # a state from before training drew budgets from the whole range
        self._plan: dict[int, tuple[Arch, float | None]] = {}
        self._job: Future | _Drawn | None = None  # the job of the last round, installed at the next one
        self._executor: ThreadPoolExecutor | None = None

    def initial(self) -> "FocusSampler":
        """A sampler like this one before any update (its seed's initial policy), for comparisons."""
        return FocusSampler(self.space, self.cost_fn, self.budgets, seed=self.seed, hidden=self.hidden,
                            background=False, **dataclasses.asdict(self.options))

    def trained_range(self) -> tuple[float, float]:
        """The budgets the policy was trained for: the cost range (a state from before that: its grid's ends)."""
        return (self.budgets[0], self.budgets[-1]) if self.trained_on_grid else (self.lo, self.hi)

    def normalize(self, budget: float) -> float:
        return (budget - self.lo) / self.span

    # -- drawing ---------------------------------------------------------------------------------
    def _rollout(self, budgets: Sequence[float], *, grad: bool, gen: torch.Generator | None = None,
                 given: tuple | None = None, uniform: Sequence[bool] | None = None) -> Draws:
        b = torch.tensor(budgets, dtype=torch.float64)
        with torch.set_grad_enabled(grad), single_thread():
            return self.policy.rollout((b - self.lo) / self.span, b if self.budget_mask else None,
                                       self.costs if self.budget_mask else None, gen=gen, given=given,
                                       uniform=None if uniform is None or not any(uniform) else torch.tensor(uniform))

    def draw(self, budgets: Sequence[float], *, rng: random.Random | None = None) -> Draws:
        """One draw from π(·|c) per budget c, batched (masked to the budget if ``budget_mask``), from
        ``rng`` (the sampler's own streams untouched) or else the sampler's draw stream."""
        self._settle()
        return self._rollout(budgets, grad=False, gen=self.draw_gen if rng is None else _generator(rng))

    def score(self, archs: Sequence[Arch], budgets: Sequence[float]) -> Draws:
        """Log-probabilities (with grad) and entropies of drawing ``archs`` under ``budgets``."""
        self._settle()
        keys = [arch_key(self.costs, a) for a in archs]
        return self._rollout(budgets, grad=True, given=keys_tensors(self.space, keys))

    def propose(self, budget: float, n: int, rng: random.Random) -> list[Arch]:
        """Up to ``n`` distinct archs drawn without replacement from π(·|budget)^(1/T) (T =
        :data:`PROPOSAL_TEMPERATURE`), from ``rng``: all ``n`` unless fewer fit the budget."""
        self._settle()
        with single_thread():
            d = self.policy.beam(self.normalize(budget), budget, self.costs if self.budget_mask else None, n,
                                 _generator(rng), PROPOSAL_TEMPERATURE)
        return d.archs()

    # -- training ------------------------------------------------------------------------------
    def next(self, step: int) -> tuple[Arch, float | None]:
        if step < self.warmup_steps:
            return self.space.sample(self.rng), None
        if step not in self._plan:  # the first step after the warm-up, or a caller that skipped rounds
            self._settle()
            last = step + (self.update_every - 1 - step) % self.update_every  # this window's round
            self._plan = self._draw_plan(range(step, last + 1))
        return self._plan.pop(step)

    def update(self, step: int, score: ScoreFn) -> dict[str, float]:
        """At a round (every ``update_every`` steps after the warm-up): score this round's archs with
        ``score`` (shared weights) and hand them to a job that learns from them (class docstring).

        Returns this round's mean ``score``, and the learning stats of the previous round's job
        (installed now): ``reward``, ``feasible``, ``entropy``, ``policy_loss``, and with the
        estimator ``estimator_loss``, ``estimator_weight``, ``estimator_steps`` and ``estimator_tau``
        (once 10 held-out pairs exist).
        """
        if step < self.warmup_steps or (step + 1) % self.update_every:
            return {}
        drawn = self._install(step)
        scores = [float(s) for s in score([e.arch for e in drawn.evals])]
        self._submit(lambda: self._learn_and_draw(step, drawn.evals, scores))
        return {"score": sum(scores) / len(scores), **drawn.stats}

    def _install(self, step: int) -> _Drawn:
        """The last round's job result (waiting for it), or a fresh draw if there was none; its plan
        becomes the plan of the steps after ``step``."""
        self._settle()
        drawn = self._job
        self._job = None
        if drawn is None:
            drawn = self._draw_round(step)
        self._plan = {s: v for s, v in self._plan.items() if s > step}
        self._plan.update(drawn.plan)
        return drawn

    def _submit(self, job: Callable[[], _Drawn]) -> None:
        if not self.background:
            self._job = job()
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="focus-sampler")
        self._job = self._executor.submit(job)

    def _settle(self) -> None:
        """Wait for a running job (its result stays pending until the next round installs it)."""
        if isinstance(self._job, Future):
            self._job = self._job.result()

    def _strata(self, strata: int, per_stratum: int, shared: bool = False) -> list[tuple[int, float]]:
        """``strata * per_stratum`` (stratum, budget) pairs, budgets uniform within each of ``strata``
        equal slices of the cost range (``shared``: one budget per stratum, repeated)."""
        out = []
        for k in range(strata):
            u = self.rng.random()
            for j in range(per_stratum):
                out.append((k, self.lo + self.span * (k + u) / strata))
                if not shared and j + 1 < per_stratum:
                    u = self.rng.random()
        return out

    def _draw(self, request: "_Request") -> _Drawn:
        budgets = request.budgets()
        d = self._rollout(budgets, grad=False, gen=self.draw_gen, uniform=request.uniform(0)) if budgets else None
        return request.result(d, 0)

    def _draw_plan(self, steps: range) -> dict[int, tuple[Arch, float | None]]:
        """Per step: a uniform arch with probability ε, else a policy draw at a budget uniform over the cost range."""
        return self._draw(_Request(self, steps)).plan

    def _draw_round(self, step: int) -> _Drawn:
        """The archs of the round at ``step`` and the plan of the steps after it, until the next
        round (for the first round, which no job drew)."""
        return self._draw(_Request(self, range(step + 1, step + 1 + self.update_every), evals=True))

    def _learn_and_draw(self, step: int, evals: list[_Eval], scores: list[float]) -> _Drawn:
        """The job of a round: learn from its real scores; draw the next round and its window's plan.

        One batched rollout holds the round's archs (teacher forcing), the draws against the
        estimator (when its weight is above 0) and the next round's draws (from the policy before
        this step); one policy step: REINFORCE on the real rewards, advantage = Pareto-aware reward
        minus its stratum's moving baseline, in units of the reward's scale; plus the estimator's
        term (:meth:`_estimator_advantages`); minus ``entropy_coef`` times the mean entropy of every
        draw. ``estimator_steps - 1`` more steps against the estimator follow.
        """
        costs = [float(self.cost_fn(e.arch)) for e in evals]
        n = len(evals)
        rewards = pareto_reward(scores, costs, [e.budget for e in evals], self.span).tolist()
        advantages = [0.0 if e.explore or self.baselines[e.stratum] is None else r - self.baselines[e.stratum]
                      for r, e in zip(rewards, evals)]  # exploration draws are not the policy's: record only
        for r, e in zip(rewards, evals):
            base = self.baselines[e.stratum]
            if not e.explore:
                self.baselines[e.stratum] = r if base is None else self.baseline_decay * base + (1 - self.baseline_decay) * r
        if any(a != 0.0 for a in advantages):
            square = sum(a * a for a in advantages) / sum(not e.explore for e in evals)
            self.scale = square if self.scale is None else SCALE_DECAY * self.scale + (1 - SCALE_DECAY) * square
        unit = math.sqrt(self.scale) if self.scale else 1.0
        stats = {"reward": sum(rewards) / n, "feasible": sum(c <= e.budget for c, e in zip(costs, evals)) / n}
        with single_thread():
            self._hold_out(evals, scores)
            self.record.add(Scored(e.arch, e.budget, c, s, step) for e, c, s in zip(evals, costs, scores))
            self._record_rows.extend(key_row(self.space, e.key) for e in evals)
            weight = self._refit(step, stats) if self.estimator is not None else 0.0
            groups = self._strata(max(1, self.options.estimator_draws // GROUP), GROUP, shared=True) if weight else []
            request = _Request(self, range(step + self.update_every + 1, step + 2 * self.update_every + 1), evals=True)
            d = self._rollout([e.budget for e in evals] + [b for _, b in groups] + request.budgets(), grad=True,
                              gen=self.draw_gen, given=keys_tensors(self.space, [e.key for e in evals]),
                              uniform=request.uniform(n + len(groups)))
            loss = -(torch.tensor(advantages) / unit * d.log_prob[:n]).mean() - self.entropy_coef * d.entropy.mean()
            if groups:
                k = len(groups)
                adv = self._estimator_advantages(d, n, [b for _, b in groups], weight)
                loss = loss - (adv * d.log_prob[n: n + k]).mean()
            self._step(loss)
            stats.update(entropy=d.entropy[:n].mean().item(), policy_loss=loss.item())
            for _ in range(self.estimator_steps - 1 if groups else 0):
                groups = self._strata(len(groups) // GROUP, GROUP, shared=True)
                e = self._rollout([b for _, b in groups], grad=True, gen=self.draw_gen)
                self._step(-(self._estimator_advantages(e, 0, [b for _, b in groups], weight) * e.log_prob).mean()
                           - self.entropy_coef * e.entropy.mean())
            return request.result(d, n + len(groups), stats)

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _hold_out(self, evals: list[_Eval], scores: list[float]) -> None:
        """Pairs (prediction, real score) of the round's distinct archs never scored before,
        predicted before the refit that sees them."""
        if self.estimator is None or not self.estimator.fitted:
            return
        seen, new = {e.arch for e in self.record}, []
        for e, s in zip(evals, scores):
            if e.arch not in seen:
                seen.add(e.arch)
                new.append((e.key, s))
        if new:
            predicted = self.estimator.predict(keys_tensors(self.space, [k for k, _ in new])).tolist()
            self.held_out.extend(zip(predicted, [s for _, s in new]))
            del self.held_out[:-HELD_OUT]

    def _refit(self, step: int, stats: dict[str, float]) -> float:
        """Refit the estimator on the record; its weight on the policy (:meth:`estimator_weight`)."""
        assert self.estimator is not None
        stats["estimator_loss"] = self.estimator.fit(split_rows(torch.stack(list(self._record_rows))),
                                                     [e.score for e in self.record], self.record.weights(step))
        weight = self.estimator_weight()
        stats.update(estimator_weight=weight, estimator_steps=float(self.estimator_steps if weight else 0))
        tau = self.estimator_tau()
        if tau is not None:
            stats["estimator_tau"] = tau
        return weight

    def _estimator_advantages(self, d: Draws, start: int, budgets: list[float], weight: float) -> torch.Tensor:
        """Advantages of the rows of ``d`` from ``start`` on drawn for ``budgets``, in groups of
        :data:`GROUP` at one budget each: estimated Pareto-aware reward minus the mean of the
        group's others, standardized over the rows, times ``weight``."""
        assert self.estimator is not None
        rows = slice(start, start + len(budgets))
        with torch.no_grad():
            est = self.estimator.predict((d.e[rows], d.d[rows], d.h[rows], d.r[rows])).to(torch.float64)
            cost = self.costs.costs(d.e[rows], d.d[rows], d.h[rows], d.r[rows])
            b = torch.tensor(budgets, dtype=torch.float64)
            reward = pareto_reward(est, cost, b, self.span).view(-1, GROUP)
            others = (reward.sum(dim=1, keepdim=True) - reward) / (GROUP - 1)
            adv = (reward - others).view(-1)
            return (weight * adv / adv.std().clamp_min(1e-12)).to(torch.float32)

    def estimator_tau(self) -> float | None:
        """Kendall τ of the estimator's predictions vs the real scores of archs scored for the first
        time, predicted before the refit that used them (the last :data:`HELD_OUT`); ``None`` without
        an estimator or before 10 such pairs."""
        if len(self.held_out) < 10:
            return None
        tau = kendall_tau([p for p, _ in self.held_out], [s for _, s in self.held_out])
        return None if tau != tau else tau

    def estimator_trusted(self) -> bool:
        """Whether the estimator ranks archs it has never seen better than chance: τ at least
        :data:`TRUST_Z` standard errors above 0, with ``n`` the number of those archs (the std of τ
        under independence is ``sqrt(2 (2n + 5) / (9 n (n - 1)))``)."""
        tau, n = self.estimator_tau(), len(self.held_out)
        return tau is not None and tau >= TRUST_Z * math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1)))

    def estimator_weight(self) -> float:
        """The estimator's weight on the policy, in [0, 1]: its held-out τ once trusted, else 0."""
        return min(max(self.estimator_tau() or 0.0, 0.0), 1.0) if self.estimator_trusted() else 0.0

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._settle()
        job = self._job
        return {
            **super().state_dict(),
            "version": STATE_VERSION,
            "budgets": list(self.budgets),
            "trained_on_grid": self.trained_on_grid,
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "draw_gen": self.draw_gen.get_state(),
            "baselines": list(self.baselines),
            "scale": self.scale,
            "record": self.record.state_dict(),
            "estimator": None if self.estimator is None else self.estimator.state_dict(),
            "held_out": [list(p) for p in self.held_out],
            "plan": _plan_state(self._plan),
            "job": None if job is None else {"evals": [[list(e.key), e.budget, e.stratum, e.explore]
                                                       for e in job.evals],
                                             "plan": _plan_state(job.plan), "stats": dict(job.stats)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a state of this version or of an earlier one (those trained at their grid's budgets only)."""
        self._settle()
        state = copy.deepcopy(state)  # optimizer states would otherwise share tensors with the caller's
        super().load_state_dict(state)
        if [float(b) for b in state["budgets"]] != list(self.budgets):
            raise ValueError(f"sampler state has budgets {state['budgets']}, this run {list(self.budgets)}")
        if "record" in state and (state["estimator"] is None) != (self.estimator is None):
            raise ValueError(f"sampler state is {'without' if state.get('estimator') is None else 'with'} a reward "
                             f"estimator; this run has reward_model={self.reward_model!r}")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baselines = list(state["baselines"])
        self.trained_on_grid = state.get("version", 1) < 2 or bool(state["trained_on_grid"])
        if state.get("version", 1) >= 2:
            self.draw_gen.set_state(state["draw_gen"])
            self.scale = state["scale"]
            self._plan = _load_plan(state["plan"])
            job = state["job"]
            self._job = None if job is None else _Drawn(
                [_Eval(tuple(k), key_arch(self.space, tuple(k)), float(b), int(i), bool(x))
                 for k, b, i, x in job["evals"]],
                _load_plan(job["plan"]), dict(job["stats"]))
        if "record" not in state:  # written before the record existed: nothing recorded
            return
        self.record.load_state_dict(state["record"])
        self._record_rows = deque((key_row(self.space, arch_key(self.costs, e.arch)) for e in self.record),
                                  maxlen=self.record.capacity)
        if self.estimator is not None:
            self.estimator.load_state_dict(state["estimator"])
        if state.get("version", 1) >= 2:  # earlier pairs included archs already scored: not a held-out measure
            self.held_out = [(float(p), float(s)) for p, s in state["held_out"]]


def _generator(rng: random.Random) -> torch.Generator:
    """A torch generator seeded from ``rng`` (one draw of it)."""
    return torch.Generator().manual_seed(rng.getrandbits(63))


def _plan_state(plan: dict[int, tuple[Arch, float | None]]) -> list[list[Any]]:
    return [[s, a.to_dict(), b] for s, (a, b) in plan.items()]


def _load_plan(rows: list[list[Any]]) -> dict[int, tuple[Arch, float | None]]:
    return {int(s): (Arch.from_dict(a), None if b is None else float(b)) for s, a, b in rows}
