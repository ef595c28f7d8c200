"""``python -m focusformer_fast.experiments.sampler_oracle``: how well a trained sampler specializes, honestly.

No supernet: each synthetic accuracy function gives a subnet's "val score" in [0, 1] from its
arch, plus Gaussian noise of a 256-image val batch (σ = sqrt(f (1 - f) / 256), 0.02 at f = 0.9).
The functions are symmetric in the blocks (they see the blocks' mean heads and mlp ratio and
the arch's parameter count), and so are FLOPs; the best in-budget value of every budget is
therefore exact, by enumerating embed dim, depth and the multiset of per-block choices.

For each function and seed, the focus sampler learns from real scores exactly as in training
(a round of ``samples_per_budget`` real scores per stratum every ``update_every`` steps, 800
in all, the default run's count). Then every budget is specialized the way ``search`` does it:
``N`` distinct in-budget archs, each scored once with the val noise, the best by its noisy
score; its **regret** is the budget's best value minus the chosen arch's true value. Budgets:
the 5 of the grid, and 6 off it (the 4 midpoints between grid budgets, 2 below the lowest).
The same budgets are searched by random search and AutoFormer's evolution
(:mod:`focusformer_fast.nas.search_methods`) at 50, 200 and 1000 evaluations. Also reported: the
distinct archs among 50 proposals and among 50 independent policy draws (collapse shows there),
and, for ``digits/noise`` (a score with no structure: a fixed random value per arch), only those.

Writes ``<output>.md`` (tables), ``<output>.png`` (regret vs evaluations) and ``<output>_raw.json``.
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

from focusformer_fast.experiments.raw_results import read_raw
from focusformer_fast.nas.costs import budget_grid, make_cost_fn
from focusformer_fast.nas.sampler.focus import FocusSampler
from focusformer_fast.nas.sampler.options import SamplerOptions
from focusformer_fast.nas.search_methods import evolution_search, policy_search, random_search
from focusformer_fast.space import Arch, SearchSpace
from focusformer_fast.training.config import coerce_field
from focusformer_fast.utils.atomic_files import atomic_write, write_json_atomic
from focusformer_fast.utils.cli import Parser, UsageError, run_cli
from focusformer_fast.utils.version import versions

Accuracy = Callable[[SearchSpace, Arch], float]
VAL_IMAGES = 256
TRAINING_EVALUATIONS = 800
"""Real scores the sampler learns from: the default digits run's 160 rounds of 5."""
CURVE = (0, 200, 800)
"""Training evaluations after which the policy's best-of-N regret is measured."""
POLICY_N = 50
SEARCH_EVALUATIONS = (50, 200, 1000)
DRAWS = 50
"""Independent policy draws per budget whose distinct archs are counted."""


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


def noise(space: SearchSpace, a: Arch) -> float:
    """No structure: 0.9 plus a fixed random value per arch (std 0.02), as a val batch that every
    subnet scores alike within its noise, and that scores a repeated arch the same again."""
    return 0.9 + 0.02 * random.Random(str(a)).gauss(0.0, 1.0)


FUNCTIONS: dict[str, tuple[str, Accuracy]] = {
    "digits/capacity": ("digits", capacity),
    "digits/heads-mlp": ("digits", heads_mlp),
    "autoformer-t/heads-mlp": ("autoformer-t", heads_mlp),
    "autoformer-t/balance": ("autoformer-t", balance),
    "digits/noise": ("digits", noise),
}
"""name -> (space preset, accuracy function)."""
STRUCTURELESS = ("digits/noise",)
"""Functions without an exact frontier: only distinct proposals and draws are reported."""


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


def budgets_of(space: SearchSpace) -> tuple[list[float], list[float]]:
    """The grid's 5 budgets, and 6 off it: the 4 midpoints between them and 2 below the lowest
    (a third and two thirds of the way from the cheapest arch's cost to it)."""
    flops = make_cost_fn(space, "flops")
    grid = list(budget_grid(space, flops))
    lo = flops(space.smallest())
    off = [lo + (grid[0] - lo) / 3, lo + 2 * (grid[0] - lo) / 3] + [(a + b) / 2 for a, b in zip(grid, grid[1:])]
    return grid, off


