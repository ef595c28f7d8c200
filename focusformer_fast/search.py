"""Search with a trained supernet: score subnets with inherited weights, specialize a budget.

Specialization (METHOD.md §5): for a target budget, draw candidate archs (from the trained
sampler π(·|c), or uniformly from the in-budget part of the space for supernets trained
without one), drop infeasible ones, score each on the validation split with the supernet's
weights, and return the best and the Pareto front. Selection never looks at the test split.

``python -m focusformer_fast.search RUN`` does it for a finished training run, for new budgets,
and exports each chosen subnet as a standalone model::

    python -m focusformer_fast.search runs/my-run --budget 1.2G --budget 2G --test --export subnets/
    python -m focusformer_fast.search runs/lat-run --budget 0.8 --latency-table latency_this_gpu.json

User mistakes print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .sampler import CostFn, FocusSampler
from .space import Arch, SearchSpace

Batches = Iterable[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Candidate:
    """One scored subnet: ``cost`` in the budget's units, ``accuracy`` in [0, 1] on val."""

    arch: Arch
    cost: float
    accuracy: float


@dataclass(frozen=True)
class Specialization:
    """Outcome of :func:`specialize` for one budget.

    ``best`` is None when no candidate fits. ``draws`` counts the archs drawn (duplicates
    included); ``candidates`` are the distinct in-budget ones that were scored.
    """

    budget: float
    best: Candidate | None
    candidates: tuple[Candidate, ...]
    front: tuple[Candidate, ...]
    draws: int


@torch.no_grad()
def evaluate(net: nn.Module, arch: Arch, batches: Batches, device: torch.device) -> tuple[int, float, int]:
    """(correct top-1 predictions, summed cross-entropy in nats, samples) of ``arch`` over ``batches``.

    Runs ``net`` in eval mode (restoring its mode after), in bf16 autocast on CUDA.
    """
    was_training = net.training
    net.eval()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    correct, nll, total = 0, 0.0, 0
    try:
        for images, labels in batches:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with amp:
                logits = net(images, arch)
            correct += int((logits.argmax(dim=-1) == labels).sum())
            nll += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            total += labels.numel()
    finally:
        net.train(was_training)
    return correct, nll, total


def _reduced(net: nn.Module, arch: Arch, batches: Batches, device: torch.device, distributed: bool):
    correct, nll, total = evaluate(net, arch, batches, device)
    if distributed:
        sums = torch.tensor([correct, nll, total], dtype=torch.float64)
        dist.all_reduce(sums)
        correct, nll, total = int(sums[0]), float(sums[1]), int(sums[2])
    if total == 0:
        raise ValueError("cannot score a subnet on an empty split")
    return correct, nll, total


def accuracy(net: nn.Module, arch: Arch, batches: Batches, device: torch.device, *, distributed: bool = False) -> float:
    """Top-1 accuracy in [0, 1] of ``arch`` on ``batches``; summed over ranks when ``distributed``."""
    correct, _, total = _reduced(net, arch, batches, device, distributed)
    return correct / total


def likelihood(net: nn.Module, arch: Arch, batches: Batches, device: torch.device, *,
               distributed: bool = False) -> float:
    """``exp(-mean cross-entropy)`` in (0, 1]: the geometric mean of p(true class); a smooth accuracy."""
    _, nll, total = _reduced(net, arch, batches, device, distributed)
    return math.exp(-nll / total)


def pareto_front(candidates: Iterable[Candidate]) -> tuple[Candidate, ...]:
    """Candidates no other beats on both cost (lower) and accuracy (higher), by ascending cost."""
    front: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (c.cost, -c.accuracy)):
        if not front or c.accuracy > front[-1].accuracy:
            front.append(c)
    return tuple(front)


def policy_proposals(sampler: FocusSampler, budget: float, n: int, seed: int = 0) -> list[Arch]:
    """``n`` draws from the trained policy π(·|budget), from a private stream seeded by ``seed``."""
    return [r.arch for r in sampler.sample_many([budget] * n, rng=random.Random(seed))]


