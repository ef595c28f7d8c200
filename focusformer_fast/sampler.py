"""Which subnet to train next: the FocusFormer sampler π(arch | budget) and its baselines.

Every sampler has the same small interface (:class:`ArchSampler`): ``next(step)`` gives the
arch to train at that step (and the budget it was drawn for, or ``None``), and
``update(step, score)`` lets it learn from accuracy estimates of the shared weights.

* :class:`FocusSampler` (METHOD.md §4): an LSTM policy over the decisions (depth, embed,
  then per block mlp ratio and heads) conditioned on a normalized budget, trained by
  REINFORCE with a moving-average baseline per budget and an entropy bonus, on PNAG's
  Pareto-aware reward. It mixes in uniform archs (probability ``epsilon``) and samples
  uniformly during a warm-up.
* :class:`UniformSampler` (AutoFormer) and :class:`SandwichSampler` (BigNAS: largest,
  smallest, random, one per step in rotation so every sampler trains one arch per step).

Budgets are in the units of a cost function ``cost(arch) -> float``: FLOPs (MACs) or
parameters from the space, or milliseconds from a latency model (``profiler.LatencyModel``).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .space import Arch, SearchSpace

CostFn = Callable[[Arch], float]
ScoreFn = Callable[[Sequence[Arch]], Sequence[float]]
"""Scores in [0, 1] (accuracy estimates) of archs with the shared weights, one per arch."""

METRICS = ("flops", "params", "latency")
SAMPLERS = ("focus", "uniform", "sandwich")
DEPTH, EMBED, MLP, HEADS = "depth", "embed", "mlp_ratio", "num_heads"


# -- costs and budgets ---------------------------------------------------------------
def make_cost_fn(space: SearchSpace, metric: str, latency_table: str | Path | None = None) -> CostFn:
    """``cost(arch)`` in FLOPs (MACs), parameters, or ms (latency, from ``latency_table``)."""
    if metric in ("flops", "params"):
        return lambda arch: space.cost(arch, metric)
    if metric != "latency":
        raise ValueError(f"budget metric {metric!r} is unknown; allowed: {', '.join(METRICS)}")
    if latency_table is None:
        raise ValueError("budget metric 'latency' needs a latency table (--latency-table FILE)")
    if not Path(latency_table).is_file():
        raise ValueError(f"latency table {str(latency_table)!r} does not exist")
    try:
        from .profiler import LatencyModel
    except ImportError as exc:
        raise ValueError(f"budget metric 'latency' needs focusformer_fast.profiler ({exc})") from None
    return LatencyModel.load(latency_table).cost


def cost_range(space: SearchSpace, cost_fn: CostFn) -> tuple[float, float]:
    """Costs of the space's smallest and largest archs."""
    return cost_fn(space.smallest()), cost_fn(space.largest())


def budget_grid(space: SearchSpace, cost_fn: CostFn, n: int = 5) -> tuple[float, ...]:
    """``n`` budgets evenly spaced over the cost range, ``lo + (hi - lo) * k / n`` for k = 1..n.

    The top budget admits the whole space; the bottom one a fifth of the range (for n=5).
    """
    if n < 1:
        raise ValueError(f"number of budgets n={n} must be >= 1")
    lo, hi = cost_range(space, cost_fn)
    return tuple(lo + (hi - lo) * k / n for k in range(1, n + 1))


def check_budgets(space: SearchSpace, cost_fn: CostFn, budgets: Sequence[float]) -> tuple[float, ...]:
    """``budgets`` sorted, after checking each is finite and admits at least the smallest arch."""
    lo, _ = cost_range(space, cost_fn)
    if not budgets:
        raise ValueError("budgets must hold at least one value")
    for b in budgets:
        if not (isinstance(b, (int, float)) and math.isfinite(b) and b > 0):
            raise ValueError(f"budget {b!r} must be a positive finite number")
        if b < lo:
            raise ValueError(f"budget {b:g} is below the cost of the smallest arch ({lo:g}); allowed: >= {lo:g}")
    return tuple(sorted(float(b) for b in budgets))


def pareto_reward(score: float, cost: float, budget: float, span: float) -> float:
    """PNAG's Pareto-aware rule as a scalar.

    A feasible arch (``cost <= budget``) gets its ``score`` (in [0, 1]). An infeasible one gets
    ``-1 - (cost - budget) / span`` (< -1): below every feasible arch, and among infeasible
    ones the cheaper wins. ``span`` (> 0, the space's cost range) keeps the penalty O(1).
    """
    if cost <= budget:
        return score
    return -1.0 - (cost - budget) / span