def new_sampler(name: str, seed: int, options: SamplerOptions) -> FocusSampler:
    """A focus sampler for ``name``'s space with ``options``, as training runs it without a supernet
    (no warm-up, no uniform archs: those only train the shared weights), learning in this thread."""
    space = SearchSpace.preset(FUNCTIONS[name][0])
    flops = make_cost_fn(space, "flops")
    return FocusSampler(space, flops, budget_grid(space, flops), seed=seed, background=False,
                        **{**vars(options), "epsilon": 0.0, "sampler_warmup": 0})


def learn(fs: FocusSampler, score: Callable[[Sequence[Arch]], list[float]], done: int, evaluations: int) -> None:
    """Rounds of real scores from ``score`` until ``evaluations`` (``done`` so far), as in training."""
    per_round = fs.samples_per_budget * len(fs.budgets)
    step = done // per_round * fs.update_every
    while done < evaluations:
        step += fs.update_every
        fs.update(step - 1, score)
        done += per_round


def _regret(best: float, f: Accuracy, space: SearchSpace, evaluated: list[tuple[Arch, float]]) -> float:
    """Best value minus the true value of the arch with the best noisy score."""
    chosen = max(evaluated, key=lambda x: x[1])[0]
    return best - f(space, chosen)


def specialize_all(name: str, seed: int, fs: FocusSampler, budgets: Sequence[float], n: int) -> dict[str, Any]:
    """Per budget: best-of-``n`` regret of the policy's distinct proposals, and the distinct archs
    among ``n`` proposals and among :data:`DRAWS` independent draws."""
    preset, f = FUNCTIONS[name]
    space = fs.space
    best = None if name in STRUCTURELESS else frontier(space, f, budgets)
    out: dict[str, Any] = {"regret": [], "distinct_proposals": [], "distinct_draws": []}
    for i, b in enumerate(budgets):
        rng = random.Random(f"{seed}:{b!r}:policy")
        evaluate = noisy(space, f, random.Random(f"{seed}:{b!r}:val"))
        found = policy_search(fs, fs.cost_fn, b, evaluate, n, rng)
        out["distinct_proposals"].append(len({a for a, _ in found}))
        out["distinct_draws"].append(len(set(fs.draw([b] * DRAWS, rng=random.Random(f"{seed}:{b!r}:draws")).keys())))
        if best is not None:
            out["regret"].append(_regret(best[i], f, space, found))
    return out


def baseline_regret(name: str, seed: int, budgets: Sequence[float], method: str, evaluations: int) -> list[float]:
    """Per budget: regret of random search or evolution with ``evaluations`` distinct evaluations."""
    preset, f = FUNCTIONS[name]
    space = SearchSpace.preset(preset)
    flops = make_cost_fn(space, "flops")
    best = frontier(space, f, budgets)
    out = []
    for top, b in zip(best, budgets):
        rng = random.Random(f"{seed}:{b!r}:{method}")
        evaluate = noisy(space, f, random.Random(f"{seed}:{b!r}:val"))
        search = evolution_search if method == "evolution" else random_search
        out.append(_regret(top, f, space, search(space, flops, b, evaluate, evaluations, rng)))
    return out


def run_function(name: str, seed: int, options: SamplerOptions) -> dict[str, Any]:
    """One function and seed: the policy's curve and final figures, and the baselines'."""
    preset, _ = FUNCTIONS[name]
    grid, off = budgets_of(SearchSpace.preset(preset))
    t0 = time.perf_counter()
    row: dict[str, Any] = {"function": name, "seed": seed, "grid": grid, "off": off, "policy": []}
    fs = new_sampler(name, seed, options)
    score = noisy(fs.space, FUNCTIONS[name][1], random.Random(f"{seed}:noise"))
    done = 0
    for target in CURVE:
        learn(fs, score, done, target)
        done = target
        row["policy"].append({"evaluations": target, "grid": specialize_all(name, seed, fs, grid, POLICY_N),
                              "off": specialize_all(name, seed, fs, off, POLICY_N),
                              "estimator_tau": fs.estimator_tau(), "seconds": time.perf_counter() - t0})
    if name not in STRUCTURELESS:
        row["baselines"] = [{"method": m, "evaluations": n, "grid": baseline_regret(name, seed, grid, m, n),
                             "off": baseline_regret(name, seed, off, m, n)}
                            for m in ("random", "evolution") for n in SEARCH_EVALUATIONS]
    row["seconds"] = time.perf_counter() - t0
    return row


