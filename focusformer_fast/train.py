"""``python -m focusformer_fast.train``: train a supernet together with an arch sampler.

Each step draws one subnet from the sampler (FocusFormer's π(arch | budget), or the uniform /
sandwich baselines), trains it on one batch, and lets the sampler learn from accuracy
estimates of the shared weights on a validation batch. At the end it specializes every
budget of the grid (search.specialize: best in-budget arch on val, reported with test
accuracy too) and prints the table.

Run directory (``--output``, default ``runs/<time>-<sampler>-s<seed>``):
  ``run.json``       resolved config, seed, versions, device, world size, resumes
  ``metrics.jsonl``  one record every ``log_every`` steps (loss, lr, arch, cost, throughput, sampler stats)
  ``checkpoint.pt``  everything needed to continue bit-for-bit on CPU (written atomically)
  ``results.json``   the specialization table

Multi-GPU/multi-node: ``torchrun --nproc-per-node N -m focusformer_fast.train ...`` (gloo on
CPU, nccl on CUDA). Every rank draws the same arch from a shared seeded stream, rewards are
summed over ranks so sampler updates are identical, and DDP (find_unused_parameters: each
subnet leaves super-weights unused) averages the gradients. ``--batch-size`` is per rank.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import __version__, ops
from .atomic_files import atomic_write, write_json_atomic
from .sampler import (METRICS, SAMPLERS, ArchSampler, CostFn, budget_grid, check_budgets, make_cost_fn,
                      make_sampler)
from .search import accuracy, fmt_cost, format_table, likelihood, specialization_table
from .space import Arch, SearchSpace
from .supernet import Supernet

if TYPE_CHECKING:
    from .data import DataSplits, Loaders

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
DEFAULT_STEPS = 2000
# Fields that may differ from the checkpoint's config on --resume; they do not change the result.
REWARDS = ("accuracy", "likelihood")
RESUME_OVERRIDES = ("resume", "stop_at", "backend", "graphs", "progress")


class UsageError(ValueError):
    """A user mistake (bad flag, config, path or checkpoint): reported in one line, no traceback."""


@dataclass
class TrainConfig:
    """Everything a run depends on. Units: steps are optimizer steps, budgets are in ``budget_metric`` units."""

    space: str = "digits"
    data: str = "digits"
    sampler: str = "focus"
    budget_metric: str = "flops"
    latency_table: str | None = None
    budgets: list[float] | None = None  # default: a grid of num_budgets over the space's cost range
    num_budgets: int = 5
    steps: int | None = None  # default DEFAULT_STEPS, or epochs * batches per epoch
    epochs: int | None = None
    batch_size: int = 64  # per rank
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    lr_warmup_steps: int | None = None  # default 5% of steps
    smoothing: float = 0.0
    mixup: float = 0.0
    drop_path: float = 0.0
    clip_grad: float | None = None
    # auto: none for digits (its 1-px shifts of 8x8 images cost ~30 points of val accuracy at 600 steps),
    # basic otherwise; see data.load_dataset
    augment: str | None = "auto"
    val_fraction: float = 0.1
    seed: int = 0
    output: str | None = None
    resume: str | None = None
    stop_at: int | None = None  # stop (with a checkpoint) after this global step, as if interrupted
    backend: str = "auto"
    graphs: bool = False  # CUDA graphs per block shape (Supernet(graphs=True)); no effect on CPU
    device: str | None = None  # default: cuda if available
    num_workers: int = 0
    threads: int | None = None  # torch intra-op threads (process-wide); default: 1 for digits on CPU, else torch's
    epsilon: float = 0.2
    sampler_warmup: int | None = None  # default 20% of steps
    update_every: int = 10
    samples_per_budget: int = 1
    sampler_lr: float = 3e-4  # PNAG's; 3e-3 concentrated the policy faster and scored 0.4 points lower on digits
    entropy_coef: float = 1e-3
    baseline_decay: float = 0.9
    budget_mask: bool = True
    reward: str = "accuracy"  # the sampler's score of a subnet on a val batch: accuracy or likelihood
    reward_batch_size: int = 256
    specialize_n: int = 50
    log_every: int = 10
    checkpoint_every: int = 500
    progress: bool = True


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced, for callers in the same process."""

    output: Path
    step: int  # global steps completed
    archs: list[Arch]  # arch trained at each step run by this process
    losses: list[float]  # this rank's loss at each of those steps
    table: list[dict[str, Any]]  # specialization rows (empty if stopped early)
    net: Supernet
    sampler: ArchSampler
    config: TrainConfig


