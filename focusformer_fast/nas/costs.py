"""Costs of subnets and the budgets they are held to.

A cost function ``cost(arch) -> float`` gives FLOPs (multiply-accumulates, the papers'
convention) or parameters from the space's analytic counters, or milliseconds from a measured
latency table (read here, never measured: :mod:`focusformer_fast.nas.latency.table`). Budgets are
in the same units.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from focusformer_fast.space import Arch, SearchSpace

CostFn = Callable[[Arch], float]
METRICS = ("flops", "params", "latency")
_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


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
    from focusformer_fast.nas.latency.table import LatencyModel

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


def parse_budget(v: Any) -> float:
    """A budget from a number or a string like ``1.5e6``, ``300k``, ``1.2M``, ``0.9G``.

    Raises ``ValueError`` naming the value and the allowed forms.
    """
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    m = re.fullmatch(r"\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*([kmgtKMGT]?)\s*", str(v))
    try:
        if m:
            return float(m.group(1)) * _SUFFIX.get(m.group(2).lower(), 1.0)
    except ValueError:
        pass
    raise ValueError(f"budget {v!r} is not a number; allowed: e.g. 1.2e6, 300k, 1.2M, 0.9G")


def parse_budgets(v: Any) -> list[float]:
    """Budgets from a list or a comma-separated string (see :func:`parse_budget`)."""
    items = v if isinstance(v, (list, tuple)) else [s for s in str(v).split(",") if s.strip()]
    return [parse_budget(x) for x in items]


def fmt_cost(x: float, metric: str) -> str:
    """A cost for people: ``1.2ms`` for latency, else ``1.23G`` / ``456M`` / ``7.8k``."""
    if metric == "latency":
        return f"{x:.3g}ms"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"
