"""The verdict of ``benchmarks/gpu_quick.sh``: its stages' outcomes, test counts, the stream figures
as ratios to eager sliced PyTorch measured in the same run, the loader's img/s against what the
steps consume, and the focus sampler's cost in end-to-end training as a ratio to uniform sampling.

Reads, in the results folder: ``timeline.tsv`` (stage, start, seconds, status, limit), the stages'
logs (``<stage>.log``: pytest's closing counts), ``stream_benchmark.json`` and
``loader_benchmark.json`` (pytest-benchmark) and ``sampler_e2e.json`` (``train`` with the focus
sampler vs uniform, ``benchmarks/test_sampler_host.py``). Writes ``gpu_quick.json`` (format version
1: device and versions, timeline, per-stage test counts and status, per-mode stream medians with
their ratio to ``torch``, the loader's img/s per source with its ratio to the fused step's
consumption, the sampler's focus/uniform step-time ratio, the targets and whether each was met, and
what was not measured) and ``gpu_quick.md`` (the same as tables).

    python benchmarks/gpu_quick_report.py benchmarks/results/gpu-quick
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from focusformer_fast.utils.atomic_files import atomic_write, write_json_atomic

FORMAT_VERSION = 1
TEST_STAGES = ("tests-cuda", "tests-triton")
BASELINE = "torch"
TARGETS = {"cuda+graphs": 0.5, "triton+graphs": 0.5}  # per-step time / eager torch's, at most
SAMPLER_TARGET = 1.02  # train step time with --sampler focus / with --sampler uniform, at most
MODES = ("torch", "triton", "cuda", "torch+graphs", "triton+graphs", "cuda+graphs")
LOADER_SOURCES = ("files", "cache")
LOADER_TARGET = 1.2  # loader img/s / what the fused step consumes, at least
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)\b")


def timeline(folder: Path) -> list[dict[str, Any]]:
    """The rows of ``timeline.tsv`` (empty if it is missing)."""
    path = folder / "timeline.tsv"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines()[1:]:
        stage, start, seconds, status, limit = line.split("\t")
        rows.append({"stage": stage, "start": int(start), "seconds": int(seconds), "status": int(status),
                     "limit": int(limit)})
    return rows


def closing_counts(log: str) -> dict[str, int]:
    """pytest's closing counts in ``log``, summed over every run in it (``error`` and ``errors`` as ``error``)."""
    counts: dict[str, int] = {}
    for line in log.splitlines():
        if not re.search(r"\b(passed|failed|skipped|errors?|no tests ran)\b.* in [\d.]+s", line):
            continue
        for n, kind in _COUNT.findall(line):
            kind = "error" if kind.startswith("error") else kind
            counts[kind] = counts.get(kind, 0) + int(n)
    return counts


def stage_status(row: dict[str, Any] | None) -> str:
    """``ok``, ``failed``, ``timeout`` (killed at its limit) or ``not run``."""
    if row is None:
        return "not run"
    if row["status"] in (124, 137):
        return "timeout"
    return "ok" if row["status"] == 0 else "failed"


def stream_summary(bench: dict[str, Any]) -> dict[str, Any]:
    """Per mode: median and min ms, ratio of medians to the baseline, first pass, graph stats."""
    runs = {b["extra_info"]["mode"]: b for b in bench.get("benchmarks", [])
            if b.get("extra_info", {}).get("kind") == "train-stream"}
    base = runs.get(BASELINE, {}).get("stats", {}).get("median")
    modes = {}
    for mode, run in runs.items():
        median, info = run["stats"]["median"], run["extra_info"]
        modes[mode] = {
            "median_ms": round(median * 1e3, 3), "min_ms": round(run["stats"]["min"] * 1e3, 3),
            "ratio": None if base is None else round(median / base, 3),
            **{k: info[k] for k in ("first_pass", "graph_stats", "max_memory_gib") if k in info},
        }
    targets = {mode: {"at_most": limit, "ratio": modes.get(mode, {}).get("ratio"),
                      "met": modes.get(mode, {}).get("ratio") is not None and modes[mode]["ratio"] <= limit}
               for mode, limit in TARGETS.items()}
    first = next(iter(runs.values()), {}).get("extra_info", {})
    env = {k: first[k] for k in ("device", "capability", "sm_count", "torch", "cuda", "triton") if k in first}
    return {"baseline": BASELINE, "modes": modes, "targets": targets, "environment": env}


