"""What the focus sampler has learned, per budget, in numbers a user can read.

For each budget ``c``, from ``draws`` archs drawn from π(·|c) with a private seeded stream (the
sampler's own streams are untouched):

* ``kl_uniform``: KL(π(·|c) ‖ masked uniform), nats. Masked uniform draws each decision
  uniformly over the choices the budget allows. Estimated as the mean over draws of
  ``Σ_t (log n_allowed_t - H_t)`` (each decision's exact KL to uniform, summed along the drawn
  path): unbiased, and 0 exactly when the policy is uniform at every decision.
* ``entropy``: H(π(·|c)), nats, as the mean over draws of ``Σ_t H_t``.
* ``cost_p10``, ``cost_median``, ``cost_p90``: quantiles of cost / budget of the draws.
* ``kl_initial``: the same KL for the sampler's initial policy (its seed's initialization),
  from the same number of draws: where learning started.
* ``distinct``: distinct archs among the first :data:`DISTINCT_OF` draws (``propose`` always
  returns distinct archs; this shows how concentrated the policy itself is).

And once per sampler, ``estimator_tau``: Kendall τ of the reward estimator's predictions vs the
real scores of archs scored for the first time (``None`` without an estimator), whether that
makes it trusted, and its weight on the policy; and the budget range the policy was trained for.

:func:`flat_warning` says when the reward gave the policy nothing to learn from: at every budget
its KL exceeds the initial policy's by less than :data:`FLAT_KL`, or the reward estimator ranks
held-out real scores no better than chance (REINFORCE on pure noise also moves the policy).
:func:`collapse_warning` names the budgets whose draws collapsed onto a few archs.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from typing import Any

from focusformer_fast.nas.costs import CostFn, fmt_cost
from focusformer_fast.nas.sampler.baselines import ArchSampler, uniform_proposals
from focusformer_fast.nas.sampler.focus import FocusSampler
from focusformer_fast.nas.sampler.policy import Draws
from focusformer_fast.space import SearchSpace

DRAWS = 200
DISTINCT_OF = 50
COLLAPSED = 10
"""Fewer distinct archs than this among :data:`DISTINCT_OF` draws of a budget: collapsed."""
FLAT_KL = 0.05
"""Nats gained over the initial policy's KL. Initial policies are 0.005-0.06 nats from masked
uniform (digits, autoformer-t); learning on an informative reward adds 0.1-1 nats (docs/sampler.md)."""


def diagnose(fs: ArchSampler, draws: int = DRAWS, seed: int = 0) -> dict[str, Any] | None:
    """``{"draws", "reward_model", "budgets": [per-budget dict], "estimator_tau", "estimator_trusted",
    "estimator_weight", "trained_range"}``; ``None`` for a sampler without a policy (uniform, sandwich)."""
    if not isinstance(fs, FocusSampler):
        return None
    rng = random.Random(f"{seed}:diagnostics")
    initial = fs.initial()
    rows = []
    for b in fs.budgets:
        d = fs.draw([b] * draws, rng=rng)
        ratio = statistics.quantiles((fs.costs.costs(d.e, d.d, d.h, d.r) / b).tolist(), n=10, method="inclusive")
        rows.append({"budget": b, "kl_uniform": _kl(d), "entropy": d.entropy.mean().item(), "cost_p10": ratio[0],
                     "cost_median": ratio[4], "cost_p90": ratio[8], "distinct": len(set(d.keys()[:DISTINCT_OF])),
                     "kl_initial": _kl(initial.draw([b] * draws, rng=rng))})
    has = fs.estimator is not None
    return {"draws": draws, "reward_model": fs.reward_model, "budgets": rows, "estimator_tau": fs.estimator_tau(),
            "estimator_trusted": fs.estimator_trusted() if has else None,
            "estimator_weight": fs.estimator_weight() if has else None, "trained_range": list(fs.trained_range())}


def uniform_in_budget(space: SearchSpace, cost_fn: CostFn, budgets: Sequence[float], draws: int = DRAWS,
                      seed: int = 0) -> list[dict[str, float]]:
    """The reference for the cost quantiles: cost / budget p10, median, p90 of uniform in-budget draws."""
    rng, rows = random.Random(f"{seed}:uniform-in-budget"), []
    for b in budgets:
        ratio = statistics.quantiles([cost_fn(a) / b for a in uniform_proposals(space, cost_fn, b, draws, rng)],
                                     n=10, method="inclusive")
        rows.append({"budget": b, "cost_p10": ratio[0], "cost_median": ratio[4], "cost_p90": ratio[8]})
    return rows


def _kl(d: Draws) -> float:
    """Mean of ``Σ_t (log n_allowed_t - H_t)`` over draws: KL(π ‖ masked uniform), nats."""
    return max(d.kl.mean().item(), 0.0)


def flat_warning(diag: dict[str, Any]) -> str | None:
    """One line when the reward gave the policy nothing to learn from, else None.

    Either no budget's KL to masked uniform grew by :data:`FLAT_KL` over the initial policy's,
    or (with a reward estimator) the estimator ranks held-out real scores no better than
    chance, so whatever the policy moved came from noise (not said before it has 10 of them).
    """
    gain = max(r["kl_uniform"] - r["kl_initial"] for r in diag["budgets"])
    tau = diag["estimator_tau"]
    if gain < FLAT_KL:
        unmoved = (f"warning: the sampler's policy has not moved from masked uniform sampling (its KL to it grew by "
                   f"{gain:+.3f} < {FLAT_KL} nats at every budget), so focus draws like uniform in-budget sampling: ")
        if diag["estimator_trusted"]:
            return unmoved + (f"the reward does rank archs (the estimator's Kendall τ {tau:.2f}) but the policy has "
                              "not learned from it yet; train longer after --sampler-warmup")
        return unmoved + "the reward is flat on this data"
    if diag["estimator_trusted"] is False and tau is not None:
        return (f"warning: the reward estimator ranks held-out real scores no better than chance (Kendall τ {tau:.2f}): "
                "the reward is flat on this data within the val batch's noise, so the policy's moves away from "
                "uniform come from noise")
    return None


def collapse_warning(diag: dict[str, Any], metric: str) -> str | None:
    """One line naming the budgets whose first :data:`DISTINCT_OF` draws hold fewer than
    :data:`COLLAPSED` distinct archs, else None (older diagnostics without the count: None)."""
    low = [r for r in diag["budgets"] if r.get("distinct", COLLAPSED) < COLLAPSED]
    if not low:
        return None
    where = ", ".join(f"{fmt_cost(r['budget'], metric)} ({r['distinct']})" for r in low)
    return (f"warning: the sampler's draws collapsed at budget(s) {where}: fewer than {COLLAPSED} distinct archs "
            f"in {DISTINCT_OF} draws. search still scores distinct proposals, but they come from the tail of the "
            "policy; compare with --method evolution or random")


def format_diagnostics(diag: dict[str, Any], metric: str) -> str:
    """A small table, one line per budget, then the estimator's τ and the flat-policy warning if any."""
    lines = [f"sampler diagnostics ({diag['draws']} draws per budget, reward model {diag['reward_model']}):",
             f"  budget   KL(π‖uniform)  (at init)  entropy  distinct in {DISTINCT_OF}  cost/budget p10 / median / p90"]
    for r in diag["budgets"]:
        distinct = str(r["distinct"]) if "distinct" in r else "-"
        lines.append(f"  {fmt_cost(r['budget'], metric):>7}  {r['kl_uniform']:13.3f}  {r['kl_initial']:9.3f}  "
                     f"{r['entropy']:7.2f}  {distinct:>14}  "
                     f"{r['cost_p10']:.2f} / {r['cost_median']:.2f} / {r['cost_p90']:.2f}")
    tau = diag["estimator_tau"]
    if diag["reward_model"] == "estimator":
        weight = diag.get("estimator_weight")
        lines.append("  reward estimator: " + ("no rank correlation yet (fewer than 10 archs scored for the "
                                               "first time, or all equal)" if tau is None
                                               else f"Kendall τ {tau:.2f} on archs scored for the first time")
                     + ("" if weight is None else f", weight on the policy {weight:.2f}"))
    if "trained_range" in diag:
        lo, hi = diag["trained_range"]
        lines.append(f"  trained for budgets {fmt_cost(lo, metric)} to {fmt_cost(hi, metric)}")
    for warn in (flat_warning(diag), collapse_warning(diag, metric)):
        if warn:
            lines.append(warn)
    return "\n".join(lines)
