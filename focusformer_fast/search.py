"""``python -m focusformer_fast.search RUN``: specialize a trained run to budgets, print, export.

Each budget is searched on its own with ``--evaluations N`` distinct in-budget archs scored on val
with the supernet's weights (:mod:`focusformer_fast.nas.specialize`): ``--method policy`` (default) takes
the run's sampler's proposals (its trained policy, or uniform in-budget archs for runs trained
without one), ``--method evolution`` runs AutoFormer's evolution (``--init policy`` seeds it with the
policy's proposals), ``--method random`` random search. The best per budget is printed with its
cost (and, with ``--test``, its test accuracy, never used to choose); ``--export`` writes each chosen
subnet as a standalone model::

    python -m focusformer_fast.search runs/my-run --budget 1.2G --budget 2G --test --export subnets/
    python -m focusformer_fast.search runs/my-run --budget 1.2G --method evolution --evaluations 200
    python -m focusformer_fast.search runs/lat-run --budget 0.8 --latency-table latency_this_gpu.json

User mistakes print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from focusformer_fast import ops
from focusformer_fast.data.options import LoaderOptions
from focusformer_fast.models import export
from focusformer_fast.nas.costs import check_budgets, fmt_cost, parse_budget
from focusformer_fast.nas.sampler.diagnostics import diagnose, format_diagnostics
from focusformer_fast.nas.search_methods import METHODS
from focusformer_fast.nas.specialize import INITS, format_table, specialization_table, warn_outside_trained_range
from focusformer_fast.nas.specialize_report import write_report
from focusformer_fast.space import Arch
from focusformer_fast.training.runs import load_run, warn_budgets_above
from focusformer_fast.utils.atomic_files import write_json_atomic
from focusformer_fast.utils.cli import Parser, UsageError, add_version, run_cli, state_defaults
from focusformer_fast.utils.version import versions

PROG = "python -m focusformer_fast.search"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG, description="Specialize a trained supernet to budgets: each budget is searched on its own (the "
                               "trained sampler's proposals, evolution or random search), the supernet's weights "
                               "score the archs on val, the best per budget is reported and exported.")
    p.add_argument("run", help="a run directory written by python -m focusformer_fast.train, or its checkpoint.pt")
    p.add_argument("--budget", action="append",
                   help="a budget in the run's metric (FLOPs/params: 1.2G, 800M; latency: ms); repeatable or "
                        "comma-separated (default: the run's training budgets)")
    p.add_argument("--method", choices=METHODS, default="policy",
                   help="how each budget is searched: policy (the run's sampler proposes), evolution (AutoFormer's), "
                        "random (default policy)")
    p.add_argument("--init", choices=INITS,
                   help="--method evolution: its first population, random in-budget archs (AutoFormer's) or the "
                        "sampler's proposals (policy) (default random)")
    p.add_argument("--evaluations", "-n", "--proposals", type=int, default=50, dest="evaluations",
                   help="distinct in-budget archs scored on val per budget (-n and --proposals are older names of "
                        "this flag) (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of each budget's search stream (default 0)")
    p.add_argument("--test", action="store_true", help="also report the chosen archs' test accuracy (never used to choose)")
    p.add_argument("--front", action="store_true", help="print each budget's Pareto front of cost vs val accuracy")
    p.add_argument("--export", metavar="DIR",
                   help="write each chosen subnet as a timm model (model.safetensors + config.json, docs/export.md) in "
                        "DIR/budget-<budget>/; DIR must be new or empty unless --overwrite")
    p.add_argument("--data", help="the run's dataset at a new place, if it was moved (default: the path in the run)")
    p.add_argument("--overwrite", action="store_true",
                   help="let --export write into a non-empty directory, replacing the models there (default off)")
    p.add_argument("--latency-table", help="latency runs: a table measured on this machine (default: the run's)")
    p.add_argument("--output", metavar="FILE", help="write the results, seed, config and versions as JSON")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--backend", default="auto", help="ops backend: auto, torch, cpp, triton, cuda")
    add_version(p)
    return state_defaults(p)


def _budgets(values: Sequence[str] | None, default: Sequence[float]) -> list[float]:
    if not values:
        return list(default)
    try:
        return [parse_budget(v) for item in values for v in item.split(",") if v.strip()]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _export_dir(root: str, budget: float, metric: str) -> Path:
    """Where the subnet chosen for ``budget`` is exported: ``DIR/budget-<budget>``, for one budget or many."""
    return Path(root) / f"budget-{fmt_cost(budget, metric)}"


def _check_export(root: str | None, overwrite: bool) -> None:
    if root is None:
        return
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--export {root!r} is a file; give a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UsageError(f"--export {root!r} is not empty; give another directory, or --overwrite to replace "
                         f"the models in it")


def run_search(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The CLI's work: load the run, specialize, print, export, write JSON. Returns the rows."""
    from focusformer_fast.data.loaders import make_loaders

    for name in ("evaluations", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.init is not None and args.method != "evolution":
        raise UsageError(f"--init {args.init} applies to --method evolution only (got --method {args.method})")
    init = args.init or "random"
    _check_export(args.export, args.overwrite)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(ops.set_backend(args.backend))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        trained = load_run(args.run, device=args.device, latency_table=args.latency_table, data=args.data)
        cfg = trained.config
        if trained.device.type == "cpu" and cfg.threads:  # the run's threads: 1 for digits, as train chose
            import torch

            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(cfg.threads)
        try:
            budgets = check_budgets(trained.space, trained.cost_fn, _budgets(args.budget, cfg.budgets))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        warn_budgets_above(trained.space, trained.cost_fn, budgets, cfg.budget_metric)
        if args.method == "policy" or init == "policy":
            warn_outside_trained_range(trained.sampler, budgets, cfg.budget_metric)
        loaders = make_loaders(trained.splits, args.batch_size, seed=cfg.seed, device=trained.device,
                               options=LoaderOptions.of(cfg))
        start = time.perf_counter()
        rows = specialization_table(trained.net, trained.sampler, trained.cost_fn, budgets,
                                    loaders.val,
                                    loaders.test if args.test else None, trained.device,
                                    n=args.evaluations, seed=args.seed, method=args.method, init=init, timed=True)
        seconds = time.perf_counter() - start
    metric = cfg.budget_metric
    print(format_table(rows, metric))
    print(f"specialized {len(rows)} budget(s) in {seconds:.1f} s ({args.evaluations} distinct evaluations asked "
          f"per budget, {rows[0]['method']}, step {trained.step} of {trained.checkpoint})")
    diag = diagnose(trained.sampler)
    if diag is not None:
        print(format_diagnostics(diag, metric))
    if args.front:
        for r in rows:
            print(f"front at {fmt_cost(r['budget'], metric)}: " + (", ".join(
                f"{fmt_cost(c['cost'], metric)} {100 * c['val_acc']:.1f}%" for c in r.get("front", [])) or "(none)"))
    for r in rows:
        if args.export and "arch" in r:
            arch = Arch.from_dict(r["arch"])
            model = trained.net.extract(arch)
            extra = {k: r[k] for k in ("budget", "cost", "val_acc", "test_acc", "method", "evaluations") if k in r}
            out = export.save(model, _export_dir(args.export, r["budget"], metric),
                              extra={**extra, "metric": metric, "run": str(trained.checkpoint), "step": trained.step,
                                     "seed": args.seed},
                              space=trained.space, data=trained.splits)
            r["export"] = str(out)
            print(f"exported {r['arch_str']} to {out}")
    if args.output:
        write_json_atomic(args.output, {
            "run": str(trained.checkpoint), "step": trained.step, "metric": metric, "sampler": cfg.sampler,
            "seed": args.seed, "method": args.method, "init": init, "evaluations": args.evaluations,
            "seconds": seconds, "rows": rows,
            "versions": versions(trained.device),
            "argv": sys.argv,
        })
        for path in write_report(rows, metric, args.output, title=f"search of {trained.checkpoint.parent.name}"):
            print(f"wrote {path}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes."""
    return run_cli(lambda: run_search(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
