"""Render a pytest-benchmark JSON of ``benchmarks/`` as markdown tables.

Every kind of benchmark in the file gets its own tables, each figure beside its baseline
measured in the same run; the header names the device (and says plainly when it is a CPU).

* ``subnet-latency`` (``benchmarks/test_latency.py``): one table per preset and batch size, a row
  per subnet, a column per mode, each cell the median latency and its speedup over the dense
  eager subnet.
* ``op`` (``benchmarks/test_ops_gpu.py``): one table per op, a row per shape and direction, a
  column per mode (``cuda``, ``triton``, ``torch-sliced``, ``contiguous``), each cell the median
  time and its ratio to the group's baseline (``torch-sliced``), and the fastest mode's rate.
* ``train-stream``, ``train-step``, ``forward`` (``benchmarks/test_train_stream.py``): one table
  per group, a row per mode (``torch``, ``triton``, ``cuda``, ``<backend>+graphs``, ...), with
  the median and min time, the ratio to the group's baseline (``torch`` for the stream,
  ``dense-compile`` for the fixed largest subnet) and notes (graph captures/replays, the first
  pass's time and compilations, kernel compilations after warm-up, peak memory).

The baseline of a group is the ``baseline`` its benchmarks record in ``extra_info`` (else the
default of its kind). Ratios of the op and training tables are times, median / baseline median
(lower is faster; the targets in the benchmarks' docstrings are stated the same way).

    python benchmarks/render.py benchmarks/results/latency_cpu-amd-epyc.json [-o out.md] [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

KIND = "subnet-latency"
BASELINE = "dense"
OP_KIND = "op"
TRAIN_KINDS = ("train-stream", "train-step", "forward")
KINDS = (KIND, OP_KIND, *TRAIN_KINDS)
# the baseline mode of a kind's groups when its benchmarks do not record one
BASELINES = {OP_KIND: "torch-sliced", "train-stream": "torch", "train-step": "dense-compile",
             "forward": "dense-compile"}
TRAIN_TITLES = {
    "train-stream": "Supernet train step on a stream of random subnets",
    "train-step": "Train step of the largest subnet, fixed",
    "forward": "Forward of the largest subnet, fixed",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def load_runs(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(machine_info + datetime, the benchmarks of a kind in KINDS)`` of a pytest-benchmark JSON file."""
    try:
        data = json.loads(path.read_text())
        runs = [b for b in data["benchmarks"] if b.get("extra_info", {}).get("kind") in KINDS]
        meta = {**data.get("machine_info", {}), "datetime": data.get("datetime", "")}
    except FileNotFoundError:
        raise ValueError(f"{str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{str(path)!r} is not a pytest-benchmark JSON file ({exc})") from None
    if not runs:
        others = ", ".join(repr(k) for k in KINDS[1:])
        raise ValueError(f"{str(path)!r} holds no {KIND!r} benchmarks (run benchmarks/test_latency.py) "
                         f"nor any of {others} (run benchmarks/test_ops_gpu.py, benchmarks/test_train_stream.py)")
    return meta, runs


def mode(info: dict[str, Any]) -> str:
    return info["backend"] + ("+graph" if info["graph"] else "")


