"""The specialization table as a figure and a markdown table, written beside its JSON.

``write_report(rows, metric, json_path)`` writes ``<stem>.png`` (cost vs val accuracy: each
budget's val Pareto front over its candidates, the chosen arch of each budget marked, the budgets
as dashed lines) and ``<stem>.md`` (one row per budget) next to ``json_path``. ``rows`` are
:func:`~focusformer_fast.nas.specialize.specialization_table` rows.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from focusformer_fast.nas.costs import fmt_cost
from focusformer_fast.nas.specialize import BELOW_SMALLER
from focusformer_fast.utils.atomic_files import atomic_write


def markdown_table(rows: Sequence[dict[str, Any]], metric: str) -> str:
    """One markdown row per budget: the chosen arch, its cost, val (and test) accuracy, the distinct
    archs evaluated for it, the method and (when timed) the search's seconds; ``*`` marks a val accuracy
    below a smaller budget's (explained under the table)."""
    timed = all("seconds" in r for r in rows)
    lines = [f"| budget ({metric}) | chosen arch | cost | val acc | test acc | evaluations | method |"
             + (" time |" if timed else ""), "|---:|---|---:|---:|---:|---:|---|" + ("---:|" if timed else "")]
    for r in rows:
        tail = f"{r['evaluations']} | {r['method']} |" + (f" {r['seconds']:.1f} s |" if timed else "")
        if "arch" not in r:
            lines.append(f"| {fmt_cost(r['budget'], metric)} | (no arch fits) | | | | {tail}")
            continue
        test = f"{100 * r['test_acc']:.1f}%" if "test_acc" in r else "-"
        mark = "\\*" if "below_smaller" in r else ""
        lines.append(f"| {fmt_cost(r['budget'], metric)} | `{r['arch_str']}` | {fmt_cost(r['cost'], metric)} | "
                     f"{100 * r['val_acc']:.1f}%{mark} | {test} | {tail}")
    if any("below_smaller" in r for r in rows):
        lines += ["", f"\\{BELOW_SMALLER}"]
    return "\n".join(lines) + "\n"


def front_figure(rows: Sequence[dict[str, Any]], metric: str, title: str):
    """A matplotlib Figure of cost (x) vs val accuracy in % (y): fronts, choices, budgets."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.add_subplot()
    front = {(c["cost"], c["val_acc"]) for r in rows for c in r.get("front", [])}
    if front:
        xs, ys = zip(*sorted(front))
        ax.plot(xs, [100 * y for y in ys], "o", color="0.65", ms=4, label="val Pareto front of each budget")
    chosen = [r for r in rows if "arch" in r]
    if chosen:
        ax.plot([r["cost"] for r in chosen], [100 * r["val_acc"] for r in chosen], "o-", color="C3", ms=7,
                label="chosen arch per budget")
    for r in rows:
        ax.axvline(r["budget"], color="C0", ls="--", lw=0.8)
    ax.set_xlabel(f"cost ({metric}); dashed: budgets")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def write_report(rows: Sequence[dict[str, Any]], metric: str, json_path: str | Path, title: str = "") -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.md`` beside ``json_path`` (atomically); returns their paths."""
    base = Path(json_path)
    png, md = base.with_suffix(".png"), base.with_suffix(".md")
    buffer = io.BytesIO()
    front_figure(rows, metric, title or base.stem).savefig(buffer, format="png")
    atomic_write(png, lambda f: f.write(buffer.getvalue()))
    atomic_write(md, lambda f: f.write(markdown_table(rows, metric).encode()))
    return [png, md]