def random_proposals(space: SearchSpace, cost_fn: CostFn, budget: float, n: int, seed: int = 0) -> list[Arch]:
    """``n`` uniform archs that fit ``budget`` (rejection sampling; up to ``1000 * n`` tries)."""
    rng, out = random.Random(seed), []
    for _ in range(1000 * n):
        a = space.sample(rng)
        if cost_fn(a) <= budget:
            out.append(a)
            if len(out) == n:
                break
    return out


def specialize(
    budget: float, proposals: Sequence[Arch], cost_fn: CostFn, evaluate: Callable[[Arch], float]
) -> Specialization:
    """Score the distinct in-budget ``proposals`` with ``evaluate`` (val accuracy) and keep the best.

    Ties in accuracy go to the cheaper arch, then to the earlier proposal.
    """
    seen: dict[Arch, None] = {}
    for a in proposals:
        seen.setdefault(a)
    scored = []
    for a in seen:
        cost = float(cost_fn(a))
        if cost <= budget:
            scored.append(Candidate(a, cost, float(evaluate(a))))
    best = max(scored, key=lambda c: (c.accuracy, -c.cost), default=None)
    return Specialization(budget, best, tuple(scored), pareto_front(scored), len(proposals))


def specialization_table(net: nn.Module, sampler: object, space: SearchSpace, cost_fn: CostFn,
                         budgets: Sequence[float], val: Batches, test: Batches | None, device: torch.device, *,
                         n: int, seed: int, distributed: bool = False) -> list[dict[str, Any]]:
    """Specialize each budget: ``n`` proposals (the trained policy's when ``sampler`` is a
    :class:`FocusSampler`, else uniform in-budget archs), the best on ``val``, its ``test`` accuracy.

    One JSON-ready row per budget: ``budget``, ``proposer``, ``draws``, ``scored`` and, when an
    arch fits, ``arch`` (dict), ``arch_str``, ``cost``, ``val_acc``, ``test_acc`` (if ``test``) and
    the val Pareto ``front``. Budget ``i`` draws from a stream seeded by ``seed + i``.
    """
    rows = []
    for i, budget in enumerate(budgets):
        if isinstance(sampler, FocusSampler):
            proposer, proposals = "policy", policy_proposals(sampler, budget, n, seed=seed + i)
        else:
            proposer, proposals = "random", random_proposals(space, cost_fn, budget, n, seed=seed + i)
        res = specialize(budget, proposals, cost_fn, lambda a: accuracy(net, a, val, device, distributed=distributed))
        row: dict[str, Any] = {"budget": budget, "proposer": proposer, "draws": res.draws, "scored": len(res.candidates)}
        if res.best is not None:
            row.update(arch=res.best.arch.to_dict(), arch_str=str(res.best.arch), cost=res.best.cost,
                       val_acc=res.best.accuracy)
            if test is not None:
                row["test_acc"] = accuracy(net, res.best.arch, test, device, distributed=distributed)
            row["front"] = [{"arch": c.arch.to_dict(), "cost": c.cost, "val_acc": c.accuracy} for c in res.front]
        rows.append(row)
    return rows


def fmt_cost(x: float, metric: str) -> str:
    """A cost for people: ``1.2ms`` for latency, else ``1.23G`` / ``456M`` / ``7.8k``."""
    if metric == "latency":
        return f"{x:.3g}ms"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def format_table(rows: Sequence[dict[str, Any]], metric: str) -> str:
    """Per budget the chosen arch, its cost, val and (when measured) test accuracy."""
    head = f"{'budget (' + metric + ')':>16}  {'best in-budget arch':<36} {'cost':>9} {'val acc':>8} {'test acc':>8}  scored/drawn"
    lines = [head, "-" * len(head)]
    for r in rows:
        b = fmt_cost(r["budget"], metric)
        if "arch" not in r:
            lines.append(f"{b:>16}  {'(no arch fits)':<36}")
            continue
        test = f"{100 * r['test_acc']:>7.1f}%" if "test_acc" in r else f"{'-':>8}"
        lines.append(f"{b:>16}  {r['arch_str']:<36} {fmt_cost(r['cost'], metric):>9} {100 * r['val_acc']:>7.1f}% "
                     f"{test}  {r['scored']}/{r['draws']} ({r['proposer']})")
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------
PROG = "python -m focusformer_fast.search"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Specialize a trained supernet to budgets: the trained sampler proposes archs, the "
                               "supernet's weights score them on val, the best per budget is reported and exported.")
    p.add_argument("run", help="a run directory written by python -m focusformer_fast.train, or its checkpoint.pt")
    p.add_argument("--budget", action="append",
                   help="a budget in the run's metric (FLOPs/params: 1.2G, 800M; latency: ms); repeatable or "
                        "comma-separated (default: the run's training budgets)")
    p.add_argument("-n", "--proposals", type=int, default=50, help="archs drawn per budget (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the proposal streams (default 0)")
    p.add_argument("--test", action="store_true", help="also report the chosen archs' test accuracy (never used to choose)")
    p.add_argument("--front", action="store_true", help="print each budget's Pareto front of cost vs val accuracy")
    p.add_argument("--export", metavar="DIR",
                   help="write each chosen subnet as a standalone model (safetensors + config.json) under DIR")
    p.add_argument("--latency-table", help="latency runs: a table measured on this machine (default: the run's)")
    p.add_argument("--output", metavar="FILE", help="write the results, seed, config and versions as JSON")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--backend", default="auto", help="ops backend: auto, torch, cpp, triton, cuda")
    return p