# -- config ------------------------------------------------------------------------------
_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_budget(v: Any) -> float:
    """A budget from a number or a string like ``1.5e6``, ``300k``, ``1.2M``, ``0.9G``."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    m = re.fullmatch(r"\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*([kmgtKMGT]?)\s*", str(v))
    if not m:
        raise UsageError(f"budget {v!r} is not a number; allowed: e.g. 1.2e6, 300k, 1.2M, 0.9G")
    try:
        return float(m.group(1)) * _SUFFIX.get(m.group(2).lower(), 1.0)
    except ValueError:
        raise UsageError(f"budget {v!r} is not a number; allowed: e.g. 1.2e6, 300k, 1.2M, 0.9G") from None


def _budget_list(v: Any) -> list[float]:
    items = v if isinstance(v, (list, tuple)) else [s for s in str(v).split(",") if s.strip()]
    return [parse_budget(x) for x in items]


def _check_config(cfg: TrainConfig) -> None:
    """Raise :class:`UsageError` naming the first field that is out of range."""
    choices = {"space": SearchSpace.preset_names(), "sampler": SAMPLERS, "budget_metric": METRICS,
               "reward": REWARDS,
               "backend": ("auto",) + ops.BACKENDS}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise UsageError(f"{name}={getattr(cfg, name)!r} is unknown; allowed: {', '.join(allowed)}")
    if cfg.device not in (None, "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise UsageError(f"device={cfg.device!r} is not allowed; allowed: cpu, cuda, cuda:N")
    positive = ("num_budgets", "batch_size", "lr", "update_every", "samples_per_budget", "sampler_lr",
                "reward_batch_size", "specialize_n", "log_every", "checkpoint_every", "steps", "epochs", "stop_at",
                "threads")
    for name in positive:
        v = getattr(cfg, name)
        if v is not None and not v > 0:
            raise UsageError(f"{name}={v!r} must be > 0")
    non_negative = ("min_lr", "weight_decay", "lr_warmup_steps", "smoothing", "mixup", "drop_path", "num_workers",
                    "sampler_warmup", "entropy_coef")
    for name in non_negative:
        v = getattr(cfg, name)
        if v is not None and not v >= 0:
            raise UsageError(f"{name}={v!r} must be >= 0")
    for name, lo, hi in (("epsilon", 0.0, 1.0), ("baseline_decay", 0.0, 1.0), ("smoothing", 0.0, 0.99),
                         ("drop_path", 0.0, 0.99), ("val_fraction", 1e-9, 1 - 1e-9)):
        v = getattr(cfg, name)
        if not lo <= v <= hi:
            raise UsageError(f"{name}={v!r} must be in [{lo:g}, {hi:g}]")
    if cfg.steps is not None and cfg.epochs is not None:
        raise UsageError(f"give steps ({cfg.steps}) or epochs ({cfg.epochs}), not both")
    if cfg.clip_grad is not None and not cfg.clip_grad > 0:
        raise UsageError(f"clip_grad={cfg.clip_grad!r} must be > 0")
    if cfg.mixup > 0 and cfg.batch_size % 2:
        raise UsageError(f"mixup needs an even batch_size, got {cfg.batch_size}")
    if cfg.budgets is not None:
        for b in cfg.budgets:
            if not (math.isfinite(b) and b > 0):
                raise UsageError(f"budget {b:g} must be a positive finite number")
    if cfg.budget_metric == "latency" and cfg.latency_table is None:
        raise UsageError("budget_metric='latency' needs --latency-table FILE")
    if cfg.latency_table is not None and not Path(cfg.latency_table).is_file():
        raise UsageError(f"latency_table {cfg.latency_table!r} does not exist")


def coerce_field(name: str, value: Any) -> Any:
    """A YAML (or command-line string) value converted to the type of field ``name``."""
    if value is None:
        return None
    if name == "budgets":
        return _budget_list(value)
    default = TrainConfig.__dataclass_fields__[name].default
    kind = type(default) if default is not None else _OPTIONAL_TYPES.get(name, str)
    if kind is bool:
        flags = {"true": True, "false": False}
        if not isinstance(value, bool) and str(value).lower() not in flags:
            raise UsageError(f"config field {name}={value!r} must be true or false")
        return value if isinstance(value, bool) else flags[str(value).lower()]
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"config field {name}={value!r} must be a {kind.__name__}") from None


_OPTIONAL_TYPES = {"threads": int, "steps": int, "epochs": int, "lr_warmup_steps": int, "clip_grad": float, "stop_at": int,
                   "sampler_warmup": int}


def load_yaml(path: str) -> dict[str, Any]:
    """Fields from a YAML mapping; keys may use ``-`` or ``_``."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {path!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path!r} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path!r} must hold a mapping of field: value")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key not in names:
            raise UsageError(f"config file {path!r} has unknown field {k!r}; allowed: {', '.join(sorted(names))}")
        out[key] = coerce_field(key, v)
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; we want one line
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m focusformer_fast.train", argument_default=argparse.SUPPRESS,
                description="Train a weight-sharing ViT supernet with an architecture sampler.")
    p.add_argument("--config", help="YAML file of defaults (field: value); flags override it")
    p.add_argument("--space", help=f"search space preset: {', '.join(SearchSpace.preset_names())} (default digits)")
    p.add_argument("--data", help="'digits' (bundled), a CIFAR-100 folder, or an ImageFolder root")
    p.add_argument("--sampler", help=f"{', '.join(SAMPLERS)} (default focus)")
    p.add_argument("--budget-metric", help=f"{', '.join(METRICS)} (default flops, i.e. MACs)")
    p.add_argument("--latency-table", help="latency table file (profiler) for --budget-metric latency")
    p.add_argument("--budgets", type=_budget_list, help="comma-separated budgets, e.g. 1M,2M,3.5M (default: 5-point grid)")
    p.add_argument("--num-budgets", type=int, help="size of the default budget grid (default 5)")
    p.add_argument("--steps", type=int, help=f"optimizer steps (default {DEFAULT_STEPS})")
    p.add_argument("--epochs", type=int, help="epochs instead of --steps")
    p.add_argument("--batch-size", type=int, help="images per step per rank (default 64)")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate (default 1e-3)")
    p.add_argument("--min-lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--lr-warmup-steps", type=int)
    p.add_argument("--smoothing", type=float, help="label smoothing (default 0)")
    p.add_argument("--mixup", type=float, help="mixup alpha (default 0: off)")
    p.add_argument("--drop-path", type=float)
    p.add_argument("--clip-grad", type=float)
    p.add_argument("--augment", help="auto (default: none for digits, basic otherwise), none, basic, "
                                     "or a timm RandAugment string like rand-m9-mstd0.5-inc1")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--output", help="run directory (default runs/<time>-<sampler>-s<seed>)")
    p.add_argument("--resume", help="run directory or checkpoint file to continue")
    p.add_argument("--stop-at", type=int, help="stop with a checkpoint after this global step")
    p.add_argument("--backend", help=f"ops backend: auto, {', '.join(ops.BACKENDS)}")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: 1 for digits on CPU, else torch's)")
    p.add_argument("--epsilon", type=float, help="focus: probability of a uniform arch (default 0.2)")
    p.add_argument("--sampler-warmup", type=int, help="focus: uniform steps first (default 20%% of steps)")
    p.add_argument("--update-every", type=int, help="focus: REINFORCE update every k steps (default 10)")
    p.add_argument("--samples-per-budget", type=int)
    p.add_argument("--sampler-lr", type=float)
    p.add_argument("--entropy-coef", type=float)
    p.add_argument("--baseline-decay", type=float)
    p.add_argument("--budget-mask", action=argparse.BooleanOptionalAction,
                   help="focus: mask choices that cannot fit the budget (default on)")
    p.add_argument("--reward", help="focus: score of a subnet on a val batch: accuracy (default) or likelihood "
                                    "(exp of minus the mean cross-entropy)")
    p.add_argument("--reward-batch-size", type=int)
    p.add_argument("--specialize-n", type=int, help="archs drawn per budget in the final table (default 50)")
    p.add_argument("--log-every", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction)
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction,
                   help="CUDA: capture each block shape's forward+backward as CUDA graphs once and replay them"
                        " for every subnet (default off)")
    return p