def header(meta: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    info = runs[0]["extra_info"]
    where = f"CPU: {info['device']} (no GPU)" if info["device_type"] == "cpu" else f"GPU: {info['device']}"
    return [
        f"# Subnet inference latency on {where}",
        "",
        (f"- device: {info['device']} ({info['device_type']}), dtype {info['dtype']}, torch {info['torch']}, "
         f"torch CPU threads: {info['threads']}"),
        (f"- run: {meta.get('datetime', '')}, Python {meta.get('python_version', '?')}, "
         f"host CPU {meta.get('cpu', {}).get('brand_raw', '?')}"),
        ("- cells: median ms per forward (speedup over the dense eager subnet of the same run); "
         "`+graph` = CUDA-graph replay; FLOPs are MACs per image"),
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


# -- op and training benchmarks ---------------------------------------------------------------


def run_mode(info: dict[str, Any]) -> str:
    """The mode of an op or training benchmark (older stream runs recorded only ``backend``)."""
    return str(info.get("mode") or info.get("backend", "?"))


def baseline_of(rows: list[dict[str, Any]]) -> str:
    info = rows[0]["extra_info"]
    return str(info.get("baseline") or BASELINES[info["kind"]])


def ordered_modes(rows: list[dict[str, Any]], baseline: str) -> list[str]:
    """The modes of ``rows``: the baseline first, then in the order they were run."""
    modes = list(dict.fromkeys(run_mode(r["extra_info"]) for r in rows))
    return sorted(modes, key=lambda m: m != baseline)


def fmt_ratio(seconds: float | None, base: float | None) -> str:
    return f"{seconds / base:.2f}x" if seconds and base else "-"


def gpu_header(meta: dict[str, Any], runs: list[dict[str, Any]], note: str) -> list[str]:
    info = runs[0]["extra_info"]
    device = info.get("device", "?")
    where = f"CPU: {device} (no GPU)" if info.get("device_type") == "cpu" else f"GPU: {device}"
    details = [f"compute capability {info['capability']}"] if info.get("capability") else []
    details += [f"{info['sm_count']} SMs"] if info.get("sm_count") else []
    versions = ", ".join(f"{name} {info[key]}" for name, key in (("torch", "torch"), ("CUDA", "cuda"),
                                                                  ("triton", "triton")) if info.get(key))
    lines = [
        f"# Sliced ops and supernet training on {where}",
        "",
        f"- device: {device}" + (f" ({', '.join(details)})" if details else "") + (f", {versions}" if versions else ""),
    ]
    if info.get("backends"):
        lines.append(f"- ops backends available: {', '.join(info['backends'])}")
    lines += [
        (f"- run: {meta.get('datetime', '')}, Python {meta.get('python_version', '?')}, "
         f"host CPU {meta.get('cpu', {}).get('brand_raw', '?')}"),
        ("- ratios: median time / median time of the group's baseline in the same run (lower is faster); "
         "`+graphs` = the supernet built with `graphs=True` (per-block CUDA graphs of forward + backward)"),
    ]
    if note:
        lines.append(f"- note: {note}")
    return [*lines, ""]


def _work(info: dict[str, Any]) -> str:
    if "flop" in info:
        return f"{info['flop'] / 1e9:.3g} GFLOP"
    if "bytes" in info:
        return f"{info['bytes'] / 1e6:.3g} MB"
    return "-"


def _rate(info: dict[str, Any]) -> str:
    if "tflops" in info:
        rate = f"{info['tflops']:.3g} TFLOP/s"
    elif "gbps" in info:
        rate = f"{info['gbps']:.4g} GB/s"
    else:
        return ""
    peak = info.get("fraction_of_peak")
    return rate + (f" ({peak:.0%} of peak)" if peak is not None else "")


def op_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table of one op: a row per (shape, direction), a column per mode, the fastest's rate."""
    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        info = r["extra_info"]
        groups[(info["shape"], info["direction"])][run_mode(info)] = r
    baseline = baseline_of(rows)
    modes = ordered_modes(rows, baseline)
    out = ["| shape | dir | work | " + " | ".join(f"`{m}`" for m in modes) + " | fastest |",
           "|---|---|---:|" + "---:|" * len(modes) + "---|"]
    for (shape, direction), by_mode in groups.items():
        medians = {m: r["stats"]["median"] for m, r in by_mode.items()}
        base = medians.get(baseline)
        cells = [f"{medians[m] * 1e6:.4g} us ({fmt_ratio(medians[m], base)})" if m in medians else "-"
                 for m in modes]
        best = min(medians, key=medians.__getitem__)
        rate = _rate(by_mode[best]["extra_info"])
        fastest = f"`{best}`" + (f": {rate}" if rate else "")
        work = _work(next(iter(by_mode.values()))["extra_info"])
        out.append(f"| {shape} | {direction} | {work} | " + " | ".join(cells) + f" | {fastest} |")
    return out


def _notes(info: dict[str, Any]) -> str:
    notes = []
    stats, warm = info.get("graph_stats"), info.get("graph_stats_warmup")
    if stats:
        text = ", ".join(f"{k} {v}" for k, v in stats.items())
        if warm:
            text += f" (after warm-up: {', '.join(f'{k} {v}' for k, v in warm.items())})"
        notes.append(f"graphs: {text}")
    first = info.get("first_pass")
    if first:
        counts = "".join(f", {first[k]} {k}" for k in ("compiled", "tuned") if k in first)
        notes.append(f"first pass: {first['seconds']} s over {first['subnets']} subnets{counts}")
    for key, label in (("warmup_compilations", "compilations in the warm-up stream"),
                       ("new_compilations", "compilations in the timed stream")):
        if key in info:
            notes.append(f"{label}: {info[key]}")
    if "max_memory_gib" in info:
        notes.append(f"peak memory {info['max_memory_gib']:.1f} GiB")
    return "; ".join(notes)


def mode_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table of one training group: a row per mode, the baseline first."""
    baseline = baseline_of(rows)
    by_mode = {run_mode(r["extra_info"]): r for r in rows}
    base = by_mode[baseline]["stats"]["median"] if baseline in by_mode else None
    out = [f"| mode | median ms | min ms | time / `{baseline}` | notes |", "|---|---:|---:|---:|---|"]
    for m in ordered_modes(rows, baseline):
        stats = by_mode[m]["stats"]
        low = stats.get("min")
        out.append(f"| `{m}` | {stats['median'] * 1e3:.4g} | {'-' if low is None else f'{low * 1e3:.4g}'} | "
                   f"{fmt_ratio(stats['median'], base)} | {_notes(by_mode[m]['extra_info'])} |")
    return out


def _context(info: dict[str, Any]) -> str:
    parts = [f"{key} {info[key]}" for key in ("preset", "batch", "subnets", "dtype") if key in info]
    if "arch" in info:
        parts.append(f"arch `{info['arch']}`")
    if "warmup" in info:
        parts.append(f"warm-up: {info['warmup']}")
    return ", ".join(parts)


def gpu_sections(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    ops = [r for r in runs if r["extra_info"]["kind"] == OP_KIND]
    if ops:
        by_op: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in ops:
            by_op[r["extra_info"]["op"]].append(r)
        info = ops[0]["extra_info"]
        shape = f"batch {info.get('batch', '?')} x {info.get('tokens', '?')} tokens, {info.get('dtype', '?')}"
        lines += ["## Per-op timings", "", f"{shape}; cells: median time (time / `{baseline_of(ops)}`)", ""]
        for op, rows in by_op.items():
            lines += [f"### {op}", "", *op_table(rows), ""]
    for kind in TRAIN_KINDS:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in runs:
            if r["extra_info"]["kind"] == kind:
                groups[r.get("group") or kind].append(r)
        for group, rows in groups.items():
            lines += [f"## {TRAIN_TITLES[kind]}: {group}", "", _context(rows[0]["extra_info"]), "",
                      *mode_table(rows), ""]
    return lines


def render(meta: dict[str, Any], runs: list[dict[str, Any]], note: str = "") -> str:
    """The whole markdown document; ``note`` is added under the (first) header as a bullet."""
    latency = [r for r in runs if r["extra_info"]["kind"] == KIND]
    others = [r for r in runs if r["extra_info"]["kind"] != KIND]
    lines: list[str] = []
    if latency:
        groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        for r in latency:
            groups[(r["extra_info"]["preset"], r["extra_info"]["batch"])].append(r)
        lines = header(meta, latency)
        if note:
            lines[-1:-1] = [f"- note: {note}"]
        for (preset, batch), rows in groups.items():
            lines += [f"## {preset}, batch {batch}", "", *table(rows), ""]
    if others:
        lines += [*gpu_header(meta, others, "" if latency else note), *gpu_sections(others)]
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
