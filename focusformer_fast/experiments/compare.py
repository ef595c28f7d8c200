"""``python -m focusformer_fast.experiments.compare``: focus vs uniform vs sandwich at equal budget.

Every sampler trains the same number of steps on the same data with the same seeds (one arch,
one batch per step). Then each supernet is searched with every method of ``--methods``
(:mod:`focusformer_fast.nas.search_methods`: the policy's proposals, AutoFormer's evolution, random
search; a sampler without a policy proposes uniform in-budget archs, which is random search, so
it skips ``policy``), each budget on its own with ``--specialize-n`` distinct evaluations on the
val split, at the grid budgets it trained on and, with ``--off-grid``, the budgets between them
and one below them. The chosen arch is reported with its test accuracy, and the focus sampler's
diagnostics beside it. Supernet ranking: Kendall τ between inherited and stand-alone (trained from
scratch) test accuracy on a fixed sample of subnets.

Writes ``<output>.md`` (tables), ``<output>.png`` (Pareto fronts) and ``<output>_raw.json``
(:mod:`.compare_report`).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from focusformer_fast.experiments.compare_report import write_outputs
from focusformer_fast.experiments.raw_results import read_raw
from focusformer_fast.experiments.standalone import train_standalone
from focusformer_fast.nas.costs import CostFn
from focusformer_fast.nas.evaluate import accuracy
from focusformer_fast.nas.sampler.diagnostics import diagnose, uniform_in_budget
from focusformer_fast.nas.sampler.options import SAMPLERS
from focusformer_fast.nas.search_methods import METHODS
from focusformer_fast.nas.specialize import INITS, specialization_table
from focusformer_fast.space import Arch, SearchSpace
from focusformer_fast.train import run
from focusformer_fast.training.config import TrainConfig, coerce_field
from focusformer_fast.utils.cli import Parser, UsageError, run_cli
from focusformer_fast.utils.version import versions


@dataclasses.dataclass
class CompareConfig:
    """What to compare and how long to train (digits-sized defaults: ~30-40 min on 2 CPU cores)."""

    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    variants: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=lambda: {name: {"sampler": name} for name in SAMPLERS})
    """label -> TrainConfig fields (e.g. ``{"sampler": "focus", "sampler_lr": 3e-4}``)."""
    space: str = "digits"
    data: str = "digits"
    steps: int = 2000
    specialize_n: int = 50
    """Distinct in-budget archs each search scores per budget."""
    methods: list[str] = dataclasses.field(default_factory=lambda: list(METHODS))
    init: str = "random"
    """Evolution's first population: random in-budget archs or the policy's proposals."""
    off_grid: bool = True
    """Also search the budgets between the grid's and one below it."""
    tau_subnets: int = 12
    standalone_steps: int = 600
    output: str = "docs/comparison"
    work: str = "runs/compare"
    threads: int = 1


def tau_sample(space: SearchSpace, n: int, seed: int = 1234) -> list[Arch]:
    """``n`` distinct uniform archs (fixed seed: the same sample for every sampler and seed)."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        a = space.sample(rng)
        if a not in out:
            out.append(a)
    return out


def search_budgets(space: SearchSpace, cost_fn: CostFn, grid: Sequence[float], off_grid: bool) -> list[float]:
    """The grid and, if ``off_grid``, the midpoint of each pair of neighbours and the midpoint between the
    smallest arch's cost and the lowest grid budget, ascending."""
    grid = sorted(grid)
    if not off_grid:
        return grid
    lo = float(cost_fn(space.smallest()))
    between = [(a + b) / 2 for a, b in zip([lo, *grid], grid)]
    return sorted({*grid, *between})


def _searches(cfg: CompareConfig, res: Any, budgets: Sequence[float], loaders: Any, device: torch.device,
              seed: int) -> list[tuple[str, list[dict[str, Any]], float]]:
    """Every method of ``cfg.methods`` that differs for this sampler: (method, rows, seconds)."""
    out = []
    for method in cfg.methods:
        if method == "policy" and res.sampler.proposer != "policy":
            continue
        t = time.perf_counter()
        rows = specialization_table(res.net, res.sampler, res.net.space.flops, budgets, loaders.val, loaders.test,
                                    device, n=cfg.specialize_n, seed=seed, method=method, init=cfg.init, timed=True)
        keep = ("budget", "arch", "cost", "val_acc", "test_acc", "evaluations", "method", "seconds", "below_smaller")
        out.append((method, [{k: r[k] for k in keep if k in r} for r in rows], time.perf_counter() - t))
    return out


