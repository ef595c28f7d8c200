"""``python -m focusformer_fast.experiments.sampler_oracle``: how fast the sampler finds a known frontier.

No supernet: each synthetic accuracy function gives a subnet's "val score" in [0, 1] from its
arch, plus Gaussian noise of a 256-image val batch (σ = sqrt(f (1 - f) / 256), 0.02 at f = 0.9).
The functions are symmetric in the blocks (they see the blocks' mean heads and mlp ratio and
the arch's parameter count), and so are FLOPs; the best in-budget value of every budget is
therefore exact, by enumerating embed dim, depth and the multiset of per-block choices.

For each function and seed, the focus sampler learns from scored subnets exactly as in
training (a round of ``samples_per_budget`` real scores per budget every ``update_every`` steps),
with ``--reward-model none`` (direct REINFORCE) and ``estimator``. Regret of a budget: its best
in-budget value minus the noise-free mean value of the policy's draws for it. Reported against
the number of real evaluations, with the initial policy (0 evaluations) and uniform in-budget
draws as references. Writes ``<output>.md`` (table), ``<output>.png`` (regret vs evaluations)
and ``<output>_raw.json``.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..atomic_files import atomic_write, write_json_atomic
from ..cli import Parser, UsageError, run_cli
from ..costs import budget_grid, make_cost_fn
from ..sampler import REWARD_MODELS, FocusSampler, uniform_proposals
from ..space import Arch, SearchSpace
from ..version import versions
from .raw_results import read_raw

Accuracy = Callable[[SearchSpace, Arch], float]
VAL_IMAGES = 256
EVALUATIONS = (0, 50, 100, 200, 400, 800)
POLICY_DRAWS = 32  # draws per budget for a policy's mean value
UNIFORM_DRAWS = 256


def _features(space: SearchSpace, a: Arch) -> tuple[float, float, float, float, float]:
    """Normalized to [0, 1]: log params, mean heads, mean mlp ratio, depth, embed dim."""
    def norm(v: float, cs: Sequence[float]) -> float:
        return (v - min(cs)) / (max(cs) - min(cs)) if max(cs) > min(cs) else 0.0

    lo, hi = math.log(space.params(space.smallest())), math.log(space.params(space.largest()))
    cap = (math.log(space.params(a)) - lo) / (hi - lo)
    heads = sum(norm(h, space.num_heads) for h in a.num_heads) / a.depth
    ratio = sum(norm(r, space.mlp_ratios) for r in a.mlp_ratio) / a.depth
    return cap, heads, ratio, norm(a.depth, space.depths), norm(a.embed_dim, space.embed_dims)


def capacity(space: SearchSpace, a: Arch) -> float:
    """Saturating in parameters: bigger is better, with diminishing returns."""
    cap = _features(space, a)[0]
    return 0.55 + 0.4 * (1 - math.exp(-2.5 * cap)) / (1 - math.exp(-2.5))


def heads_mlp(space: SearchSpace, a: Arch) -> float:
    """Capacity helps, heads help more per FLOP, a high MLP ratio hurts."""
    cap, heads, ratio, _, _ = _features(space, a)
    return 0.6 + 0.2 * cap + 0.1 * heads - 0.1 * ratio


def balance(space: SearchSpace, a: Arch) -> float:
    """Capacity helps; depth and width should grow together; a middling MLP ratio is best."""
    cap, _, ratio, depth, embed = _features(space, a)
    return 0.6 + 0.25 * cap - 0.15 * (depth - embed) ** 2 - 0.1 * (ratio - 0.5) ** 2


FUNCTIONS: dict[str, tuple[str, Accuracy]] = {
    "digits/capacity": ("digits", capacity),
    "digits/heads-mlp": ("digits", heads_mlp),
    "autoformer-t/heads-mlp": ("autoformer-t", heads_mlp),
    "autoformer-t/balance": ("autoformer-t", balance),
}
"""name -> (space preset, accuracy function)."""


def symmetric_archs(space: SearchSpace) -> list[Arch]:
    """One arch per (embed, depth, multiset of per-block (heads, mlp ratio)): every value of a
    function symmetric in the blocks, at every cost a block-symmetric cost function takes."""
    types = [(h, r) for h in space.num_heads for r in space.mlp_ratios]
    out = []
    for e in space.embed_dims:
        for d in space.depths:
            for blocks in itertools.combinations_with_replacement(types, d):
                out.append(Arch(e, d, tuple(h for h, _ in blocks), tuple(r for _, r in blocks)))
    return out


def frontier(space: SearchSpace, f: Accuracy, budgets: Sequence[float]) -> list[float]:
    """Per budget, the exact best value of ``f`` over archs with FLOPs within it."""
    scored = [(space.flops(a), f(space, a)) for a in symmetric_archs(space)]
    return [max(v for c, v in scored if c <= b) for b in budgets]


def noisy(space: SearchSpace, f: Accuracy, rng: random.Random) -> Callable[[Sequence[Arch]], list[float]]:
    """Scores like a 256-image val batch: ``f`` plus Gaussian noise of a binomial's std."""
    def score(archs: Sequence[Arch]) -> list[float]:
        out = []
        for a in archs:
            v = f(space, a)
            out.append(min(max(rng.gauss(v, math.sqrt(v * (1 - v) / VAL_IMAGES)), 0.0), 1.0))
        return out
    return score