def _budgets(values: Sequence[str] | None, default: Sequence[float]) -> list[float]:
    from .train import parse_budget

    if not values:
        return list(default)
    return [parse_budget(v) for item in values for v in item.split(",") if v.strip()]


def _export_dir(root: str, budget: float, metric: str, many: bool) -> Path:
    return Path(root) / f"budget-{fmt_cost(budget, metric)}" if many else Path(root)


def run_search(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The CLI's work: load the run, specialize, print, export, write JSON. Returns the rows."""
    from . import export, ops
    from .atomic_files import write_json_atomic
    from .data import make_loaders
    from .sampler import check_budgets
    from .train import UsageError, load_run

    for name in ("proposals", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(ops.set_backend(args.backend))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        trained = load_run(args.run, device=args.device, latency_table=args.latency_table)
        cfg = trained.config
        try:
            budgets = check_budgets(trained.space, trained.cost_fn, _budgets(args.budget, cfg.budgets))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        loaders = make_loaders(trained.splits, args.batch_size, seed=cfg.seed)
        start = time.perf_counter()
        rows = specialization_table(trained.net, trained.sampler, trained.space, trained.cost_fn, budgets,
                                    loaders.val, loaders.test if args.test else None, trained.device,
                                    n=args.proposals, seed=args.seed)
        seconds = time.perf_counter() - start
    metric = cfg.budget_metric
    print(format_table(rows, metric))
    print(f"specialized {len(rows)} budget(s) in {seconds:.1f} s ({args.proposals} proposals each, "
          f"{'policy' if isinstance(trained.sampler, FocusSampler) else 'uniform in-budget'} proposals, "
          f"step {trained.step} of {trained.checkpoint})")
    if args.front:
        for r in rows:
            print(f"front at {fmt_cost(r['budget'], metric)}: " + (", ".join(
                f"{fmt_cost(c['cost'], metric)} {100 * c['val_acc']:.1f}%" for c in r.get("front", [])) or "(none)"))
    for r in rows:
        if args.export and "arch" in r:
            arch = Arch.from_dict(r["arch"])
            model = trained.net.extract(arch)
            extra = {k: r[k] for k in ("budget", "cost", "val_acc", "test_acc") if k in r}
            out = export.save(model, _export_dir(args.export, r["budget"], metric, len(rows) > 1),
                              extra={**extra, "metric": metric, "run": str(trained.checkpoint), "seed": args.seed})
            r["export"] = str(out)
            print(f"exported {r['arch_str']} to {out}")
    if args.output:
        write_json_atomic(args.output, {
            "run": str(trained.checkpoint), "step": trained.step, "metric": metric, "sampler": cfg.sampler,
            "seed": args.seed, "proposals": args.proposals, "seconds": seconds, "rows": rows,
            "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                         "device": str(trained.device)},
            "argv": sys.argv,
        })
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes."""
    from .train import run_cli

    args = build_parser().parse_args(argv)
    return run_cli(lambda: run_search(args))


if __name__ == "__main__":
    sys.exit(main())
