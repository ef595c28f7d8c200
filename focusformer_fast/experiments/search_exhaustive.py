"""``python -m focusformer_fast.experiments.search_exhaustive RUN``: search methods against the exhaustive best.

Every arch of the run's space is scored once with the run's supernet (val accuracy and loss, test
accuracy), so each budget's best-on-val arch is known exactly. Then every method (policy, evolution,
evolution seeded by the policy, random) searches every budget on its own with N distinct evaluations
(each of ``--evaluations``) for each of ``--seeds`` search seeds, reading those scores, exactly what
``search`` computes with its score cache. Budgets: the run's grid, the midpoints between grid points and
one below the grid. Val chooses; test is reported. For spaces small enough to enumerate (digits: 22,113
archs, about 15 min on one CPU thread).

Writes ``<output>.md`` (the summary table), ``<output>_raw.json`` (every search, the config, versions) and
``<output>_scores.json`` (the exhaustive scores, reused by a rerun on the same checkpoint and step).
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from focusformer_fast.experiments.compare import search_budgets
from focusformer_fast.nas.specialize import ScoreCache, method_label, search_budget
from focusformer_fast.space import Arch, SearchSpace
from focusformer_fast.utils.atomic_files import atomic_write, write_json_atomic
from focusformer_fast.utils.cli import Parser, UsageError, run_cli, state_defaults
from focusformer_fast.utils.version import versions

SEARCHES = (("policy", "random"), ("evolution", "random"), ("evolution", "policy"), ("random", "random"))
"""(method, evolution init) pairs compared."""
MAX_ARCHS = 100_000


def every_arch(space: SearchSpace) -> list[Arch]:
    """All archs of ``space``, by depth, width, MLP ratios, heads."""
    return [Arch(e, d, hs, rs) for d in space.depths for e in space.embed_dims
            for rs in itertools.product(space.mlp_ratios, repeat=d)
            for hs in itertools.product(space.num_heads, repeat=d)]


def space_size(space: SearchSpace) -> int:
    per_block = len(space.mlp_ratios) * len(space.num_heads)
    return len(space.embed_dims) * sum(per_block ** d for d in space.depths)


def exhaustive_scores(trained: Any, path: Path, threads: int) -> dict[Arch, tuple[float, float, float, float]]:
    """(val acc, val loss, test acc, cost) of every arch; read from ``path`` when it was written for this
    checkpoint and step, else computed and written there."""
    from focusformer_fast.data.loaders import make_loaders
    from focusformer_fast.nas.evaluate import accuracy, accuracy_and_loss

    key = {"checkpoint": str(trained.checkpoint), "step": trained.step}
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("run") == key:
            return {Arch.from_json(a): tuple(v) for a, v in saved["scores"].items()}
    torch.set_num_threads(threads)
    loaders = make_loaders(trained.splits, 256, seed=trained.config.seed)
    val, test = list(loaders.val), list(loaders.test)
    scores, start = {}, time.perf_counter()
    archs = every_arch(trained.space)
    for k, a in enumerate(archs):
        acc, loss = accuracy_and_loss(trained.net, a, val, trained.device)
        scores[a] = (acc, loss, accuracy(trained.net, a, test, trained.device), float(trained.cost_fn(a)))
        if k % 2000 == 1999:
            print(f"scored {k + 1}/{len(archs)} archs in {time.perf_counter() - start:.0f} s", flush=True)
    write_json_atomic(path, {"run": key, "scores": {a.to_json(): v for a, v in scores.items()}}, indent=0)
    return scores


def run_searches(trained: Any, scores: dict[Arch, tuple[float, float, float, float]], evaluations: Sequence[int],
                 seeds: int) -> list[dict[str, Any]]:
    """Per budget: the exhaustive best-on-val arch and every search's choice."""
    grid = [round(b) for b in trained.config.budgets]
    results = []
    for b in search_budgets(trained.space, trained.cost_fn, trained.config.budgets, True):
        fit = [(a, s) for a, s in scores.items() if s[3] <= b]
        best, s = min(fit, key=lambda x: (-x[1][0], x[1][1], x[1][3]))
        row = {"budget": b, "on_grid": round(b) in grid, "in_budget": len(fit), "best_arch": str(best),
               "best_val": s[0], "best_test": s[2], "searches": []}
        for n, (method, init), seed in itertools.product(evaluations, SEARCHES, range(seeds)):
            cache = ScoreCache(lambda a: scores[a][:2], trained.cost_fn)
            t = time.perf_counter()
            res = search_budget(b, method, trained.space, trained.sampler, trained.cost_fn, cache, n=n, seed=seed,
                                init=init)
            row["searches"].append({"n": n, "method": method_label(method, init, trained.sampler.proposer),
                                    "seed": seed, "evaluations": len(res.candidates), "arch": str(res.best.arch),
                                    "val": res.best.accuracy, "test": scores[res.best.arch][2],
                                    "seconds": time.perf_counter() - t})
        results.append(row)
    return results


