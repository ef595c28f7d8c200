"""``python -m focusformer_fast.profile``: latency tables, their validation, one-subnet timings.

Build a per-block latency table for a preset (and optionally validate it on N held-out subnets)::

    python -m focusformer_fast.profile --space autoformer-t --batch-sizes 1,64 --validate 100

Validate an existing table, or time one subnet on every backend::

    python -m focusformer_fast.profile --table latency_nvidia-h100_autoformer-t.json --validate 100
    python -m focusformer_fast.profile --space digits --arch largest

On a GPU the defaults are bf16, the dense extracted subnet and CUDA-graph replay; the project's
target check (table MAPE <= 1% and Spearman >= 0.99 at batch 1 and 64, table built in <= 60 s)
is one command::

    python -m focusformer_fast.profile --space autoformer-t --batch-sizes 1,64 --validate 100 \
        --output $OUT/latency_autoformer-t.json

User mistakes print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from focusformer_fast import ops
from focusformer_fast.nas.latency.build import (DENSE, DTYPES, build_table, check_batch_sizes, check_dtype,
                                                make_supernet, measure_subnet, timed_backends)
from focusformer_fast.nas.latency.device import device_record, device_slug, resolve_device
from focusformer_fast.nas.latency.table import BatchTable, LatencyTable, block_key, block_shapes
from focusformer_fast.nas.latency.timing import STATISTICS, TimingConfig
from focusformer_fast.nas.latency.validate import summary_lines, validate
from focusformer_fast.space import Arch, SearchSpace, is_space_file, read_space_file
from focusformer_fast.training.runs import run_space
from focusformer_fast.utils.atomic_files import write_json_atomic
from focusformer_fast.utils.cli import Parser, UsageError, add_version, run_cli, say, state_defaults

PROG = "python -m focusformer_fast.profile"


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed; expected comma-separated positive integers, e.g. 1,64") from None
    try:
        return check_batch_sizes(values)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Measure subnet latency on this device; build and validate "
                "per-block latency tables (JSON) for the sampler's latency budget.")
    p.add_argument("--space", help=f"search space: a preset ({', '.join(SearchSpace.preset_names())}), a space "
                   "file (.yaml/.json, as train --space takes), or a training run directory (its exact space: "
                   "the data's classes and channels)")
    p.add_argument("--output", type=Path, help="output JSON (default: ./latency_<device>_<space>.json "
                   "when building a table)")
    p.add_argument("--batch-sizes", type=_positive_ints, default=[1, 64], help="comma-separated (default 1,64)")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--backend", default=DENSE, help="dense (extracted standalone subnet, default) or an ops "
                   f"backend run through the supernet: auto, {', '.join(ops.BACKENDS)}")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay CUDA graphs (default: on for CUDA; not available on CPU)")
    p.add_argument("--validate", type=int, default=0, metavar="N",
                   help="also measure N seeded random subnets and report prediction error and rank correlation")
    p.add_argument("--seed", type=int, default=1, help="seed of the validation subnets (default 1)")
    p.add_argument("--table", type=Path, help="validate this existing table instead of building one")
    p.add_argument("--strict", action="store_true", help="refuse a --table made on another device or version")
    p.add_argument("--arch", help="instead of a table, time one subnet on every available backend (eager, and "
                   "CUDA-graph replay on a GPU): smallest, middle, largest or an Arch JSON object")
    p.add_argument("--chain", type=int, default=4, help="blocks chained per block-shape measurement (default 4)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is steadiest on a "
                   "shared machine)")
    timing = p.add_argument_group("timing (defaults depend on the device)")
    timing.add_argument("--warmup", type=int)
    timing.add_argument("--min-reps", type=int)
    timing.add_argument("--max-reps", type=int)
    timing.add_argument("--max-time", type=float, dest="max_time_s", help="seconds per measurement at most")
    timing.add_argument("--rel-ci", type=float, help="stop when the median's 95%% CI half-width is this "
                        "fraction of the median")
    timing.add_argument("--statistic", choices=STATISTICS, help="what a table entry is made of: median "
                        "(GPU default) or p10 (CPU default: steadier on a busy CPU)")
    timing.add_argument("--flush-l2", action="store_true", default=None, help="flush the L2 cache between reps")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file (default: refuse)")
    add_version(p)
    return state_defaults(p)


def _check_flags(args: argparse.Namespace) -> None:
    """Ranges of the numeric flags, named as typed (before any device or table work)."""
    for dest, flag, low in (("warmup", "--warmup", 0), ("min_reps", "--min-reps", 1), ("max_reps", "--max-reps", 1),
                            ("chain", "--chain", 1), ("validate", "--validate", 0)):
        value = getattr(args, dest)
        if value is not None and value < low:
            raise ValueError(f"{flag}={value} must be >= {low}")
    for dest, flag in (("max_time_s", "--max-time"), ("rel_ci", "--rel-ci")):
        value = getattr(args, dest)
        if value is not None and not value > 0:
            raise ValueError(f"{flag}={value} must be > 0")
    if args.min_reps is not None and args.max_reps is not None and args.min_reps > args.max_reps:
        raise ValueError(f"--min-reps={args.min_reps} must be <= --max-reps={args.max_reps}")


def _timing(args: argparse.Namespace, device: torch.device) -> TimingConfig:
    names = ("warmup", "min_reps", "max_reps", "max_time_s", "rel_ci", "flush_l2", "statistic")
    return TimingConfig.for_device(device, **{n: getattr(args, n) for n in names if getattr(args, n) is not None})


def _dtype(args: argparse.Namespace, device: torch.device) -> str:
    return args.dtype or ("bf16" if device.type == "cuda" else "fp32")


def _space(spec: str) -> SearchSpace:
    """``--space``: a preset, a space file, or the space a training run stored."""
    if spec in SearchSpace.preset_names():
        return SearchSpace.preset(spec)
    if is_space_file(spec):
        return read_space_file(spec)[0]
    if Path(spec).exists():
        return run_space(spec)
    raise ValueError(f"--space={spec!r} is not a preset ({', '.join(SearchSpace.preset_names())}), a space file "
                     f"(.yaml, .yml, .json) or a training run directory")


def _device(name: str) -> tuple[torch.device, dict[str, Any]]:
    device = resolve_device(name)
    record = device_record(device)
    if name == "auto" and device.type == "cpu":
        say("note", f"no CUDA GPU visible; profiling on CPU ({record['name']}, torch threads: {record['torch_threads']})")
    if device.type == "cuda" and "error" in record["nvml"]:
        say("warning", f"{record['nvml']['error']}; the device record has no clocks, power or temperature")
    return device, record


def _check_output(path: Path, overwrite: bool) -> Path:
    if path.is_dir():
        raise ValueError(f"--output={str(path)!r} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise ValueError(f"--output={str(path)!r} exists; give another --output, or --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--output={str(path)!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"--output={str(path)!r} is not writable")
    return path


def _arch(space: SearchSpace, text: str) -> Arch:
    named = {"smallest": space.smallest, "middle": space.middle, "largest": space.largest}
    if text in named:
        return named[text]()
    try:
        arch = Arch.from_json(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--arch={text!r} is not smallest, middle, largest or an Arch JSON object ({exc})") from None
    return space.validate(arch)


def _modes(device: torch.device) -> list[tuple[str, bool]]:
    names = [DENSE, *timed_backends(device.type)]
    graphs = (False, True) if device.type == "cuda" else (False,)
    return [(n, g) for n in names for g in graphs]


def _time_arch(args: argparse.Namespace, space: SearchSpace, device: torch.device, record: dict[str, Any]) -> int:
    arch = _arch(space, args.arch)
    dtype = _dtype(args, device)
    net = make_supernet(space, device, check_dtype(dtype))
    timing = _timing(args, device)
    results = []
    for b in args.batch_sizes:
        for backend, graph in _modes(device):
            t = measure_subnet(net, arch, batch_size=b, backend=backend, graph=graph, timing=timing)
            results.append({"batch_size": b, "backend": backend, "graph": graph, **t.to_dict()})
            print(f"{arch} batch {b} {backend}{' graph' if graph else ''}: {t.median_ms:.4f} ms "
                  f"(p10 {t.p10_ms:.4f}, p90 {t.p90_ms:.4f}, {t.reps} reps)")
    if args.output:
        write_json_atomic(args.output, {"device": record, "space": space.to_dict(), "arch": arch.to_dict(),
                                  "dtype": dtype, "timing": dataclasses.asdict(timing),
                                  "results": results})
    return 0


def _validate(args: argparse.Namespace, table: LatencyTable, device: torch.device) -> dict[str, Any]:
    report = validate(table, args.validate, seed=args.seed, device=device, timing=_timing(args, device))
    for line in summary_lines(report):
        print(line)
    return report


def _validate_existing(args: argparse.Namespace, device: torch.device) -> int:
    if args.validate < 2:
        raise ValueError(f"--table needs --validate N with N >= 2 (got --validate={args.validate})")
    table = LatencyTable.load(args.table, strict=args.strict)
    report = _validate(args, table, device)
    if args.output:
        write_json_atomic(args.output, {"table": str(args.table), "key": table.key(), "validation": report})
    return 0


def _build(args: argparse.Namespace, space: SearchSpace, device: torch.device, record: dict[str, Any]) -> int:
    if args.validate and args.validate < 2:
        raise ValueError(f"--validate={args.validate} must be 0 (off) or >= 2")
    output = args.output or Path(f"latency_{device_slug(record)}_{space.name}.json")
    _check_output(output, args.overwrite)
    if args.chain > max(space.depths):
        raise ValueError(f"--chain={args.chain} must be in [1, {max(space.depths)}] (the space's max depth)")
    table = build_table(space, args.batch_sizes, device=device, dtype=_dtype(args, device),
                          backend=args.backend, graph=args.graph, timing=_timing(args, device), chain=args.chain)
    table.save(output)
    shapes = len(block_shapes(space))
    print(f"wrote {output}: {shapes} block shapes x {len(table.batches)} batch sizes "
          f"({table.dtype}, {table.backend}{', CUDA graphs' if table.graph else ''}) on {table.env['device_name']} "
          f"in {table.build_seconds:.1f} s")
    _report_noise(table)
    if args.validate:
        table.validation = _validate(args, table, device)
        table.save(output)
    return 0


def _report_noise(table: LatencyTable) -> None:
    raw = [t for b in table.batches.values() for t in b.raw.values()]
    missed = sum(t["ci_rel"] > table.timing["rel_ci"] for t in raw)
    if missed:
        say("note", f"{missed} of {len(raw)} measurements reached the time cap before their median's CI was "
             f"within {table.timing['rel_ci']:.2%}; a busy device makes the table noisier (see 'raw' in the file; "
             "on a shared CPU, --threads 1 is steadier)")
    negative = [f"batch {b} {name}" for b, t in table.batches.items() for name, v in _entries(t) if v < 0]
    if negative:
        say("warning", f"{len(negative)} table entries are negative (first: {negative[0]}): the device was too "
             "busy for a steady measurement; rebuild on a quiet device")


def _entries(t: BatchTable) -> list[tuple[str, float]]:
    return [*((f"head/e{e}", v) for e, v in t.head.items()), *((block_key(s), v) for s, v in t.blocks.items())]


def run(args: argparse.Namespace) -> int:
    """Dispatch parsed arguments to one of the three modes; user mistakes raise ``ValueError``."""
    if args.table is None and args.space is None:
        raise ValueError("--space is required (or --table FILE to validate an existing table)")
    _check_flags(args)
    if args.output is not None:
        _check_output(args.output, args.overwrite)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads={args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    device, record = _device(args.device)
    if args.graph and device.type != "cuda":
        raise ValueError(f"--graph needs a CUDA device; this is {device.type} (leave --graph out)")
    if args.table is not None:
        return _validate_existing(args, device)
    space = _space(args.space)
    if args.arch is not None:
        return _time_arch(args, space, device, record)
    return _build(args, space, device, record)


def _checked(argv: Sequence[str] | None) -> int:
    """Parse and :func:`run`; a ``ValueError`` or ``OSError`` here is the user's input, reported as such."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as exc:
        raise UsageError(_as_flags(str(exc))) from None


def _as_flags(message: str) -> str:
    """A library message about an argument (``backend='x' ...``) naming this command's flag instead."""
    for name in ("backend", "device", "graph", "dtype", "chain"):
        if message.startswith(f"{name}="):
            return f"--{message}"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes."""
    return run_cli(lambda: _checked(argv))


if __name__ == "__main__":
    sys.exit(main())