def compare(cfg: CompareConfig) -> dict[str, Any]:
    """Train every (sampler, seed), specialize, measure τ; returns the raw results."""
    from scipy.stats import kendalltau

    from focusformer_fast.data.datasets import load_dataset
    from focusformer_fast.data.loaders import make_loaders

    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    space = SearchSpace.preset(cfg.space)
    subnets = tau_sample(space, cfg.tau_subnets)
    raw: dict[str, Any] = {"config": dataclasses.asdict(cfg), "tau_subnets": [a.to_dict() for a in subnets],
                           "runs": [], "standalone": []}
    device = torch.device("cpu")
    for seed in cfg.seeds:
        splits = load_dataset(cfg.data, seed=seed, augment=None)
        loaders = make_loaders(splits, 512, seed=seed)
        for a in subnets:
            t = time.perf_counter()
            accs = train_standalone(space, a, splits, steps=cfg.standalone_steps, seed=seed)
            raw["standalone"].append({"seed": seed, "arch": a.to_dict(), **accs, "seconds": time.perf_counter() - t})
            print(f"stand-alone seed {seed} {a}: test {accs['test_acc']:.3f}", flush=True)
        standalone = [r["test_acc"] for r in raw["standalone"] if r["seed"] == seed]
        for label, overrides in cfg.variants.items():
            t = time.perf_counter()
            res = run(TrainConfig(**{**dict(seed=seed, steps=cfg.steps, space=cfg.space, data=cfg.data,
                                            specialize_n=cfg.specialize_n, progress=False, checkpoint_every=cfg.steps,
                                            output=str(Path(cfg.work) / f"{label}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}")),
                                     **overrides}))
            seconds = time.perf_counter() - t
            budgets = search_budgets(space, res.net.space.flops, res.config.budgets, cfg.off_grid)
            inherited = [accuracy(res.net, a, loaders.test, device) for a in subnets]
            tau, p = kendalltau(inherited, standalone)
            for k, (method, rows, search_seconds) in enumerate(_searches(cfg, res, budgets, loaders, device, seed)):
                entry = {"variant": label, "sampler": res.config.sampler, "seed": seed, "method": method,
                         "search": rows[0]["method"], "proposer": res.sampler.proposer,
                         "grid": list(res.config.budgets),
                         "rows": rows, "seconds": seconds, "search_seconds": search_seconds}
                if k == 0:
                    entry.update(train_config=dataclasses.asdict(res.config), diagnostics=diagnose(res.sampler),
                                 inherited=inherited, tau=float(tau), tau_p=float(p))
                else:
                    entry["ablation"] = True  # the same supernet, searched another way
                raw["runs"].append(entry)
                print(f"{label} seed {seed} {method}: tau {tau:.3f}, best test "
                      f"{[round(r['test_acc'], 3) for r in rows]}", flush=True)
    raw["uniform_in_budget"] = uniform_in_budget(space, space.flops, [r["budget"] for r in raw["runs"][0]["rows"]])
    raw["seconds"] = time.perf_counter() - t0
    raw["versions"] = versions(device)
    return raw


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Raw results of comparisons run separately (e.g. one process per seed) as one.

    They must agree on everything but the seeds; ``seconds`` becomes the longest part's (the
    parts ran side by side).
    """
    first = parts[0]
    same = {k: v for k, v in first["config"].items() if k not in ("seeds", "output", "work")}
    raw = {**first, "config": {**first["config"], "seeds": []}, "runs": [], "standalone": [],
           "seconds": max(p["seconds"] for p in parts)}
    for part in parts:
        other = {k: v for k, v in part["config"].items() if k not in ("seeds", "output", "work")}
        if other != same or part["tau_subnets"] != first["tau_subnets"]:
            raise UsageError("raw results to merge differ in more than their seeds")
        raw["config"]["seeds"] += part["config"]["seeds"]
        raw["runs"] += part["runs"]
        raw["standalone"] += part["standalone"]
    return raw


def _ints(v: str) -> list[int]:
    try:
        return [int(x) for x in v.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a comma-separated list of integers") from None


def _parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``label:field=value,...`` -> (label, TrainConfig overrides), values converted to the fields' types."""
    label, _, body = spec.partition(":")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides: dict[str, Any] = {}
    for item in (x for x in body.split(",") if x):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in fields:
            raise UsageError(f"variant {spec!r}: {item!r} must be FIELD=VALUE with FIELD a TrainConfig field")
        overrides[key] = coerce_field(key, value.strip())
    if not label or overrides.get("sampler") not in SAMPLERS:
        raise UsageError(f"variant {spec!r} needs a label and sampler=one of {', '.join(SAMPLERS)}")
    return label, overrides