def oracle(functions: Sequence[str], seeds: Sequence[int], options: SamplerOptions) -> dict[str, Any]:
    """Every (function, seed); the raw results."""
    t0 = time.perf_counter()
    raw: dict[str, Any] = {"functions": list(functions), "seeds": list(seeds), "options": vars(options),
                           "policy_n": POLICY_N, "curve": list(CURVE), "search_evaluations": list(SEARCH_EVALUATIONS),
                           "runs": []}
    for name in functions:
        for seed in seeds:
            row = run_function(name, seed, options)
            raw["runs"].append(row)
            last = row["policy"][-1]
            print(f"{name} seed {seed}: " + (f"policy best-of-{POLICY_N} regret grid {_mean(last['grid']['regret']):.4f} "
                                             f"off {_mean(last['off']['regret']):.4f}; " if last["grid"]["regret"] else "")
                  + f"distinct draws min {min(last['grid']['distinct_draws'] + last['off']['distinct_draws'])}"
                  + f" ({row['seconds']:.0f}s)", flush=True)
    raw["seconds"] = time.perf_counter() - t0
    raw["versions"] = versions(torch.device("cpu"))
    return raw


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Raw results of harness runs over different functions (same seeds and settings) as one."""
    raw = {**parts[0], "functions": [], "runs": [], "seconds": 0.0}
    for part in parts:
        for key in ("seeds", "options", "policy_n", "curve", "search_evaluations"):
            if part[key] != raw[key]:
                raise UsageError(f"raw results disagree on {key}: {part[key]} vs {raw[key]}")
        raw["functions"] += [f for f in part["functions"] if f not in raw["functions"]]
        raw["runs"] += part["runs"]
        raw["seconds"] += part["seconds"]
    return raw


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    m = _mean(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1))


def _fmt(xs: Sequence[float]) -> str:
    m, s = _mean_std(xs)
    return f"{m:.4f} ± {s:.4f}"


def summary(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per function: per-seed mean regret (grid, off) of the policy after the full curve and of each
    baseline, the minimum distinct proposals and draws over budgets, and the targets' verdicts."""
    out = {}
    for name in raw["functions"]:
        runs = [r for r in raw["runs"] if r["function"] == name]
        last = [r["policy"][-1] for r in runs]
        s: dict[str, Any] = {
            "distinct_draws_min": min(min(p["grid"]["distinct_draws"] + p["off"]["distinct_draws"]) for p in last),
            "distinct_proposals_min": min(min(p["grid"]["distinct_proposals"] + p["off"]["distinct_proposals"])
                                          for p in last),
            "estimator_tau": [p["estimator_tau"] for p in last]}
        if name not in STRUCTURELESS:
            for where in ("grid", "off"):
                s[f"policy_{where}"] = [_mean(p[where]["regret"]) for p in last]
                s[f"policy_{where}_curve"] = {str(c["evaluations"]): [_mean(r["policy"][k][where]["regret"]) for r in runs]
                                              for k, c in enumerate(runs[0]["policy"])}
                for b in runs[0]["baselines"]:
                    s[f"{b['method']}{b['evaluations']}_{where}"] = [
                        _mean(next(x for x in r["baselines"] if x["method"] == b["method"]
                                   and x["evaluations"] == b["evaluations"])[where]) for r in runs]
            s["policy50_le_evolution200"] = {
                where: _mean(s[f"policy_{where}"]) <= _mean(s[f"evolution200_{where}"]) for where in ("grid", "off")}
        out[name] = s
    return out


