"""Inherited vs fine-tuned accuracy of a searched subnet on digits, over seeds.

For each seed: the default supernet training command, a search of one budget with export, then
fine-tuning of the exported subnet with and without distillation from the run (``--teacher``)::

    python -m focusformer_fast.train --seed S --output WORK/run-sS
    python -m focusformer_fast.search WORK/run-sS --budget 1.5M --test --seed S --export WORK/models-sS
    python -m focusformer_fast.finetune WORK/models-sS/budget-1.5M --data digits --seed S --output WORK/ft-sS
    python -m focusformer_fast.finetune WORK/models-sS/budget-1.5M --data digits --seed S --teacher WORK/run-sS \
        --output WORK/ftkd-sS

Writes ``OUTPUT.md`` (the table and these commands) and ``OUTPUT_raw.json`` (every number, with
the config, seeds, versions and device). A step whose output already exists is not rerun, so an
interrupted experiment continues where it stopped::

    python -m focusformer_fast.experiments.finetune_digits --seeds 0,1,2 --output docs/finetune_digits
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from focusformer_fast import finetune, search, train
from focusformer_fast.nas.costs import fmt_cost, parse_budget
from focusformer_fast.utils.atomic_files import atomic_write, write_json_atomic
from focusformer_fast.utils.cli import Parser, UsageError, run_cli
from focusformer_fast.utils.version import versions

PROG = "python -m focusformer_fast.experiments.finetune_digits"
VARIANTS = ("finetune", "finetune --teacher")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Supernet (default training) -> search one budget -> fine-tune, with and "
                                      "without --teacher, on digits over seeds.")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--budget", default="1.5M", help="the FLOPs (MACs) budget searched (default 1.5M)")
    p.add_argument("--work", default="runs/finetune_digits", help="directory of the runs (default runs/finetune_digits)")
    p.add_argument("--output", default="docs/finetune_digits", help="path prefix of the .md and _raw.json outputs")
    p.add_argument("--train-args", default="", help="extra train flags, space-separated (default none: the default command)")
    p.add_argument("--finetune-args", default="", help="extra finetune flags, space-separated (default none)")
    return p


def _call(main: Callable[[Sequence[str]], int], argv: list[str]) -> None:
    if main(argv) != 0:
        raise UsageError(f"{' '.join(argv)} failed")


def _budget_dir(budget: str) -> str:
    """The directory ``search --export`` writes the subnet of ``budget`` (e.g. ``1.5M``) to."""
    return f"budget-{fmt_cost(parse_budget(budget), 'flops')}"


def run_seed(seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One seed's train, search and two fine-tunings (each skipped when its output exists); its numbers."""
    run, models = work / f"run-s{seed}", work / f"models-s{seed}"
    subnet = models / _budget_dir(args.budget)
    times: dict[str, float] = {}
    start = time.perf_counter()
    if not (run / "results.json").is_file():
        _call(train.main, ["--seed", str(seed), "--output", str(run), "--no-progress", *args.train_args.split()])
    times["train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    if not (subnet / "config.json").is_file():
        _call(search.main, [str(run), "--budget", args.budget, "--test", "--seed", str(seed), "--export", str(models)])
    times["search_s"] = time.perf_counter() - start
    out: dict[str, Any] = {"seed": seed, "run": str(run), "subnet": str(subnet),
                           "search": json.loads((subnet / "config.json").read_text())["focusformer"]}
    for variant, name, extra in ((VARIANTS[0], f"ft-s{seed}", []),
                                 (VARIANTS[1], f"ftkd-s{seed}", ["--teacher", str(run)])):
        ft = work / name
        start = time.perf_counter()
        if not (ft / "results.json").is_file():
            _call(finetune.main, [str(subnet), "--data", "digits", "--seed", str(seed), "--output", str(ft),
                                  "--no-progress", *extra, *args.finetune_args.split()])
        times[f"{name.split('-')[0]}_s"] = time.perf_counter() - start
        out[variant] = json.loads((ft / "results.json").read_text())
    out["seconds"] = times
    return out


def _mean_std(values: list[float]) -> str:
    pct = [100 * v for v in values]
    std = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.mean(pct):.2f} ± {std:.2f}"


def report(raw: dict[str, Any]) -> str:
    """The markdown table of a raw result: test (and val) accuracy, inherited vs fine-tuned, mean ± std over seeds."""
    rows = raw["seeds"]
    lines = [f"Digits, budget {raw['budget']} FLOPs (MACs); {len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)}); "
             "accuracy in %, mean ± std over seeds.", "",
             "| subnet weights | val acc | test acc |", "|---|---|---|"]
    inherited = [r[VARIANTS[0]]["inherited"] for r in rows]
    lines.append(f"| inherited from the supernet | {_mean_std([i['val_acc'] for i in inherited])} | "
                 f"{_mean_std([i['test_acc'] for i in inherited])} |")
    for variant in VARIANTS:
        tuned = [r[variant]["finetuned"] for r in rows]
        lines.append(f"| `{variant}` | {_mean_std([t['val_acc'] for t in tuned])} | "
                     f"{_mean_std([t['test_acc'] for t in tuned])} |")
    lines += ["", "| seed | arch | FLOPs | inherited test | finetune test | finetune --teacher test |", "|---|---|---|---|---|---|"]
    for r in rows:
        arch = r["search"]["arch"]
        label = (f"e{arch['embed_dim']}-d{arch['depth']}-h{arch['num_heads']}-"
                 f"r{[round(x, 1) for x in arch['mlp_ratio']]}").replace(" ", "")
        lines.append(f"| {r['seed']} | `{label}` | {r['search']['flops'] / 1e6:.2f}M | "
                     f"{100 * r[VARIANTS[0]]['inherited']['test_acc']:.2f} | "
                     f"{100 * r[VARIANTS[0]]['finetuned']['test_acc']:.2f} | "
                     f"{100 * r[VARIANTS[1]]['finetuned']['test_acc']:.2f} |")
    lines += ["", "Commands (per seed S):", "", "```", *raw["commands"], "```", ""]
    return "\n".join(lines)


def run_experiment(args: argparse.Namespace) -> dict[str, Any]:
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds {args.seeds!r} must be comma-separated integers") from None
    if not seeds:
        raise UsageError("--seeds names no seed")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    w, b = args.work, _budget_dir(args.budget)
    ta, fa = (f" {args.train_args}" if args.train_args else ""), (f" {args.finetune_args}" if args.finetune_args else "")
    results = [run_seed(s, args, work) for s in seeds]
    raw = {"budget": args.budget, "seeds": results,
           "commands": [f"python -m focusformer_fast.train --seed S --output {w}/run-sS{ta}",
                        f"python -m focusformer_fast.search {w}/run-sS --budget {args.budget} --test --seed S "
                        f"--export {w}/models-sS",
                        f"python -m focusformer_fast.finetune {w}/models-sS/{b} --data digits --seed S "
                        f"--output {w}/ft-sS{fa}",
                        f"python -m focusformer_fast.finetune {w}/models-sS/{b} --data digits --seed S "
                        f"--teacher {w}/run-sS "
                        f"--output {w}/ftkd-sS{fa}"],
           "versions": versions(),
           "devices": sorted({r[v]["versions"].get("device", "?") for r in results for v in VARIANTS}),
           "argv": sys.argv}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_name(out.name + "_raw.json"), raw)
    text = report(raw)
    atomic_write(out.with_name(out.name + ".md"), lambda f: f.write(text.encode()))
    print(text)
    return raw


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes."""
    return run_cli(lambda: run_experiment(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