def markdown(raw: dict[str, Any]) -> str:
    """Per N and method: distinct evaluations, val regret to the exhaustive best and test accuracy, on and
    off the grid (means over budgets and search seeds)."""
    results = raw["results"]
    best_test = ", ".join(f"{100 * r['best_test']:.1f}%" for r in results)
    lines = [f"# Search methods against the exhaustive best ({raw['run']}, step {raw['step']})", "",
             f"{raw['archs']} archs scored once; {len(results)} budgets ({sum(r['on_grid'] for r in results)} on the "
             f"grid), {raw['seeds']} search seeds each; val chooses, test reported. Exhaustive best-on-val test "
             f"accuracy per budget: {best_test}.", "",
             "| N | method | distinct evals per budget | val regret, grid / off (points) | test %, grid / off |"
             " overhead s/budget (median) |", "|---:|---|---:|---:|---:|---:|"]
    methods = list(dict.fromkeys(x["method"] for x in results[0]["searches"]))
    for n in raw["evaluations"]:
        for m in methods:
            cells = []
            for on in (True, False):
                runs = [(r, x) for r in results if r["on_grid"] == on for x in r["searches"]
                        if x["n"] == n and x["method"] == m]
                cells.append((statistics.mean(100 * (r["best_val"] - x["val"]) for r, x in runs),
                              statistics.mean(100 * x["test"] for _, x in runs)))
            every = [x for r in results for x in r["searches"] if x["n"] == n and x["method"] == m]
            lo, hi = min(x["evaluations"] for x in every), max(x["evaluations"] for x in every)
            evals = str(lo) if lo == hi else f"{lo}-{hi}"
            lines.append(f"| {n} | {m} | {evals} | {cells[0][0]:.2f} / {cells[1][0]:.2f} | "
                         f"{cells[0][1]:.2f} / {cells[1][1]:.2f} | "
                         f"{statistics.median(x['seconds'] for x in every):.3f} |")
    return "\n".join(lines) + "\n"


def _main(argv: Sequence[str] | None) -> None:
    p = Parser(prog="python -m focusformer_fast.experiments.search_exhaustive", description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run directory written by python -m focusformer_fast.train")
    p.add_argument("--evaluations", default="50,200", help="distinct evaluations per budget, comma-separated")
    p.add_argument("--seeds", type=int, default=5, help="search seeds per budget and method")
    p.add_argument("--output", default="search_exhaustive", help="path prefix of the .md and _raw.json outputs")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads while scoring")
    a = state_defaults(p).parse_args(argv)
    try:
        evaluations = [int(x) for x in a.evaluations.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--evaluations {a.evaluations!r} must be comma-separated integers") from None
    if not evaluations or min(evaluations) < 1 or a.seeds < 1 or a.threads < 1:
        raise UsageError("--evaluations, --seeds and --threads must be >= 1")
    from focusformer_fast.training.runs import load_run

    trained = load_run(a.run, device="cpu")
    if space_size(trained.space) > MAX_ARCHS:
        raise UsageError(f"space {trained.space.name!r} has {space_size(trained.space)} archs; this experiment "
                         f"enumerates at most {MAX_ARCHS} (try a digits run)")
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    scores = exhaustive_scores(trained, out.parent / f"{out.name}_scores.json", a.threads)
    raw = {"run": str(trained.checkpoint), "step": trained.step, "archs": len(scores), "evaluations": evaluations,
           "seeds": a.seeds, "results": run_searches(trained, scores, evaluations, a.seeds),
           "seconds": time.perf_counter() - start, "versions": versions(trained.device), "argv": sys.argv}
    write_json_atomic(out.parent / f"{out.name}_raw.json", raw, indent=1)
    md = out.with_suffix(".md")
    atomic_write(md, lambda f: f.write(markdown(raw).encode()))
    print(markdown(raw))
    print(f"wrote {md} and {out.name}_raw.json")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes."""
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
