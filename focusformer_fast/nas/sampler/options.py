"""How the focus sampler trains (:class:`SamplerOptions`, also the trainer's flags), its constants, and
PNAG's Pareto-aware reward."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

SAMPLERS = ("focus", "uniform", "sandwich")
REWARD_MODELS = ("none", "estimator")
GROUP = 4
"""Draws per budget in a policy step against the estimator; each draw's baseline is the mean of the others."""
HELD_OUT = 200
"""Held-out (prediction, real score) pairs kept for the estimator's rank correlation: the newest
distinct archs scored for the first time."""
TRUST_Z = 2.0
"""Standard errors of τ above 0 before the estimator has any weight on the policy."""
PROPOSAL_TEMPERATURE = 3.0
"""``propose`` draws from π^(1/T): the trained policy concentrates (it is asked to), and best-of-N
search wants N archs spread over its top choices. Chosen on the synthetic-frontier harness
(docs/sampler.md): T = 1 / 2 / 3 / 4 gave best-of-50 regret at most evolution's with 200
evaluations in 5 / 5 / 8 / 8 of its 8 (function, on/off grid) cells, 3 the lowest on autoformer-t."""
SCALE_DECAY = 0.9
"""Decay of the moving mean square of the real rewards' advantages (the reward's scale)."""
FIT_STEPS = 16
"""Adam steps of each refit of the reward estimator (warm-started from the last)."""


def pareto_reward(score: Tensor | float, cost: Tensor | float, budget: Tensor | float, span: float) -> Tensor:
    """PNAG's Pareto-aware rule, elementwise over broadcastable tensors (or floats: a 0-d float64 tensor).

    A feasible arch (``cost <= budget``) gets its ``score`` (in [0, 1]). An infeasible one gets
    ``-1 - (cost - budget) / span`` (< -1): below every feasible arch, and among infeasible
    ones the cheaper wins. ``span`` (> 0, the space's cost range) keeps the penalty O(1).
    """
    score, cost, budget = (torch.as_tensor(v, dtype=torch.float64) for v in (score, cost, budget))
    return torch.where(cost <= budget, score, -1.0 - (cost - budget) / span)


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
    update_every: int = _option(10, "focus: a round of real scores every k steps (default 10)")
    samples_per_budget: int = _option(
        1, "focus: real scores per round per stratum of the cost range (as many strata as budgets; default 1)")
    sampler_lr: float = _option(1e-3, "focus: Adam learning rate of the policy (default 1e-3)")
    entropy_coef: float = _option(
        0.05, "focus: weight of the entropy bonus against advantages in units of the reward's scale, which "
              "keeps the policy near masked uniform on a reward it cannot rank (default 0.05)")
    baseline_decay: float = _option(0.9, "focus: decay of the per-stratum reward baseline (default 0.9)")
    budget_mask: bool = _option(True, "focus: mask choices that cannot fit the budget (default on)")
    reward_model: str = _option(
        "estimator", "focus: none (one REINFORCE step per round of real scores) or estimator (a reward estimator "
                     "fitted on every real score so far; more policy steps against it per round, weighted by "
                     "its rank correlation on archs it has not seen) (default estimator)")
    explore: float = _option(
        0.2, "focus: share of each round's real scores given to masked-uniform archs (each decision uniform over "
             "the choices the budget allows), so the reward estimator sees the whole space, not only where the "
             "policy looks (default 0.2)")
    estimator_steps: int = _option(1, "focus, --reward-model estimator: policy steps against the estimator "
                                      "per round (default 1)")
    estimator_draws: int = _option(64, "focus, --reward-model estimator: archs drawn per policy step against "
                                       "the estimator, 4 per budget (default 64)")

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
        if not self.estimator_draws >= GROUP:
            raise ValueError(f"estimator_draws={self.estimator_draws!r} must be >= {GROUP}")
        for name in ("sampler_warmup", "entropy_coef"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ValueError(f"{name}={v!r} must be >= 0")
        for name in ("epsilon", "baseline_decay", "explore"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v!r} must be in [0, 1]")