def loader_summary(bench: dict[str, Any]) -> dict[str, Any]:
    """Per source (files, cache): img/s, workers, its ratio to what the fused step consumes, the fused step's time
    with the loader feeding it, and whether the target (ratio >= :data:`LOADER_TARGET`) was met."""
    sources = {}
    for run in bench.get("benchmarks", []):
        info = run.get("extra_info", {})
        if info.get("kind") != "data-loader":
            continue
        sources[info["source"]] = {
            **{k: info[k] for k in ("img_s", "workers", "pin_memory", "ratio_to_fused", "fused_step_with_loader_ms",
                                    "added_share_of_fused_step", "consumes_img_s")},
            "met": info["ratio_to_fused"] >= LOADER_TARGET}
    return {"target_ratio_to_fused": LOADER_TARGET, "sources": sources}


def sampler_summary(e2e: dict[str, Any]) -> dict[str, Any]:
    """The sampler stage's figures and its target: focus / uniform step time at most :data:`SAMPLER_TARGET`."""
    ratio = e2e.get("step_ratio")
    return {**e2e, "target": {"at_most": SAMPLER_TARGET, "ratio": ratio,
                              "met": ratio is not None and ratio <= SAMPLER_TARGET}}


def environment() -> dict[str, Any]:
    """Device and versions, read in a fresh process (so a fault of an earlier stage cannot hide them)."""
    code = ("import json, torch, triton; p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() "
            "else None; print(json.dumps({'device': p and p.name, 'sm_count': p and p.multi_processor_count, "
            "'torch': torch.__version__, 'cuda': torch.version.cuda, 'triton': triton.__version__}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr.strip()[-500:]}


def report(folder: Path, env: dict[str, Any]) -> dict[str, Any]:
    """The verdict of the run whose files are in ``folder``."""
    rows = timeline(folder)
    by_stage = {r["stage"]: r for r in rows}
    stages = {}
    for name in ("build", *TEST_STAGES, "stream", "loader", "sampler"):
        log = folder / f"{name}.log"
        stages[name] = {"status": stage_status(by_stage.get(name)),
                        **({"tests": closing_counts(log.read_text(errors="replace"))} if name in TEST_STAGES and
                           log.exists() else {})}
    bench_path = folder / "stream_benchmark.json"
    stream = stream_summary(json.loads(bench_path.read_text())) if bench_path.exists() else None
    loader_path = folder / "loader_benchmark.json"
    loader = loader_summary(json.loads(loader_path.read_text())) if loader_path.exists() else None
    e2e_path = folder / "sampler_e2e.json"
    sampler = sampler_summary(json.loads(e2e_path.read_text())) if e2e_path.exists() else None
    measured = set(stream["modes"]) if stream else set()
    not_measured = [f"stream mode {m}" for m in MODES if m not in measured]
    not_measured += [f"loader from {s}" for s in LOADER_SOURCES if s not in (loader or {}).get("sources", {})]
    not_measured += [] if sampler else ["sampler focus/uniform train time"]
    not_measured += [f"{name} ({info['status']})" for name, info in stages.items() if info["status"] != "ok"]
    return {"format_version": FORMAT_VERSION, "environment": env, "timeline": rows, "stages": stages,
            "stream": stream, "loader": loader, "sampler": sampler, "not_measured": not_measured}


def markdown(verdict: dict[str, Any]) -> str:
    """``verdict`` as markdown: environment, stages, stream ratios, targets, what was not measured."""
    env = verdict["environment"]
    lines = ["# GPU quick verdict", "",
             ", ".join(f"{k} {v}" for k, v in env.items() if v is not None) or "no environment recorded", "",
             "| stage | status | seconds / limit | tests |", "|---|---|---:|---|"]
    times = {r["stage"]: r for r in verdict["timeline"]}
    for name, info in verdict["stages"].items():
        row = times.get(name)
        seconds = f"{row['seconds']} / {row['limit']}" if row else "-"
        tests = ", ".join(f"{n} {k}" for k, n in info.get("tests", {}).items()) or "-"
        lines.append(f"| {name} | {info['status']} | {seconds} | {tests} |")
    stream = verdict["stream"]
    if stream:
        lines += ["", f"Train step on a stream of 30 random autoformer-t subnets, batch 128, bf16 autocast; "
                      f"ratio: median / `{stream['baseline']}` median, same run.", "",
                  "| mode | median ms | min ms | ratio | first pass |", "|---|---:|---:|---:|---|"]
        for mode in MODES:
            m = stream["modes"].get(mode)
            if m is None:
                lines.append(f"| `{mode}` | not measured | | | |")
                continue
            first = m.get("first_pass", {})
            first_text = ", ".join(f"{k} {v}" for k, v in first.items()) or "-"
            lines.append(f"| `{mode}` | {m['median_ms']:.2f} | {m['min_ms']:.2f} | {m['ratio']} | {first_text} |")
        lines += ["", "| target | ratio | at most | met |", "|---|---:|---:|---|"]
        for mode, t in stream["targets"].items():
            lines.append(f"| `{mode}` | {t['ratio']} | {t['at_most']} | {'yes' if t['met'] else 'no'} |")
    loader = verdict.get("loader")
    if loader and loader["sources"]:
        lines += ["", f"Train loader, 500x375 JPEGs at 224, batch 128 (CUDA defaults); the fused step consumes "
                      f"{next(iter(loader['sources'].values()))['consumes_img_s']['fused']} img/s; target: at least "
                      f"{loader['target_ratio_to_fused']}x that.", "",
                  "| source | workers | img/s | ratio to fused | 12 ms step with the loader, ms | met |",
                  "|---|---:|---:|---:|---:|---|"]
        for source in LOADER_SOURCES:
            s = loader["sources"].get(source)
            if s is None:
                lines.append(f"| {source} | not measured | | | | |")
                continue
            lines.append(f"| {source} | {s['workers']} | {s['img_s']} | {s['ratio_to_fused']} | "
                         f"{s['fused_step_with_loader_ms']} | {'yes' if s['met'] else 'no'} |")
    sampler = verdict.get("sampler")
    if sampler:
        runs, t = sampler["runs"], sampler["target"]
        lines += ["", f"`train` on autoformer-t, synthetic images, batch {sampler['batch_size']}, backend "
                      f"{sampler['backend']}, {sampler['steps']} steps each: step time (median of 10-step windows) "
                      "and wall time, focus vs uniform, same run.", "",
                  "| sampler | step ms | wall s |", "|---|---:|---:|"]
        lines += [f"| {name} | {runs[name]['step_ms']:.2f} | {runs[name]['wall_s']:.1f} |" for name in ("uniform", "focus")]
        lines += ["", f"focus / uniform: step {sampler['step_ratio']}, wall {sampler['wall_ratio']}; target step ratio "
                      f"at most {t['at_most']}: {'met' if t['met'] else 'not met'}."]
    lines += ["", "Not measured: " + ("; ".join(verdict["not_measured"]) or "nothing") + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python benchmarks/gpu_quick_report.py RESULTS_FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    verdict = report(folder, environment())
    write_json_atomic(folder / "gpu_quick.json", verdict, indent=1)
    text = markdown(verdict)
    atomic_write(folder / "gpu_quick.md", lambda f: f.write(text.encode()))
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
