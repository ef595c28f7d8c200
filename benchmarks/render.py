"""Render a pytest-benchmark JSON of ``benchmarks/test_latency.py`` as markdown tables.

One table per preset and batch size: a row per subnet, a column per mode, each cell the median
latency and its speedup over the dense eager subnet measured in the same run. The header names
the device (and says plainly when it is a CPU).

    python benchmarks/render.py benchmarks/results/latency_cpu-amd-epyc.json [-o out.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, NoReturn, Sequence

KIND = "subnet-latency"
BASELINE = "dense"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def load_runs(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(machine_info + datetime, subnet-latency benchmarks)`` of a pytest-benchmark JSON file."""
    try:
        data = json.loads(path.read_text())
        runs = [b for b in data["benchmarks"] if b.get("extra_info", {}).get("kind") == KIND]
        meta = {**data.get("machine_info", {}), "datetime": data.get("datetime", "")}
    except FileNotFoundError:
        raise ValueError(f"{str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{str(path)!r} is not a pytest-benchmark JSON file ({exc})") from None
    if not runs:
        raise ValueError(f"{str(path)!r} holds no {KIND!r} benchmarks (run benchmarks/test_latency.py)")
    return meta, runs


def mode(info: dict[str, Any]) -> str:
    return info["backend"] + ("+graph" if info["graph"] else "")


def header(meta: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    info = runs[0]["extra_info"]
    where = f"CPU: {info['device']} (no GPU)" if info["device_type"] == "cpu" else f"GPU: {info['device']}"
    return [
        f"# Subnet inference latency on {where}",
        "",
        f"- device: {info['device']} ({info['device_type']}), dtype {info['dtype']}, torch {info['torch']}, "
        f"torch CPU threads: {info['threads']}",
        f"- run: {meta.get('datetime', '')}, Python {meta.get('python_version', '?')}, "
        f"host CPU {meta.get('cpu', {}).get('brand_raw', '?')}",
        "- cells: median ms per forward (speedup over the dense eager subnet of the same run); "
        "`+graph` = CUDA-graph replay; FLOPs are MACs per image",
        "",
    ]


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table of one preset and batch size."""
    modes = sorted({mode(r["extra_info"]) for r in rows}, key=lambda m: (m.split("+")[0] != BASELINE, m))
    cells: dict[str, dict[str, float]] = defaultdict(dict)
    archs: dict[str, tuple[str, int]] = {}
    for r in rows:
        info = r["extra_info"]
        cells[info["arch_label"]][mode(info)] = r["stats"]["median"] * 1e3
        archs[info["arch_label"]] = (info["arch"], info["flops"])
    out = ["| subnet | arch | MFLOPs | " + " | ".join(modes) + " |", "|---|---|---:|" + "---:|" * len(modes)]
    for label, (arch, flops) in archs.items():
        base = cells[label].get(BASELINE)
        values = []
        for m in modes:
            ms = cells[label].get(m)
            ratio = f" ({base / ms:.2f}x)" if ms and base else ""
            values.append("-" if ms is None else f"{ms:.4g}{ratio}")
        out.append(f"| {label} | `{arch}` | {flops / 1e6:.4g} | " + " | ".join(values) + " |")
    return out


def render(meta: dict[str, Any], runs: list[dict[str, Any]], note: str = "") -> str:
    """The whole markdown document; ``note`` is added under the header as a bullet."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["extra_info"]["preset"], r["extra_info"]["batch"])].append(r)
    lines = header(meta, runs)
    if note:
        lines[-1:-1] = [f"- note: {note}"]
    for (preset, batch), rows in groups.items():
        lines += [f"## {preset}, batch {batch}", "", *table(rows), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = _Parser(prog="python benchmarks/render.py", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="pytest-benchmark JSON (--benchmark-json=...)")
    p.add_argument("-o", "--output", type=Path, help="markdown file to write (default: stdout)")
    p.add_argument("--note", default="", help="a line to add under the header (e.g. how busy the machine was)")
    args = p.parse_args(argv)
    try:
        text = render(*load_runs(args.results), note=args.note)
        if args.output:
            args.output.write_text(text)
        else:
            print(text)
    except (ValueError, OSError) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