# -- the policy ------------------------------------------------------------------------
@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the enclosed torch ops on one intra-op thread, then restore the thread count.

    The policy's ops are tiny ([B, 64]); extra threads only add synchronization, which on a
    busy 2-core machine made a 40-step toy run take 15 s instead of 0.25 s.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class Rollout:
    """One arch drawn (or scored) by the policy.

    ``log_prob`` and ``entropy`` are 0-d tensors: sums over the decisions taken (blocks past
    the depth are not decided), with grad when drawn with grad.
    """

    arch: Arch
    log_prob: Tensor
    entropy: Tensor


class _Partial:
    """Decisions taken so far; completes them with the cheapest values to bound the cost."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.values: dict[str, Any] = {DEPTH: None, EMBED: None, MLP: [], HEADS: []}

    def decides(self, kind: str, block: int) -> bool:
        """Whether decision ``kind`` of ``block`` is taken (per-block ones only below the depth)."""
        return kind in (DEPTH, EMBED) or block < self.values[DEPTH]

    def take(self, kind: str, value: Any) -> None:
        if kind in (MLP, HEADS):
            self.values[kind].append(value)
        else:
            self.values[kind] = value

    def cheapest(self, kind: str | None = None, value: Any = None) -> Arch:
        """The cheapest arch that extends the decisions so far (plus ``kind = value`` if given)."""
        v = {DEPTH: self.values[DEPTH], EMBED: self.values[EMBED], MLP: list(self.values[MLP]),
             HEADS: list(self.values[HEADS])}
        if kind is not None:
            if kind in (MLP, HEADS):
                v[kind].append(value)
            else:
                v[kind] = value
        s = self.space
        d = v[DEPTH] if v[DEPTH] is not None else s.depths[0]
        e = v[EMBED] if v[EMBED] is not None else s.embed_dims[0]
        ratios = v[MLP] + [s.mlp_ratios[0]] * (d - len(v[MLP]))
        heads = v[HEADS] + [s.num_heads[0]] * (d - len(v[HEADS]))
        return Arch(e, d, tuple(heads), tuple(ratios))

    def mask(self, kind: str, values: Sequence, fits: Callable[[Arch], bool]) -> list[bool]:
        """Choices whose cheapest completion fits; if none does, the first (cheapest) alone."""
        ok = [fits(self.cheapest(kind, v)) for v in values]
        return ok if any(ok) else [True] + [False] * (len(values) - 1)


def _draw(probs: Sequence[float], u: float) -> int:
    """Inverse-CDF draw from ``probs`` with a uniform ``u`` in [0, 1); never a zero-probability entry."""
    acc, last = 0.0, 0
    for i, p in enumerate(probs):
        if p > 0.0:
            acc, last = acc + p, i
            if u < acc:
                return i
    return last


class SamplerPolicy(nn.Module):
    """Autoregressive LSTM policy π(arch | budget) over a space's decisions.

    Decisions in order: depth, embed, then for each block below the depth its mlp ratio and
    heads. Input at every decision: the embedding of the previous choice (a learned start
    vector first) plus an embedding of the normalized budget. One categorical head per
    decision kind; choices that cannot fit the budget are masked. Rollouts are batched:
    ``B`` archs (any budgets) take ``2 + 2 * max_depth`` LSTM steps together.
    """

    def __init__(self, space: SearchSpace, hidden: int = 64, seed: int = 0):
        super().__init__()
        self.space = space
        self.choices = {DEPTH: space.depths, EMBED: space.embed_dims, MLP: space.mlp_ratios, HEADS: space.num_heads}
        self.schedule = [(DEPTH, 0), (EMBED, 0)] + [(k, i) for i in range(space.max_depth) for k in (MLP, HEADS)]
        self.budget_embed = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.choice_embed = nn.ModuleDict({k: nn.Embedding(len(c), hidden) for k, c in self.choices.items()})
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, len(c)) for k, c in self.choices.items()})
        gen = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1, generator=gen)  # PNAG's init, from a private stream

    def _cell(self, x: Tensor, h: Tensor, c: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """``nn.LSTMCell`` as one matmul (same weights and gate order i, f, g, o; faster at batch 1-64)."""
        i, f, g, o = torch.addmm(b, torch.cat([x, h], dim=1), w).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def rollout(
        self,
        budgets_norm: Sequence[float],
        *,
        rng: random.Random | None = None,
        fits: Sequence[Callable[[Arch], bool]] | None = None,
        archs: Sequence[Arch] | None = None,
    ) -> list[Rollout]:
        """Draw one arch per budget (or, with ``archs``, score those archs).

        Args:
            budgets_norm: ``B`` budgets, each mapped to ``(c - cost_min) / (cost_max - cost_min)``.
            rng: source of the draws (uniforms for inverse-CDF sampling).
            fits: per budget, ``fits(a)`` is True when arch ``a`` is within it. A choice is
                masked when even the cheapest completion of the decisions so far plus that
                choice does not fit (exact for costs monotone in every decision).
            archs: ``B`` archs of the space to score (teacher forcing) instead of drawing.
        """
        n = len(budgets_norm)
        if archs is None and rng is None:
            raise ValueError("rollout needs rng to draw archs (or archs to score)")
        b = self.budget_embed(torch.tensor(budgets_norm, dtype=torch.float32).view(n, 1))
        w = torch.cat([self.lstm.weight_ih, self.lstm.weight_hh], dim=1).t()
        bias = self.lstm.bias_ih + self.lstm.bias_hh
        h = c = torch.zeros(n, self.lstm.hidden_size)
        inp = self.start + b
        partials = [_Partial(self.space) for _ in range(n)]
        log_prob, entropy = torch.zeros(n), torch.zeros(n)
        for kind, block in self.schedule:
            active = [p.decides(kind, block) for p in partials]
            if not any(active):
                break
            h, c = self._cell(inp, h, c, w, bias)
            logits = self.heads[kind](h)
            values = self.choices[kind]
            if fits is not None:
                allowed = [p.mask(kind, values, f) if a else [True] * len(values)
                           for p, f, a in zip(partials, fits, active)]
                logits = logits.masked_fill(~torch.tensor(allowed), float("-inf"))
            logp = F.log_softmax(logits, dim=-1)
            probs = logp.exp()
            if archs is None:
                rows = probs.detach().tolist()
                idx = [_draw(rows[j], rng.random()) if active[j] else 0 for j in range(n)]
            else:
                idx = [self._index(kind, archs[j], block) if active[j] else 0 for j in range(n)]
            idx_t = torch.tensor(idx)
            chosen = logp.gather(1, idx_t.view(n, 1)).view(n)
            if archs is not None and not torch.isfinite(chosen).all():
                raise ValueError(f"an arch to score is masked out by its budget at decision {kind!r}")
            ent = -(probs * logp.masked_fill(probs == 0, 0.0)).sum(dim=1)
            act = torch.tensor(active)
            log_prob = log_prob + torch.where(act, chosen, 0.0)
            entropy = entropy + torch.where(act, ent, 0.0)
            for j in range(n):
                if active[j]:
                    partials[j].take(kind, values[idx[j]])
            inp = self.choice_embed[kind].weight[idx_t] + b
        return [Rollout(p.cheapest(), log_prob[j], entropy[j]) for j, p in enumerate(partials)]

    def _index(self, kind: str, arch: Arch, block: int) -> int:
        if kind == DEPTH:
            v = arch.depth
        elif kind == EMBED:
            v = arch.embed_dim
        else:
            v = (arch.mlp_ratio if kind == MLP else arch.num_heads)[block]
        values = self.choices[kind]
        for i, c in enumerate(values):
            if math.isclose(v, c):
                return i
        raise ValueError(f"Arch.{kind}={v!r} is not in space {self.space.name!r}; allowed: {list(values)}")


# -- samplers --------------------------------------------------------------------------
class ArchSampler(Protocol):
    """What the training loop needs from a sampler."""

    name: str

    def next(self, step: int) -> tuple[Arch, float | None]:
        """The arch to train at global step ``step``, and the budget it was drawn for (or None)."""

    def update(self, step: int, score: ScoreFn) -> dict[str, float]:
        """Learn after step ``step`` (a no-op for the baselines); returns stats to log ({} if none)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _Seeded:
    """Shared part of the samplers: a space and a seeded ``random.Random``."""

    name = ""

    def __init__(self, space: SearchSpace, seed: int):
        self.space = space
        self.rng = random.Random(seed)

    def update(self, step: int, score: ScoreFn) -> dict[str, float]:
        return {}

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
        epsilon: probability of a uniform arch after the warm-up.
        warmup_steps: steps of uniform sampling before the policy is used and trained.
        update_every: REINFORCE update every this many steps (k).
        samples_per_budget: archs drawn per budget per update.
        lr: Adam learning rate of the policy (PNAG's 3e-4).
        entropy_coef: weight of the entropy bonus.
        baseline_decay: moving-average decay of the per-budget reward baseline.
        budget_mask: mask choices whose cheapest completion exceeds the budget.
        hidden: LSTM width.
    """

    name = "focus"

    def __init__(
        self,
        space: SearchSpace,
        cost_fn: CostFn,
        budgets: Sequence[float],
        *,
        seed: int = 0,
        epsilon: float = 0.2,
        warmup_steps: int = 0,
        update_every: int = 10,
        samples_per_budget: int = 1,
        lr: float = 3e-4,
        entropy_coef: float = 1e-3,
        baseline_decay: float = 0.9,
        budget_mask: bool = True,
        hidden: int = 64,
    ):
        super().__init__(space, seed)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon={epsilon} must be in [0, 1]")
        for field, v, least in (("warmup_steps", warmup_steps, 0), ("update_every", update_every, 1),
                                ("samples_per_budget", samples_per_budget, 1)):
            if v < least:
                raise ValueError(f"{field}={v} must be >= {least}")
        self.cost_fn = cost_fn
        self.budgets = check_budgets(space, cost_fn, budgets)
        self.lo, self.hi = cost_range(space, cost_fn)
        self.span = max(self.hi - self.lo, 1e-12)
        self.epsilon, self.warmup_steps, self.update_every = epsilon, warmup_steps, update_every
        self.samples_per_budget, self.entropy_coef = samples_per_budget, entropy_coef
        self.baseline_decay, self.budget_mask = baseline_decay, budget_mask
        self.policy = SamplerPolicy(space, hidden, seed)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.draw_rng = random.Random(f"{seed}:policy")  # the policy's draws; the step stream is self.rng
        self.baselines: list[float | None] = [None] * len(self.budgets)
        self._costs: dict[Arch, float] = {}

    def cost(self, arch: Arch) -> float:
        """``cost_fn(arch)``, memoized."""
        c = self._costs.get(arch)
        if c is None:
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

    def next(self, step: int) -> tuple[Arch, float | None]:
        if step < self.warmup_steps or self.rng.random() < self.epsilon:
            return self.space.sample(self.rng), None
        budget = self.rng.choice(self.budgets)
        return self.sample(budget).arch, budget

    def update(self, step: int, score: ScoreFn) -> dict[str, float]:
        """Every ``update_every`` steps after the warm-up: one REINFORCE step.

        Draws ``samples_per_budget`` archs per budget, scores them with ``score`` (shared
        weights), turns scores into Pareto-aware rewards, and minimizes
        ``-mean((R - b_c) * log π) - entropy_coef * mean(H)``. Baselines ``b_c`` move after.
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
        with single_thread():
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        n = len(drawn)
        return {"reward": sum(rewards) / n, "score": sum(scores) / n, "feasible": feasible / n,
                "entropy": entropies.mean().item(), "policy_loss": loss.item()}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "budgets": list(self.budgets),
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "draw_rng": self.draw_rng.getstate(),
            "baselines": list(self.baselines),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if [float(b) for b in state["budgets"]] != list(self.budgets):
            raise ValueError(f"sampler state has budgets {state['budgets']}, this run {list(self.budgets)}")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.draw_rng.setstate(_as_random_state(state["draw_rng"]))
        self.baselines = list(state["baselines"])


def make_sampler(
    name: str, space: SearchSpace, cost_fn: CostFn, budgets: Sequence[float], *, seed: int, **focus: Any
) -> ArchSampler:
    """A sampler by name (``focus``, ``uniform``, ``sandwich``); ``focus`` takes :class:`FocusSampler` options."""
    if name == "focus":
        return FocusSampler(space, cost_fn, budgets, seed=seed, **focus)
    if name == "uniform":
        return UniformSampler(space, seed)
    if name == "sandwich":
        return SandwichSampler(space, seed)
    raise ValueError(f"sampler {name!r} is unknown; allowed: {', '.join(SAMPLERS)}")
