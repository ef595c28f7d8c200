"""Validating a latency table: measure seeded random subnets whole and score the prediction.

The table's prediction and FLOPs (through their best linear fit) are compared with the measured
latency: MAPE, max error, Spearman and Kendall rank correlations.
"""

from __future__ import annotations

import random
import statistics
from typing import Any, Sequence

import numpy as np
import torch

from focusformer_fast.nas.latency.build import (DTYPES, make_supernet, progress_bar, random_images, subnet_forward,
                                                time_forward)
from focusformer_fast.nas.latency.device import resolve_device
from focusformer_fast.nas.latency.table import LatencyModel, LatencyTable
from focusformer_fast.nas.latency.timing import Timing, TimingConfig
from focusformer_fast.space import Arch, SearchSpace


def predictor_stats(predicted: Sequence[float], measured: Sequence[float],
                    ranked_by: Sequence[float] | None = None) -> dict[str, float]:
    """MAPE and max absolute percentage error of ``predicted`` vs ``measured`` (fractions), and
    Spearman/Kendall of ``ranked_by`` (default ``predicted``) with ``measured``."""
    import scipy.stats  # half a second to import: only where a table is validated
    ape = [abs(p - m) / m for p, m in zip(predicted, measured)]
    ranked = predicted if ranked_by is None else ranked_by
    return {"mape": statistics.fmean(ape), "max_ape": max(ape),
            "spearman": float(scipy.stats.spearmanr(ranked, measured).statistic),
            "kendall": float(scipy.stats.kendalltau(ranked, measured).statistic)}


def validation_archs(space: SearchSpace, n: int, seed: int) -> list[Arch]:
    """``n`` random archs drawn with ``random.Random(seed)`` (the same list on every machine)."""
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


def validate(table: LatencyTable, n: int, *, seed: int = 1, device: torch.device | str = "auto",
             timing: TimingConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Measure ``n`` seeded random subnets whole and score the table's prediction and FLOPs.

    Subnets run the way the table's pieces ran (its dtype, backend and graph setting) and are
    summarized by the table's statistic (median unless the table was built with ``p10``).
    Returns ``{"n", "seed", "batches": {batch: {"lut": stats, "flops": stats, "flops_fit",
    "measured_ms", "rows"}}}`` where stats are :func:`predictor_stats` (FLOPs: MAPE of the best
    linear fit, ranks of raw FLOPs).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"validate n={n!r} must be an int >= 2 (rank correlations need two subnets)")
    device = resolve_device(device) if isinstance(device, str) else device
    if device.type != table.env["device_type"]:
        raise ValueError(f"the table was built on {table.env['device_type']}; "
                         f"it cannot be validated on {device.type}")
    timing = timing or TimingConfig.for_device(device)
    space, archs = table.space, validation_archs(table.space, n, seed)
    dtype = DTYPES[table.dtype]
    net = make_supernet(space, device, dtype)
    sizes = sorted(table.batches)
    images = {b: random_images(space, b, device, dtype) for b in sizes}
    measured: dict[int, list[Timing]] = {b: [] for b in sizes}
    with progress_bar(n * len(sizes), f"validate {space.name}", progress) as bar:
        for arch in archs:
            forward = subnet_forward(net, arch, table.backend)
            for b in sizes:
                measured[b].append(time_forward(forward, images[b], graph=table.graph, timing=timing))
                bar.update(1)
    flops = [float(space.flops(a)) for a in archs]
    stat = table.timing.get("statistic", "median")
    batches = {str(b): _batch_report(LatencyModel(table, b), archs, flops, [t.stat(stat) for t in measured[b]],
                                     measured[b]) for b in sizes}
    return {"n": n, "seed": seed, "device": table.env["device_name"], "batches": batches}


def _batch_report(model: LatencyModel, archs: list[Arch], flops: list[float], meas: list[float],
                  measured: list[Timing]) -> dict[str, Any]:
    pred = [model.cost(a) for a in archs]
    a, b = (float(v) for v in np.polyfit(flops, meas, 1))
    rows = [{"arch": arch.to_dict(), "flops": int(f), "predicted_ms": p, **t.to_dict()}
            for arch, f, p, t in zip(archs, flops, pred, measured)]
    return {
        "lut": predictor_stats(pred, meas),
        "flops": predictor_stats([a * f + b for f in flops], meas, ranked_by=flops),
        "flops_fit": {"ms_per_flop": a, "intercept_ms": b},
        "measured_ms": {"min": min(meas), "median": statistics.median(meas), "max": max(meas)},
        "rows": rows,
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One human-readable line per batch size of a :func:`validate` report."""
    lines = []
    for b, r in report["batches"].items():
        lut, fl, m = r["lut"], r["flops"], r["measured_ms"]
        lines.append(
            f"batch {b}: table MAPE {lut['mape']:.2%} max {lut['max_ape']:.2%} "
            f"Spearman {lut['spearman']:.3f} Kendall {lut['kendall']:.3f} | "
            f"FLOPs MAPE {fl['mape']:.2%} max {fl['max_ape']:.2%} Spearman {fl['spearman']:.3f} "
            f"Kendall {fl['kendall']:.3f} | measured {m['min']:.3f}-{m['max']:.3f} ms "
            f"(median {m['median']:.3f}) over {report['n']} subnets"
        )
    return lines