def resolve_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Defaults, then ``--config`` YAML, then flags; with ``--resume``, the checkpoint's config.

    On resume only :data:`RESUME_OVERRIDES` may differ from the checkpoint's config.
    """
    given = vars(build_parser().parse_args(argv))
    explicit = load_yaml(given.pop("config")) if "config" in given else {}
    explicit.update(given)
    if explicit.get("augment") == "none":
        explicit["augment"] = None
    if explicit.get("resume"):
        saved = TrainConfig(**read_checkpoint(checkpoint_path(explicit["resume"]))["config"])
        for name, v in explicit.items():
            if name not in RESUME_OVERRIDES and v != getattr(saved, name):
                raise UsageError(f"{name}={v!r} cannot change on --resume (the checkpoint has {getattr(saved, name)!r})")
        cfg = dataclasses.replace(saved, **{k: v for k, v in explicit.items() if k in RESUME_OVERRIDES})
    else:
        cfg = TrainConfig(**explicit)
    _check_config(cfg)
    return cfg


# -- checkpoints -------------------------------------------------------------------------
def checkpoint_path(resume: str | os.PathLike) -> Path:
    """The checkpoint a run path (``--resume``) names: a file, or ``checkpoint.pt`` in a directory."""
    p = Path(resume)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise UsageError(f"checkpoint {str(p)!r} does not exist")
    return p


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and sanity-check a checkpoint; :class:`UsageError` if it is corrupt or foreign."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UsageError(f"checkpoint {str(path)!r} is corrupt or not a focusformer_fast checkpoint "
                         f"({type(exc).__name__}: {first})") from None
    needed = {"format_version", "config", "step", "supernet", "optimizer", "scheduler", "sampler", "rng", "position",
              "world_size"}
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        raise UsageError(f"checkpoint {str(path)!r} is not a focusformer_fast training checkpoint")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise UsageError(f"checkpoint {str(path)!r} has format_version={ckpt['format_version']}; "
                         f"this version reads {FORMAT_VERSION}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(ckpt["config"], dict) or set(ckpt["config"]) != names:
        raise UsageError(f"checkpoint {str(path)!r} has a config with other fields than this version's")
    return ckpt


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- distributed -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def on(self) -> bool:
        return self.world > 1


def _init_distributed(device: str | None) -> tuple[_Dist, bool]:
    """Join the torchrun/env:// process group if WORLD_SIZE > 1; returns (ranks, created here)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), False
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    created = not dist.is_initialized()
    if created:
        use_cuda = torch.cuda.is_available() and device != "cpu"
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return _Dist(rank, world, local), created