def policy_regret(fs: FocusSampler, f: Accuracy, best: Sequence[float], seed: int) -> list[float]:
    """Per budget, best value minus the mean of ``f`` over :data:`POLICY_DRAWS` policy draws."""
    rng = random.Random(f"{seed}:regret")
    out = []
    for b, top in zip(fs.budgets, best):
        archs = [r.arch for r in fs.sample_many([b] * POLICY_DRAWS, rng=rng)]
        out.append(top - sum(f(fs.space, a) for a in archs) / len(archs))
    return out


def run_one(name: str, reward_model: str, seed: int, evaluations: Sequence[int] = EVALUATIONS,
            **options: Any) -> list[dict[str, Any]]:
    """Regret per budget of one sampler after each count in ``evaluations`` of real scores."""
    preset, f = FUNCTIONS[name]
    space = SearchSpace.preset(preset)
    flops = make_cost_fn(space, "flops")
    budgets = budget_grid(space, flops)
    best = frontier(space, f, budgets)
    fs = FocusSampler(space, flops, budgets, seed=seed, epsilon=0.0, sampler_warmup=0,
                      reward_model=reward_model, **options)
    score = noisy(space, f, random.Random(f"{seed}:noise"))
    per_round = fs.samples_per_budget * len(budgets)
    rows, done, step, t0 = [], 0, 0, time.perf_counter()
    for target in sorted(evaluations):
        while done < target:
            step += fs.update_every
            fs.update(step - 1, score)
            done += per_round
        regret = policy_regret(fs, f, best, seed)
        rows.append({"evaluations": done, "regret": regret, "mean_regret": sum(regret) / len(regret),
                     "estimator_tau": fs.estimator_tau(), "seconds": time.perf_counter() - t0})
    return rows


def uniform_regret(name: str, seed: int) -> list[float]:
    """Per budget, best value minus the mean of ``f`` over uniform in-budget draws."""
    preset, f = FUNCTIONS[name]
    space = SearchSpace.preset(preset)
    flops = make_cost_fn(space, "flops")
    budgets = budget_grid(space, flops)
    rng = random.Random(f"{seed}:uniform")
    out = []
    for b, top in zip(budgets, frontier(space, f, budgets)):
        archs = uniform_proposals(space, flops, b, UNIFORM_DRAWS, rng)
        out.append(top - sum(f(space, a) for a in archs) / len(archs))
    return out


