"""The sampler comparison's report: markdown tables and a plot from the raw results of :mod:`.compare`.

The raw results are ``{"config", "runs": [{"variant", "sampler", "seed", "search", "rows",
"seconds", "tau", ...}], "standalone": [...], "seconds", "versions"}``, one run per supernet and
search method (``search``: policy, evolution, evolution+policy, random; raw results from before
search methods have ``proposer`` instead); every figure is a mean ± sample standard deviation
over seeds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from focusformer_fast.nas.sampler.options import SamplerOptions
from focusformer_fast.utils.atomic_files import atomic_write


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN propagates)."""
    a = np.asarray(xs, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _label(run: dict[str, Any]) -> str:
    if "search" in run:
        return f"{run['variant']} ({run['search']})"
    return f"{run['variant']} ({'π' if run['proposer'] == 'policy' else 'random'} proposals)"


def _budget(b: float, grid: Sequence[float] | None) -> str:
    """``0.95M``, and ``1.27M (off)`` for a budget off the grid the sampler trained on."""
    off = grid is not None and not any(abs(b - g) <= 1e-6 * g for g in grid)
    return f"{b / 1e6:.2f}M" + (" (off)" if off else "")


def _grouped(raw: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in raw["runs"]:
        groups.setdefault(_label(r), []).append(r)
    return groups


SAMPLER_FIELDS = (*(f.name for f in dataclasses.fields(SamplerOptions)), "reward", "reward_batch_size")


def _settings(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line per variant: its sampler and, for focus, the sampler settings it ran with."""
    lines = ["", "Variants (resolved settings of each run):", ""]
    for runs in groups.values():
        r = runs[0]
        if r.get("ablation") or "train_config" not in r:
            continue
        c = r["train_config"]
        extra = ", ".join(f"{k}={c[k]}" for k in SAMPLER_FIELDS) if c["sampler"] == "focus" else ""
        lines.append(f"- `{r['variant']}`: sampler={c['sampler']}, lr={c['lr']}, batch={c['batch_size']}"
                     + (f"; {extra}" if extra else ""))
    return lines


def _accuracy_table(groups: dict[str, list[dict[str, Any]]], budgets: list[float], key: str,
                    grid: Sequence[float] | None) -> list[str]:
    """Markdown rows: per budget, each group's ``key`` accuracy in % (mean ± std over seeds)."""
    lines = ["| budget | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for i, b in enumerate(budgets):
        cells = [f"{m:.1f} ± {s:.1f}" for m, s in
                 (_mean_std([100 * r["rows"][i][key] for r in runs]) for runs in groups.values())]
        lines.append(f"| {_budget(b, grid)} | " + " | ".join(cells) + " |")
    return lines


def _region_means(groups: dict[str, list[dict[str, Any]]], budgets: list[float], grid: Sequence[float]) -> list[str]:
    """Mean test accuracy per group on the grid and off it."""
    lines = ["", "Mean test % on the grid / off it (budgets and seeds):", ""]
    on = [i for i, b in enumerate(budgets) if "(off)" not in _budget(b, grid)]
    off = [i for i in range(len(budgets)) if i not in on]
    for k, runs in groups.items():
        cells = [f"{np.mean([100 * r['rows'][i]['test_acc'] for r in runs for i in idx]):.2f}" if idx else "-"
                 for idx in (on, off)]
        lines.append(f"- {k}: {cells[0]} / {cells[1]}")
    return lines


def _diagnostics(raw: dict[str, Any], groups: dict[str, list[dict[str, Any]]], budgets: list[float]) -> list[str]:
    """Per focus variant and training budget: test accuracy and distinct evaluations of the policy's
    search beside the sampler's end-of-training diagnostics."""
    with_diag = [(k, runs) for k, runs in groups.items() if runs[0].get("diagnostics")]
    if not with_diag:
        return []
    out = ["", "## Sampler diagnostics beside the accuracy (end of training, mean ± std over seeds)", "",
           "KL(π‖masked uniform) in nats (the initial policy's in brackets), entropy of π(·|budget) in nats, "
           "cost/budget quantiles of 200 policy draws per budget (`focusformer_fast.nas.sampler.diagnostics`); "
           "distinct archs the search evaluated (of the N asked; the policy's proposals repeat when it collapses). "
           "Uniform in-budget draws are the reference for the cost quantiles.", "",
           "| budget | variant | test % | KL (init) | entropy | cost/budget p10 / median / p90 | distinct evals |",
           "|---|---|---|---|---|---|---|"]
    ref = {round(r["budget"]): r for r in raw.get("uniform_in_budget", [])}
    trained = [d["budget"] for d in with_diag[0][1][0]["diagnostics"]["budgets"]]
    for j, b in enumerate(trained):
        i = next((i for i, x in enumerate(budgets) if round(x) == round(b)), None)
        if i is None:
            continue
        for k, runs in with_diag:
            d = [r["diagnostics"]["budgets"][j] for r in runs]
            acc, kl, ent = (_mean_std([x for x in xs]) for xs in (
                [100 * r["rows"][i]["test_acc"] for r in runs], [x["kl_uniform"] for x in d], [x["entropy"] for x in d]))
            init = float(np.mean([x["kl_initial"] for x in d]))
            q = [float(np.mean([x[f"cost_{p}"] for x in d])) for p in ("p10", "median", "p90")]
            evals = [r["rows"][i]["evaluations"] for r in runs if "evaluations" in r["rows"][i]]
            out.append(f"| {b / 1e6:.2f}M | {runs[0]['variant']} | {acc[0]:.1f} ± {acc[1]:.1f} | {kl[0]:.3f} ± "
                       f"{kl[1]:.3f} ({init:.3f}) | {ent[0]:.2f} | {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f} | "
                       f"{', '.join(map(str, evals)) or '-'} |")
        u = ref.get(round(b))
        if u is not None:
            out.append(f"| {b / 1e6:.2f}M | uniform in-budget | | | | {u['cost_p10']:.2f} / {u['cost_median']:.2f} / "
                       f"{u['cost_p90']:.2f} | |")
    for k, runs in with_diag:
        taus = [r["diagnostics"]["estimator_tau"] for r in runs]
        if runs[0]["diagnostics"]["reward_model"] == "estimator":
            out.append("")
            out.append(f"{runs[0]['variant']}: reward estimator's Kendall τ on held-out real scores per seed: "
                       + ", ".join("n/a" if t is None else f"{t:.2f}" for t in taus) + ".")
    return out


def markdown(raw: dict[str, Any]) -> str:
    """The comparison as markdown: per-budget accuracy (mean ± std over seeds), τ, settings."""
    cfg = raw["config"]
    groups = _grouped(raw)
    budgets = [row["budget"] for row in raw["runs"][0]["rows"]]
    grid = raw["runs"][0].get("grid")
    if "methods" in cfg:
        selection = (f"Selection: each budget is searched on its own by each method ({', '.join(cfg['methods'])}; "
                     f"evolution starts from {cfg['init']} archs) with {cfg['specialize_n']} distinct in-budget archs "
                     "scored on the **val** split with inherited weights; it chooses among those only. A sampler "
                     "without a policy proposes uniform in-budget archs, i.e. random search.")
    else:
        selection = (f"Selection: per budget, the best of {cfg['specialize_n']} draws on the **val** split with "
                     "inherited weights.")
    out = [
        "# FocusFormer sampler vs uniform vs sandwich (digits)",
        "",
        f"Generated by `python -m focusformer_fast.experiments.compare` in {raw['seconds'] / 60:.1f} min "
        f"(torch {raw['versions']['torch']}, CPU, {cfg['threads']} thread(s)). Every sampler trains "
        f"{cfg['steps']} steps (batch 64, one arch per step) on the same data with seeds {cfg['seeds']}; the "
        f"step count was chosen to keep the whole comparison within ~30-40 min of 2-core CPU.",
        f"{selection} Reported: that arch's **test** accuracy (never selected on test). Budgets in FLOPs (MACs)"
        + ("; (off): a budget off the grid the samplers trained on." if grid else "."),
        *_settings(groups),
        "",
        "## Best in-budget test accuracy (%, mean ± std over seeds)",
        "",
        *_accuracy_table(groups, budgets, "test_acc", grid),
        "",
        "## Same, validation accuracy of the selected arch (%)",
        "",
        *_accuracy_table(groups, budgets, "val_acc", grid),
    ]
    mean_all = {k: float(np.mean([100 * row["test_acc"] for r in runs for row in r["rows"]]))
                for k, runs in groups.items()}
    out += ["", "Mean over budgets and seeds (test %): "
            + ", ".join(f"{k} {v:.2f}" for k, v in mean_all.items()) + "."]
    if grid:
        out += _region_means(groups, budgets, grid)
    uniform = [k for k, runs in groups.items() if runs[0]["sampler"] == "uniform"]
    # AutoFormer's recipe, a uniform supernet searched by evolution, where it was run
    base_key = next((k for k in uniform if groups[k][0].get("method") == "evolution"), uniform[0] if uniform else None)
    if base_key is not None:
        base = {r["seed"]: r for r in groups[base_key]}
        others = [k for k in groups if k != base_key]
        out += ["", f"## Paired difference vs {base_key} (test points, same seed; mean ± std over seeds)", "",
                "| budget | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
        for i, b in enumerate(budgets):
            cells = []
            for k in others:
                d = [100 * (r["rows"][i]["test_acc"] - base[r["seed"]]["rows"][i]["test_acc"]) for r in groups[k]]
                m, s = _mean_std(d)
                cells.append(f"{m:+.1f} ± {s:.1f}")
            out.append(f"| {_budget(b, grid)} | " + " | ".join(cells) + " |")
    out += ["", f"## Supernet ranking: Kendall τ, inherited vs stand-alone test accuracy ({cfg['tau_subnets']} "
            f"uniform subnets, stand-alone = {cfg['standalone_steps']} steps from scratch, same recipe and seed)", "",
            "| sampler | τ per seed | τ mean ± std |", "|---|---|---|"]
    for k, runs in groups.items():
        if runs[0].get("ablation"):
            continue
        taus = [r["tau"] for r in runs]
        m, s = _mean_std(taus)
        out.append(f"| {runs[0]['variant']} | {', '.join(f'{t:.3f}' for t in taus)} | {m:.3f} ± {s:.3f} |")
    sa = raw["standalone"]
    out += ["", f"Stand-alone test accuracy of the τ subnets: {100 * min(r['test_acc'] for r in sa):.1f}% to "
            f"{100 * max(r['test_acc'] for r in sa):.1f}%."]
    out += ["", "## Wall time per supernet run (s, mean)", ""]
    out += [f"- {runs[0]['variant']}: {np.mean([r['seconds'] for r in runs]):.0f}"
            for runs in groups.values() if not runs[0].get("ablation")]
    out += _diagnostics(raw, groups, budgets)
    if raw.get("notes"):
        out += ["", "## Notes", "", raw["notes"].strip()]
    out += ["", "Raw numbers: `comparison_raw.json`; plot: `comparison.png`.", ""]
    return "\n".join(out)


def plot(raw: dict[str, Any], path: Path) -> None:
    """Accuracy-vs-budget fronts (best in-budget test accuracy, mean ± std over seeds), and τ per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _grouped(raw)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    budgets = np.array([row["budget"] for row in raw["runs"][0]["rows"]]) / 1e6
    shift = 0.012 * (budgets[-1] - budgets[0])  # side by side, so the error bars do not hide each other
    for j, (k, runs) in enumerate(groups.items()):
        stats = [_mean_std([100 * r["rows"][i]["test_acc"] for r in runs]) for i in range(len(budgets))]
        ax.errorbar(budgets + (j - (len(groups) - 1) / 2) * shift, [m for m, _ in stats], yerr=[s for _, s in stats],
                    marker="o", capsize=3, label=k, linestyle="--" if runs[0].get("ablation") else "-")
    ax.set_xlabel("budget (M FLOPs = MACs)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("best in-budget arch (selected on val)")
    ax.legend(fontsize=8)
    main_groups = [(k, runs) for k, runs in groups.items() if not runs[0].get("ablation")]
    taus = [_mean_std([r["tau"] for r in runs]) for _, runs in main_groups]
    ax2.bar([runs[0]["variant"] for _, runs in main_groups], [m for m, _ in taus], yerr=[s for _, s in taus],
            capsize=4, color="tab:gray")
    ax2.set_title("Kendall τ (inherited vs stand-alone)")
    ax2.tick_params(axis="x", labelrotation=25)
    fig.tight_layout()
    buf_path = path.with_suffix(".tmp.png")
    fig.savefig(buf_path, dpi=120)
    plt.close(fig)
    buf_path.replace(path)


def write_outputs(raw: dict[str, Any], output: str) -> list[Path]:
    """``<output>.md``, ``<output>.png`` and ``<output>_raw.json``, each written atomically."""
    base = Path(output)
    base.parent.mkdir(parents=True, exist_ok=True)
    md, png, js = base.with_suffix(".md"), base.with_suffix(".png"), base.parent / f"{base.name}_raw.json"
    atomic_write(js, lambda f: f.write(json.dumps(raw, indent=1).encode()))
    atomic_write(md, lambda f: f.write(markdown(raw).encode()))
    plot(raw, png)
    return [md, png, js]
