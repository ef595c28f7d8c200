"""``python -m focusformer_fast.experiments.compare``: focus vs uniform vs sandwich at equal budget.

Every sampler trains the same number of steps on the same data with the same seeds (one arch,
one batch per step). Then, per budget of the grid, each supernet is specialized on the val
split (focus: N draws from its policy; uniform, sandwich: N uniform in-budget draws; focus is
also searched with the uniform draws, to tell its weights from its proposals) and the chosen
arch is reported with its test accuracy. Supernet ranking: Kendall τ between inherited and
stand-alone (trained from scratch) test accuracy on a fixed sample of subnets.

Writes ``<output>.md`` (tables), ``<output>.png`` (Pareto fronts) and ``<output>_raw.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..sampler import SAMPLERS
from ..search import accuracy, random_proposals, specialize
from ..space import Arch, SearchSpace
from ..atomic_files import atomic_write
from ..train import TrainConfig, UsageError, coerce_field, run
from .standalone import train_standalone


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
    tau_subnets: int = 12
    standalone_steps: int = 600
    output: str = "docs/comparison"
    work: str = "runs/compare"
    threads: int = 1


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN propagates)."""
    a = np.asarray(xs, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def tau_sample(space: SearchSpace, n: int, seed: int = 1234) -> list[Arch]:
    """``n`` distinct uniform archs (fixed seed: the same sample for every sampler and seed)."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        a = space.sample(rng)
        if a not in out:
            out.append(a)
    return out


def compare(cfg: CompareConfig) -> dict[str, Any]:
    """Train every (sampler, seed), specialize, measure τ; returns the raw results."""
    from scipy.stats import kendalltau

    from ..data import load_dataset, make_loaders

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
            name = res.config.sampler
            rows = [{k: r.get(k) for k in ("budget", "arch", "cost", "val_acc", "test_acc", "scored", "draws")}
                    for r in res.table]
            entry = {"variant": label, "sampler": name, "seed": seed,
                     "proposer": "policy" if name == "focus" else "random", "rows": rows, "seconds": seconds,
                     "train_config": dataclasses.asdict(res.config)}
            inherited = [accuracy(res.net, a, loaders.test, device) for a in subnets]
            tau, p = kendalltau(inherited, standalone)
            entry.update(inherited=inherited, tau=float(tau), tau_p=float(p))
            raw["runs"].append(entry)
            if name == "focus":  # the same supernet, searched like the baselines
                ablation = []
                for i, budget in enumerate(res.config.budgets):
                    flops = res.net.space.flops
                    props = random_proposals(res.net.space, flops, budget, cfg.specialize_n, seed=seed + i)
                    spec = specialize(budget, props, flops, lambda a: accuracy(res.net, a, loaders.val, device))
                    b = spec.best
                    ablation.append({"budget": budget, "arch": b.arch.to_dict(), "cost": b.cost, "val_acc": b.accuracy,
                                     "test_acc": accuracy(res.net, b.arch, loaders.test, device),
                                     "scored": len(spec.candidates), "draws": spec.draws})
                raw["runs"].append({"variant": label, "sampler": name, "seed": seed, "proposer": "random",
                                    "rows": ablation, "seconds": seconds, "ablation": True})
            print(f"{label} seed {seed}: {seconds:.0f}s, tau {tau:.3f}, best test "
                  f"{[round(r['test_acc'], 3) for r in rows]}", flush=True)
    raw["seconds"] = time.perf_counter() - t0
    raw["versions"] = {"torch": str(torch.__version__), "python": sys.version.split()[0]}
    return raw


def _label(run: dict[str, Any]) -> str:
    return f"{run['variant']} ({'π' if run['proposer'] == 'policy' else 'random'} proposals)"


def _grouped(raw: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in raw["runs"]:
        groups.setdefault(_label(r), []).append(r)
    return groups


SAMPLER_FIELDS = ("sampler_lr", "epsilon", "sampler_warmup", "update_every", "samples_per_budget", "entropy_coef",
                  "baseline_decay", "budget_mask", "reward", "reward_batch_size")


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


def markdown(raw: dict[str, Any]) -> str:
    """The comparison as markdown: per-budget accuracy (mean ± std over seeds), τ, settings."""
    cfg = raw["config"]
    groups = _grouped(raw)
    budgets = [row["budget"] for row in raw["runs"][0]["rows"]]
    out = [
        "# FocusFormer sampler vs uniform vs sandwich (digits)",
        "",
        f"Generated by `python -m focusformer_fast.experiments.compare` in {raw['seconds'] / 60:.1f} min "
        f"(torch {raw['versions']['torch']}, CPU, {cfg['threads']} thread(s)). Every sampler trains "
        f"{cfg['steps']} steps (batch 64, one arch per step) on the same data with seeds {cfg['seeds']}; the "
        f"step count was chosen to keep the whole comparison within ~30-40 min of 2-core CPU.",
        f"Selection: per budget, the best of {cfg['specialize_n']} draws on the **val** split with inherited "
        "weights; reported: that arch's **test** accuracy (never selected on test). Budgets in FLOPs (MACs).",
        *_settings(groups),
        "",
        "## Best in-budget test accuracy (%, mean ± std over seeds)",
        "",
        "| budget | " + " | ".join(groups) + " |",
        "|---|" + "---|" * len(groups),
    ]
    for i, b in enumerate(budgets):
        cells = []
        for runs in groups.values():
            m, s = _mean_std([100 * r["rows"][i]["test_acc"] for r in runs])
            cells.append(f"{m:.1f} ± {s:.1f}")
        out.append(f"| {b / 1e6:.2f}M | " + " | ".join(cells) + " |")
    out += ["", "## Same, validation accuracy of the selected arch (%)", "",
            "| budget | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for i, b in enumerate(budgets):
        cells = []
        for runs in groups.values():
            m, s = _mean_std([100 * r["rows"][i]["val_acc"] for r in runs])
            cells.append(f"{m:.1f} ± {s:.1f}")
        out.append(f"| {b / 1e6:.2f}M | " + " | ".join(cells) + " |")
    mean_all = {k: float(np.mean([100 * row["test_acc"] for r in runs for row in r["rows"]]))
                for k, runs in groups.items()}
    out += ["", "Mean over budgets and seeds (test %): "
            + ", ".join(f"{k} {v:.2f}" for k, v in mean_all.items()) + "."]
    base_key = next((k for k, runs in groups.items() if runs[0]["sampler"] == "uniform"), None)
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
            out.append(f"| {b / 1e6:.2f}M | " + " | ".join(cells) + " |")
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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    p = _Parser(prog="python -m focusformer_fast.experiments.compare", description=__doc__.splitlines()[0])
    d = CompareConfig()
    p.add_argument("--seeds", type=_ints, default=d.seeds, help="comma-separated (default 0,1,2)")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="baseline variants, one per sampler")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:FIELD=VALUE,...",
                   help="extra run, e.g. focus-lr3e-4:sampler=focus,sampler_lr=3e-4 (TrainConfig fields)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"supernet steps per run (default {d.steps})")
    p.add_argument("--specialize-n", type=int, default=d.specialize_n)
    p.add_argument("--tau-subnets", type=int, default=d.tau_subnets)
    p.add_argument("--standalone-steps", type=int, default=d.standalone_steps)
    p.add_argument("--output", default=d.output, help="path prefix of the .md/.png/_raw.json outputs")
    p.add_argument("--work", default=d.work, help="directory for the training runs")
    p.add_argument("--threads", type=int, default=d.threads, help="torch intra-op threads (default 1)")
    p.add_argument("--report-only", metavar="RAW_JSON", help="rewrite .md and .png from a raw JSON")
    p.add_argument("--notes", metavar="FILE", help="markdown appended under 'Notes' (kept in the raw JSON)")
    try:
        a = p.parse_args(argv)
        if a.report_only:
            try:
                raw = json.loads(Path(a.report_only).read_text())
            except (OSError, ValueError) as exc:
                raise UsageError(f"raw results {a.report_only!r} are unreadable: {exc}") from None
        else:
            variants = {}
            for s in (s for s in a.samplers.split(",") if s):
                if s not in SAMPLERS:
                    raise UsageError(f"sampler {s!r} is unknown; allowed: {', '.join(SAMPLERS)}")
                variants[s] = {"sampler": s}
            variants.update(_parse_variant(v) for v in a.variant)
            for name in ("steps", "specialize_n", "tau_subnets", "standalone_steps", "threads"):
                if getattr(a, name) <= 0:
                    raise UsageError(f"{name}={getattr(a, name)} must be > 0")
            if a.tau_subnets < 10 or not a.seeds:
                raise UsageError(f"need >= 10 tau subnets (got {a.tau_subnets}) and >= 1 seed")
            raw = compare(CompareConfig(seeds=a.seeds, variants=variants, steps=a.steps, specialize_n=a.specialize_n,
                                        tau_subnets=a.tau_subnets, standalone_steps=a.standalone_steps,
                                        output=a.output, work=a.work, threads=a.threads))
        if a.notes:
            try:
                raw["notes"] = Path(a.notes).read_text()
            except OSError as exc:
                raise UsageError(f"notes file {a.notes!r} is unreadable: {exc}") from None
    except UsageError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for f in write_outputs(raw, a.output):
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