def _compare(argv: Sequence[str] | None) -> None:
    p = Parser(prog="python -m focusformer_fast.experiments.compare", description=__doc__.splitlines()[0])
    d = CompareConfig()
    p.add_argument("--seeds", type=_ints, default=d.seeds, help="comma-separated (default 0,1,2)")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="baseline variants, one per sampler")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:FIELD=VALUE,...",
                   help="extra run, e.g. focus-lr3e-4:sampler=focus,sampler_lr=3e-4 (TrainConfig fields)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"supernet steps per run (default {d.steps})")
    p.add_argument("--specialize-n", type=int, default=d.specialize_n,
                   help=f"distinct in-budget archs scored per budget by each search (default {d.specialize_n})")
    p.add_argument("--methods", default=",".join(d.methods),
                   help=f"search methods run on every supernet, comma-separated from {', '.join(METHODS)} "
                        f"(default {','.join(d.methods)})")
    p.add_argument("--init", choices=INITS, default=d.init,
                   help=f"evolution's first population: random, or the policy's proposals (default {d.init})")
    p.add_argument("--off-grid", action=argparse.BooleanOptionalAction, default=d.off_grid,
                   help="also search the budgets between the grid's and one below it (default on)")
    p.add_argument("--tau-subnets", type=int, default=d.tau_subnets)
    p.add_argument("--standalone-steps", type=int, default=d.standalone_steps)
    p.add_argument("--output", default=d.output, help="path prefix of the .md/.png/_raw.json outputs")
    p.add_argument("--work", default=d.work, help="directory for the training runs")
    p.add_argument("--threads", type=int, default=d.threads, help="torch intra-op threads (default 1)")
    p.add_argument("--report-only", metavar="RAW_JSON", nargs="+",
                   help="rewrite .md and .png from raw JSON files (several: runs of other seeds, merged)")
    p.add_argument("--notes", metavar="FILE", help="markdown appended under 'Notes' (kept in the raw JSON)")
    a = p.parse_args(argv)
    if a.report_only:
        raw = merge(read_raw(a.report_only))
    else:
        variants = {}
        for s in (s for s in a.samplers.split(",") if s):
            if s not in SAMPLERS:
                raise UsageError(f"sampler {s!r} is unknown; allowed: {', '.join(SAMPLERS)}")
            variants[s] = {"sampler": s}
        variants.update(_parse_variant(v) for v in a.variant)
        methods = [m for m in a.methods.split(",") if m]
        if not methods or any(m not in METHODS for m in methods):
            raise UsageError(f"--methods {a.methods!r} must list some of {', '.join(METHODS)}")
        for name in ("steps", "specialize_n", "tau_subnets", "standalone_steps", "threads"):
            if getattr(a, name) <= 0:
                raise UsageError(f"{name}={getattr(a, name)} must be > 0")
        if a.tau_subnets < 10 or not a.seeds:
            raise UsageError(f"need >= 10 tau subnets (got {a.tau_subnets}) and >= 1 seed")
        raw = compare(CompareConfig(seeds=a.seeds, variants=variants, steps=a.steps, specialize_n=a.specialize_n,
                                    methods=methods, init=a.init, off_grid=a.off_grid,
                                    tau_subnets=a.tau_subnets, standalone_steps=a.standalone_steps,
                                    output=a.output, work=a.work, threads=a.threads))
    if a.notes:
        try:
            raw["notes"] = Path(a.notes).read_text()
        except OSError as exc:
            raise UsageError(f"notes file {a.notes!r} is unreadable: {exc}") from None
    for f in write_outputs(raw, a.output):
        print(f"wrote {f}")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes."""
    return run_cli(lambda: _compare(argv))


if __name__ == "__main__":
    sys.exit(main())