# -- the run -----------------------------------------------------------------------------
@dataclass
class _Position:
    """Where the training stream is: the next batch is batch ``batch`` of epoch ``epoch``."""

    epoch: int = 0
    batch: int = 0
    reward_batches: int = 0  # validation batches consumed by sampler updates


@dataclass
class _Setup:
    cfg: TrainConfig
    ranks: _Dist
    device: torch.device
    space: SearchSpace
    splits: DataSplits
    loaders: Loaders
    eval_loaders: Loaders  # reward_batch_size batches, for rewards and the final table
    cost_fn: CostFn
    budgets: tuple[float, ...]
    out: Path
    ckpt: dict[str, Any] | None


def _pick_device(cfg: TrainConfig, ranks: _Dist) -> torch.device:
    want = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device={want!r} is not available: no CUDA GPU visible")
        return torch.device(want if ":" in want else f"cuda:{ranks.local_rank}")
    return torch.device("cpu")


def _default_output(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.sampler}-s{cfg.seed}"


def _prepare(cfg: TrainConfig, ranks: _Dist) -> _Setup:
    """Check everything a run needs and load data and checkpoint; writes nothing."""
    from .data import make_loaders  # timm/torchvision/sklearn: not needed to reject bad flags
    ckpt = None
    if cfg.resume:
        path = checkpoint_path(cfg.resume)
        ckpt = read_checkpoint(path)
        saved = TrainConfig(**ckpt["config"])
        out = path.parent
        cfg = dataclasses.replace(saved, output=str(out), **{k: getattr(cfg, k) for k in RESUME_OVERRIDES})
        if ckpt["world_size"] != ranks.world:
            raise UsageError(f"checkpoint was written by {ckpt['world_size']} ranks; this run has {ranks.world}")
    else:
        out = Path(cfg.output) if cfg.output else _default_output(cfg)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"output {str(out)!r} already exists and is not empty; use --resume {out} or another --output")
    _check_config(cfg)
    device = _pick_device(cfg, ranks)
    if cfg.augment == "auto":
        cfg = dataclasses.replace(cfg, augment=None if cfg.data == "digits" else "basic")
    if cfg.threads is None:
        # digits tensors are tiny: on a shared 2-core CPU, 1 thread ran 200 steps in 15 s, 2 threads in 31-93 s
        tiny = device.type == "cpu" and cfg.space == "digits"
        cfg = dataclasses.replace(cfg, threads=1 if tiny else torch.get_num_threads())
    space, splits, cost_fn = _space_data_cost(cfg)
    try:
        budgets = check_budgets(space, cost_fn, cfg.budgets) if cfg.budgets else budget_grid(space, cost_fn, cfg.num_budgets)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    loaders = make_loaders(splits, cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers, distributed=ranks.on)
    eval_loaders = make_loaders(splits, cfg.reward_batch_size, seed=cfg.seed, num_workers=cfg.num_workers,
                                distributed=ranks.on)
    steps_per_epoch = len(loaders.train)
    if steps_per_epoch == 0:
        raise UsageError(f"batch_size={cfg.batch_size} exceeds the {len(splits.train)} training images per rank")
    if cfg.steps is None:
        steps = cfg.epochs * steps_per_epoch if cfg.epochs else DEFAULT_STEPS
        cfg = dataclasses.replace(cfg, steps=steps, epochs=None)
    if cfg.lr_warmup_steps is None:
        cfg = dataclasses.replace(cfg, lr_warmup_steps=cfg.steps // 20)
    if cfg.sampler_warmup is None:
        cfg = dataclasses.replace(cfg, sampler_warmup=cfg.steps // 5)
    cfg = dataclasses.replace(cfg, output=str(out), budgets=list(budgets))
    return _Setup(cfg, ranks, device, space, splits, loaders, eval_loaders, cost_fn, budgets, out, ckpt)


def _space_data_cost(cfg: TrainConfig) -> tuple[SearchSpace, DataSplits, CostFn]:
    """The run's space (with the data's class count), its data splits and its cost function."""
    from .data import load_dataset

    space = SearchSpace.preset(cfg.space)
    try:
        splits = load_dataset(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, augment=cfg.augment,
                              image_size=None if cfg.data == "digits" else space.image_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if (splits.image_size, splits.in_chans) != (space.image_size, space.in_chans):
        raise UsageError(f"space {cfg.space!r} takes {space.image_size}x{space.image_size}x{space.in_chans} images; "
                         f"data {cfg.data!r} has {splits.image_size}x{splits.image_size}x{splits.in_chans}")
    space = dataclasses.replace(space, num_classes=splits.num_classes)
    try:
        cost_fn = make_cost_fn(space, cfg.budget_metric, cfg.latency_table)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return space, splits, cost_fn


@dataclass
class TrainedRun:
    """A run's checkpoint loaded for search: the supernet (eval mode) and sampler on ``device``."""

    checkpoint: Path
    config: TrainConfig
    step: int
    device: torch.device
    space: SearchSpace
    splits: DataSplits
    cost_fn: CostFn
    net: Supernet
    sampler: ArchSampler


def load_run(run: str | os.PathLike, *, device: str | None = None, latency_table: str | None = None) -> TrainedRun:
    """Load the checkpoint of a training run (its directory or ``checkpoint.pt``), with its data splits.

    Args:
        run: what ``--output`` of ``python -m focusformer_fast.train`` named, or its checkpoint file.
        device: ``cpu``, ``cuda``, ``cuda:1``; default the run's, else cuda when available.
        latency_table: for latency runs, a table measured on this machine instead of the run's.

    Raises :class:`UsageError` naming the problem (missing or foreign checkpoint, data, table).
    """
    path = checkpoint_path(run)
    ckpt = read_checkpoint(path)
    cfg = TrainConfig(**ckpt["config"])
    cfg = dataclasses.replace(cfg, device=device or cfg.device, latency_table=latency_table or cfg.latency_table)
    dev = _pick_device(cfg, _Dist())
    space, splits, cost_fn = _space_data_cost(cfg)
    net = Supernet(space, drop_path_rate=cfg.drop_path).to(dev)
    net.load_state_dict(ckpt["supernet"])
    sampler = _make_sampler(cfg, space, cost_fn, cfg.budgets)
    sampler.load_state_dict(ckpt["sampler"])
    return TrainedRun(path, cfg, ckpt["step"], dev, space, splits, cost_fn, net.eval(), sampler)


def _build(s: _Setup):
    """Supernet, optimizer, schedule, loss, mixup and sampler, all seeded from ``cfg.seed``."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    cfg = s.cfg
    torch.manual_seed(cfg.seed)
    net = Supernet(s.space, drop_path_rate=cfg.drop_path, graphs=cfg.graphs).to(s.device)
    optimizer = create_optimizer_v2(net, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=cfg.steps, lr_min=cfg.min_lr, warmup_t=cfg.lr_warmup_steps,
                                  warmup_lr_init=cfg.lr * 0.01, t_in_epochs=False)
    mixup = (Mixup(mixup_alpha=cfg.mixup, label_smoothing=cfg.smoothing, num_classes=s.space.num_classes)
             if cfg.mixup > 0 else None)
    if mixup is not None:
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif cfg.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    sampler = _make_sampler(cfg, s.space, s.cost_fn, s.budgets)
    return net, optimizer, scheduler, criterion, mixup, sampler


def _make_sampler(cfg: TrainConfig, space: SearchSpace, cost_fn: CostFn, budgets: Sequence[float]) -> ArchSampler:
    return make_sampler(cfg.sampler, space, cost_fn, budgets, seed=cfg.seed, epsilon=cfg.epsilon,
                        warmup_steps=cfg.sampler_warmup, update_every=cfg.update_every,
                        samples_per_budget=cfg.samples_per_budget, lr=cfg.sampler_lr,
                        entropy_coef=cfg.entropy_coef, baseline_decay=cfg.baseline_decay,
                        budget_mask=cfg.budget_mask)


class _Batches:
    """Resumable iterator over training batches (epochs reseeded through ``Loaders.set_epoch``)."""

    def __init__(self, loaders: Loaders, pos: _Position):
        self.loaders, self.pos = loaders, pos
        self.it: Iterator | None = None

    def start(self) -> None:
        """Fast-forward to ``pos`` by replaying the epoch's first ``pos.batch`` batches (exact, costs their loading)."""
        self.loaders.set_epoch(self.pos.epoch)
        self.it = iter(self.loaders.train)
        for _ in range(self.pos.batch):
            next(self.it)

    def next(self) -> tuple[Tensor, Tensor]:
        try:
            batch = next(self.it)
        except StopIteration:
            self.pos.epoch, self.pos.batch = self.pos.epoch + 1, 0
            self.start()
            batch = next(self.it)
        self.pos.batch += 1
        return batch


class _Cycle:
    """Validation batches for sampler rewards, cycling over the (deterministic) val loader."""

    def __init__(self, loader, pos: _Position):
        self.loader, self.pos = loader, pos
        self.it = iter(loader)
        for _ in range(pos.reward_batches % len(loader)):
            next(self.it)

    def next(self) -> tuple[Tensor, Tensor]:
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            batch = next(self.it)
        self.pos.reward_batches += 1
        return batch


def _versions(device: torch.device) -> dict[str, Any]:
    import timm

    info = {"python": platform.python_version(), "torch": str(torch.__version__), "timm": timm.__version__,
            "numpy": np.__version__, "focusformer_fast": __version__, "platform": platform.platform(),
            "device": str(device)}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def _save_checkpoint(s: _Setup, step: int, pos: _Position, net, optimizer, scheduler, sampler) -> None:
    """Gather every rank's RNG state and write the checkpoint (rank 0) atomically."""
    rng = [_rng_state()]
    if s.ranks.on:
        rng = [None] * s.ranks.world
        dist.all_gather_object(rng, _rng_state())
    if s.ranks.rank == 0:
        ckpt = {"format_version": FORMAT_VERSION, "config": dataclasses.asdict(s.cfg), "step": step,
                "position": dataclasses.asdict(pos), "world_size": s.ranks.world,
                "supernet": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(), "rng": rng,
                "versions": _versions(s.device)}
        atomic_write(s.out / CHECKPOINT_NAME, lambda f: torch.save(ckpt, f))
    if s.ranks.on:
        dist.barrier()


def _record_step(line: str) -> float:
    """Step of a metrics line; infinity for a torn or foreign line (dropped on resume)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _start_files(s: _Setup, step: int) -> None:
    """Create the run directory and ``run.json``; on resume, drop metrics past the checkpoint."""
    s.out.mkdir(parents=True, exist_ok=True)
    info_path = s.out / "run.json"
    if s.ckpt is None:
        info = {"config": dataclasses.asdict(s.cfg), "seed": s.cfg.seed, "world_size": s.ranks.world,
                "versions": _versions(s.device), "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "resumes": []}
    else:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {"config": dataclasses.asdict(s.cfg)}
        info.setdefault("resumes", []).append({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                               "versions": _versions(s.device), "argv": sys.argv})
        metrics = s.out / "metrics.jsonl"
        if metrics.is_file():
            keep = [ln for ln in metrics.read_text().splitlines() if _record_step(ln) <= step]
            atomic_write(metrics, lambda f: f.write("".join(ln + "\n" for ln in keep).encode()))
    write_json_atomic(info_path, info)


def run(cfg: TrainConfig) -> TrainResult:
    """Train (or, with ``cfg.resume``, continue) a run; then specialize each budget.

    Raises :class:`UsageError` before writing anything if the config, data, latency table
    or checkpoint is unusable. Inside torchrun (WORLD_SIZE > 1) joins the process group.
    """
    ranks, created = _init_distributed(cfg.device)
    try:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(ops.set_backend(cfg.backend))
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            s = _prepare(cfg, ranks)
            if ranks.on:  # every rank checked the output before rank 0 creates it; one name for all
                dist.barrier()
                shared = [str(s.out)]
                dist.broadcast_object_list(shared, 0)
                s.out = Path(shared[0])
                s.cfg = dataclasses.replace(s.cfg, output=shared[0])
            return _train(s)
    finally:
        if created:
            dist.destroy_process_group()


def _train(s: _Setup) -> TrainResult:
    cfg, ranks, device = s.cfg, s.ranks, s.device
    torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # kernels, streams and CUDA graphs of this rank on its own GPU
    if cfg.graphs and device.type != "cuda" and ranks.rank == 0:
        print(f"note: --graphs has no effect on {device.type}: CUDA graphs need a CUDA device", file=sys.stderr)
    net, optimizer, scheduler, criterion, mixup, sampler = _build(s)
    model: nn.Module = net
    if ranks.on:
        # Each step's subnet leaves other super-weights unused, hence find_unused_parameters. Measured
        # against one flat all-reduce of the used gradients (2 ranks, gloo, digits): 58-72 vs 86 ms/step,
        # same weights. DDP also broadcasts rank 0's initial weights.
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    pos, step = _Position(), 0
    if s.ckpt is not None:
        ck = s.ckpt
        net.load_state_dict(ck["supernet"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        sampler.load_state_dict(ck["sampler"])
        pos, step = _Position(**ck["position"]), ck["step"]
    else:
        random.seed(cfg.seed + ranks.rank)
        np.random.seed(cfg.seed + ranks.rank)
        torch.manual_seed(cfg.seed + ranks.rank)
    if ranks.rank == 0:
        _start_files(s, step)
    batches, rewards = _Batches(s.loaders, pos), _Cycle(s.eval_loaders.val, pos)
    batches.start()
    if s.ckpt is not None:  # after the fast-forward, which consumed augmentation randomness
        _set_rng_state(s.ckpt["rng"][ranks.rank])

    def score(archs: Sequence[Arch]) -> list[float]:
        batch = rewards.next()  # one batch for all archs of an update: common random numbers
        measure = accuracy if cfg.reward == "accuracy" else likelihood
        return [measure(net, a, [batch], device, distributed=ranks.on) for a in archs]

    stop = min(cfg.stop_at or cfg.steps, cfg.steps)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    params = [p for p in net.parameters() if p.requires_grad]
    archs, losses = [], []
    metrics = open(s.out / "metrics.jsonl", "a") if ranks.rank == 0 else None
    bar = None
    if ranks.rank == 0 and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=stop, initial=step, desc=f"{cfg.sampler}", unit="step", dynamic_ncols=True, mininterval=0.5)
    net.train()
    t_window, n_window, ema, pending = time.perf_counter(), 0, None, []
    try:
        while step < stop:
            images, labels = batches.next()
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if mixup is not None:
                images, labels = mixup(images, labels)
            arch, budget = sampler.next(step)
            optimizer.zero_grad(set_to_none=True)
            with amp:
                logits = model(images, arch)
            loss = criterion(logits.float(), labels)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            optimizer.step()
            scheduler.step_update(num_updates=step + 1)
            stats = sampler.update(step, score)
            step += 1
            archs.append(arch)
            pending.append(loss.detach())  # read back at log steps only: no host sync per step
            n_window += images.shape[0] * ranks.world
            if step % cfg.log_every == 0 or step == stop or stats:
                window = torch.stack(pending).tolist()
                if not all(math.isfinite(v) for v in window):
                    raise FloatingPointError(f"loss is {window} in steps {step - len(window) + 1}-{step} (last arch {arch})")
                for v in window:
                    ema = v if ema is None else 0.9 * ema + 0.1 * v
                losses.extend(window)
                pending.clear()
                now = time.perf_counter()
                throughput, t_window, n_window = n_window / max(now - t_window, 1e-9), now, 0
                mean_loss = loss.detach().clone()
                if ranks.on:
                    dist.all_reduce(mean_loss)
                    mean_loss /= ranks.world
                if metrics is not None:
                    cost = s.cost_fn(arch)
                    rec = {"step": step, "epoch": pos.epoch, "loss": mean_loss.item(),
                           "lr": optimizer.param_groups[0]["lr"], "arch": arch.to_dict(), "cost": cost,
                           "budget": budget, "img_per_s": throughput, **{f"sampler_{k}": v for k, v in stats.items()}}
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
                    if bar is not None:
                        bar.set_postfix(loss=f"{ema:.3f}", cost=fmt_cost(cost, cfg.budget_metric),
                                        img_s=f"{throughput:.0f}", refresh=False)
            if bar is not None:
                bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == stop:
                _save_checkpoint(s, step, pos, net, optimizer, scheduler, sampler)
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    table = []
    if step >= cfg.steps:
        table = _final_table(s, net, sampler)
    elif ranks.rank == 0:
        print(f"stopped after step {step} of {cfg.steps}; continue with --resume {s.out}")
    return TrainResult(s.out, step, archs, losses, table, net, sampler, cfg)


def _final_table(s: _Setup, net: Supernet, sampler: ArchSampler) -> list[dict[str, Any]]:
    """Specialize every budget (val selects, test reports), print the table, write results.json."""
    cfg = s.cfg
    rows = specialization_table(net, sampler, s.space, s.cost_fn, s.budgets, s.eval_loaders.val,
                                s.eval_loaders.test, s.device, n=cfg.specialize_n, seed=cfg.seed,
                                distributed=s.ranks.on)
    if s.ranks.rank == 0:
        write_json_atomic(s.out / "results.json", {"metric": cfg.budget_metric, "sampler": cfg.sampler, "rows": rows})
        print(format_table(rows, cfg.budget_metric))
    return rows


def run_cli(work: Callable[[], object]) -> int:
    """Exit code of a CLI's ``work``: 0, or 2 after one ``error: ...`` line on stderr for a :class:`UsageError`."""
    try:
        work()
    except UsageError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes."""
    return run_cli(lambda: run(resolve_config(argv)))


if __name__ == "__main__":
    sys.exit(main())