def oracle(functions: Sequence[str], seeds: Sequence[int], models: Sequence[str] = REWARD_MODELS) -> dict[str, Any]:
    """Every (function, seed, reward model) run; the raw results."""
    t0 = time.perf_counter()
    raw: dict[str, Any] = {"functions": list(functions), "seeds": list(seeds), "models": list(models),
                           "evaluations": list(EVALUATIONS), "runs": [], "uniform": []}
    for name in functions:
        for seed in seeds:
            u = uniform_regret(name, seed)
            raw["uniform"].append({"function": name, "seed": seed, "regret": u, "mean_regret": sum(u) / len(u)})
            for model in models:
                rows = run_one(name, model, seed)
                raw["runs"].append({"function": name, "seed": seed, "reward_model": model, "rows": rows})
                print(f"{name} seed {seed} {model}: mean regret "
                      + ", ".join(f"{r['evaluations']}:{r['mean_regret']:.4f}" for r in rows)
                      + f" ({rows[-1]['seconds']:.0f}s)", flush=True)
    raw["seconds"] = time.perf_counter() - t0
    raw["versions"] = versions(torch.device("cpu"))
    return raw


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Raw results of harness runs over different functions (same seeds and evaluations) as one."""
    raw = {**parts[0], "functions": [], "runs": [], "uniform": [], "seconds": 0.0}
    for part in parts:
        for key in ("seeds", "evaluations"):
            if part[key] != raw[key]:
                raise UsageError(f"raw results disagree on {key}: {part[key]} vs {raw[key]}")
        raw["functions"] += [f for f in part["functions"] if f not in raw["functions"]]
        raw["runs"] += part["runs"]
        raw["uniform"] += part["uniform"]
        raw["seconds"] += part["seconds"]
    return raw


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1))


def _curve(raw: dict[str, Any], name: str, model: str) -> dict[int, list[float]]:
    """evaluations -> mean regret per seed."""
    out: dict[int, list[float]] = {}
    for r in raw["runs"]:
        if r["function"] == name and r["reward_model"] == model:
            for row in r["rows"]:
                out.setdefault(row["evaluations"], []).append(row["mean_regret"])
    return out


def report(raw: dict[str, Any]) -> str:
    """The markdown table: mean regret over budgets (mean ± std over seeds) per function."""
    last = max(raw["evaluations"])
    lines = [f"Mean regret over the 5 budgets (best in-budget value minus the policy's mean), mean ± std over "
             f"seeds {raw['seeds']}; {last} real evaluations = {last // 5} rounds of 5 scored subnets. "
             f"Generated by `python -m focusformer_fast.experiments.sampler_oracle` in {raw['seconds'] / 60:.1f} min "
             f"(torch {raw['versions'].get('torch', '?')}, CPU).", "",
             f"| function | uniform in-budget | initial policy | REINFORCE @{last} | estimator @{last} "
             "| estimator / REINFORCE | estimator τ (held out) |", "|---|---|---|---|---|---|---|"]
    for name in raw["functions"]:
        u = _mean_std([r["mean_regret"] for r in raw["uniform"] if r["function"] == name])
        direct, est = _curve(raw, name, "none"), _curve(raw, name, "estimator")
        init = _mean_std(direct[0])
        d, e = _mean_std(direct[last]), _mean_std(est[last])
        ratios = [b / a if a > 0 else float("inf") for a, b in zip(direct[last], est[last])]
        taus = [row["estimator_tau"] for r in raw["runs"] if r["function"] == name and r["reward_model"] == "estimator"
                for row in r["rows"][-1:] if row["estimator_tau"] is not None]
        tau = f"{_mean_std(taus)[0]:.2f}" if taus else "n/a"
        lines.append(f"| {name} | {u[0]:.4f} ± {u[1]:.4f} | {init[0]:.4f} ± {init[1]:.4f} | {d[0]:.4f} ± {d[1]:.4f} "
                     f"| {e[0]:.4f} ± {e[1]:.4f} | {', '.join(f'{x:.2f}' for x in ratios)} (max {max(ratios):.2f}) "
                     f"| {tau} |")
    return "\n".join(lines) + "\n"


def plot(raw: dict[str, Any], path: Path) -> None:
    """Regret vs real evaluations, one panel per function, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fns = raw["functions"]
    fig, axes = plt.subplots(1, len(fns), figsize=(4 * len(fns), 3.4), squeeze=False)
    for ax, name in zip(axes[0], fns):
        for model, label in (("none", "REINFORCE (reward-model none)"), ("estimator", "estimator")):
            curve = _curve(raw, name, model)
            if not curve:
                continue
            xs = sorted(curve)
            ms = [_mean_std(curve[x]) for x in xs]
            ax.errorbar(xs, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3, label=label)
        u = _mean_std([r["mean_regret"] for r in raw["uniform"] if r["function"] == name])[0]
        ax.axhline(u, color="gray", linestyle="--", label="uniform in-budget")
        ax.set_title(name)
        ax.set_xlabel("real evaluations")
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("mean regret per budget")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


def write_outputs(raw: dict[str, Any], output: str) -> list[Path]:
    base = Path(output)
    md, png, js = base.with_suffix(".md"), base.with_suffix(".png"), base.parent / f"{base.name}_raw.json"
    base.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(js, raw)
    atomic_write(md, lambda fh: fh.write(report(raw).encode()))
    plot(raw, png)
    return [md, png, js]


def _oracle(argv: Sequence[str] | None) -> None:
    p = Parser(prog="python -m focusformer_fast.experiments.sampler_oracle", description=__doc__.splitlines()[0])
    p.add_argument("--functions", default=",".join(FUNCTIONS), help=f"comma-separated; allowed: {', '.join(FUNCTIONS)}")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated integers (default 0,1,2)")
    p.add_argument("--output", default="docs/sampler_oracle", help="path prefix of the .md/.png/_raw.json outputs")
    p.add_argument("--report-only", metavar="RAW_JSON", nargs="+",
                   help="rewrite .md and .png from raw JSON files (several: runs of other functions, merged)")
    a = p.parse_args(argv)
    if a.report_only:
        raw = merge(read_raw(a.report_only))
    else:
        functions = [s for s in a.functions.split(",") if s]
        for s in functions:
            if s not in FUNCTIONS:
                raise UsageError(f"--functions: {s!r} is unknown; allowed: {', '.join(FUNCTIONS)}")
        try:
            seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--seeds {a.seeds!r} is not a comma-separated list of integers") from None
        if not functions or not seeds:
            raise UsageError("--functions and --seeds need at least one value each")
        torch.set_num_threads(1)
        raw = oracle(functions, seeds)
    for f in write_outputs(raw, a.output):
        print(f"wrote {f}")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes."""
    return run_cli(lambda: _oracle(argv))


if __name__ == "__main__":
    sys.exit(main())