def report(raw: dict[str, Any]) -> str:
    """The markdown tables: best-of-N regret per method on and off the grid, distinct archs."""
    n, last = raw["policy_n"], raw["curve"][-1]
    summ = summary(raw)
    lines = [f"Best-of-N specialization regret (the budget's best value minus the true value of the arch with the "
             f"best noisy score among N distinct in-budget archs, each scored once), mean over the 5 grid budgets "
             f"and the 6 off it, mean ± std over seeds {raw['seeds']}. The policy learned from {last} real "
             f"evaluations first (160 rounds of 5, as the default digits run), with options "
             f"{_options_text(raw['options'])}. Generated by `python -m focusformer_fast.experiments.sampler_oracle` "
             f"in {raw['seconds'] / 60:.1f} min (torch {raw['versions'].get('torch', '?')}, CPU).", "",
             "| function | where | policy best-of-" + str(n) + " | "
             + " | ".join(f"{m} @{e}" for m in ("evolution", "random") for e in raw["search_evaluations"])
             + " | policy ≤ evolution @200 |", "|---|---|---|" + "---|" * (2 * len(raw["search_evaluations"]) + 1)]
    for name in raw["functions"]:
        if name in STRUCTURELESS:
            continue
        s = summ[name]
        for where in ("grid", "off"):
            cells = [_fmt(s[f"{m}{e}_{where}"]) for m in ("evolution", "random") for e in raw["search_evaluations"]]
            lines.append(f"| {name} | {'on grid' if where == 'grid' else 'off grid'} | {_fmt(s[f'policy_{where}'])} | "
                         + " | ".join(cells) + f" | {'yes' if s['policy50_le_evolution200'][where] else 'no'} |")
    lines += ["", f"The policy's best-of-{n} regret after 0, 200 and {last} real evaluations (on grid / off grid), "
                  "the distinct archs among its 50 proposals and among 50 independent draws (minimum over the 11 "
                  "budgets and seeds), and the reward estimator's held-out τ per seed:", "",
              "| function | " + " | ".join(f"@{c}" for c in raw["curve"]) + " | distinct proposals | distinct draws "
              "| estimator τ |", "|---|" + "---|" * (len(raw["curve"]) + 3)]
    for name in raw["functions"]:
        s = summ[name]
        curve = ([f"{_mean(s['policy_grid_curve'][str(c)]):.4f} / {_mean(s['policy_off_curve'][str(c)]):.4f}"
                  for c in raw["curve"]] if name not in STRUCTURELESS else ["n/a"] * len(raw["curve"]))
        taus = ", ".join("n/a" if t is None else f"{t:.2f}" for t in s["estimator_tau"])
        lines.append(f"| {name} | " + " | ".join(curve) + f" | {s['distinct_proposals_min']} | "
                     f"{s['distinct_draws_min']} | {taus} |")
    return "\n".join(lines) + "\n"


def _options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items() if k not in ("epsilon", "sampler_warmup"))


def plot(raw: dict[str, Any], path: Path) -> None:
    """Regret vs evaluations per function (on and off the grid): the policy's best-of-N after training,
    evolution and random search at each count, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summary(raw)
    fns = [f for f in raw["functions"] if f not in STRUCTURELESS]
    fig, axes = plt.subplots(2, len(fns), figsize=(4 * len(fns), 6), squeeze=False)
    for col, name in enumerate(fns):
        for row, where in enumerate(("grid", "off")):
            ax = axes[row][col]
            s, xs = summ[name], raw["search_evaluations"]
            for method in ("evolution", "random"):
                ms = [_mean_std(s[f"{method}{e}_{where}"]) for e in xs]
                ax.errorbar(xs, [m for m, _ in ms], yerr=[d for _, d in ms], marker="o", capsize=3, label=method)
            m, d = _mean_std(s[f"policy_{where}"])
            ax.errorbar([raw["policy_n"]], [m], yerr=[d], marker="*", markersize=12, capsize=3, linestyle="none",
                        label=f"policy best-of-{raw['policy_n']}")
            ax.set_xscale("log")
            ax.set_title(f"{name}, {'on' if where == 'grid' else 'off'} grid", fontsize=9)
            ax.set_xlabel("distinct evaluations per budget")
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


def _parse_options(text: str) -> SamplerOptions:
    """``key=value,...`` over :class:`SamplerOptions` fields (values parsed as the train config's fields)."""
    fields = vars(SamplerOptions())
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise UsageError(f"--options: {key!r} is not a sampler option; allowed: {', '.join(fields)}")
        try:
            out[key] = coerce_field(key, value)
        except UsageError as exc:
            raise UsageError(f"--options: {exc}") from None
    opts = SamplerOptions(**{**fields, **out})
    try:
        opts.check()
    except ValueError as exc:
        raise UsageError(f"--options: {exc}") from None
    return opts


def _oracle(argv: Sequence[str] | None) -> None:
    p = Parser(prog="python -m focusformer_fast.experiments.sampler_oracle", description=__doc__.splitlines()[0])
    p.add_argument("--functions", default=",".join(FUNCTIONS), help=f"comma-separated; allowed: {', '.join(FUNCTIONS)}")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated integers (default 0,1,2)")
    p.add_argument("--options", default="", help="sampler options to change, key=value,... (default: the defaults)")
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
        options = _parse_options(a.options)
        torch.set_num_threads(1)
        raw = oracle(functions, seeds, options)
    for f in write_outputs(raw, a.output):
        print(f"wrote {f}")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes."""
    return run_cli(lambda: _oracle(argv))


if __name__ == "__main__":
    sys.exit(main())
