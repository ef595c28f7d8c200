"""The trainer's configuration: its fields, their checks, YAML files and command-line flags.

A run is fully described by a :class:`TrainConfig`. Values come from the field defaults, then a
``--config`` YAML file, then flags; on ``--resume`` from the checkpoint's config, of which only
:data:`RESUME_OVERRIDES` may change. The sampler's own settings are :class:`SamplerOptions`
fields, owned (names, defaults, checks and help) by :mod:`focusformer_fast.sampler`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import ops
from .cli import Parser, UsageError, add_version, flag, state_defaults
from .costs import METRICS, parse_budgets
from .sampler import SAMPLERS, SamplerOptions
from .space import SearchSpace

DEFAULT_STEPS = 2000
REWARDS = ("accuracy", "likelihood")
RESUME_OVERRIDES = ("resume", "stop_at", "backend", "graphs", "progress", "check_data", "strict_latency")
"""Fields of one invocation: on ``--resume`` they take this invocation's value (or the default), never the
checkpoint's; they do not change the result. ``steps`` may also grow on resume (the run is extended)."""


@dataclass
class TrainConfig(SamplerOptions):
    """Everything a run depends on. Units: steps are optimizer steps, budgets are in ``budget_metric`` units.

    The :class:`SamplerOptions` fields (``epsilon``, ``sampler_lr``, ...) configure the ``focus`` sampler.
    """

    space: str = "digits"
    data: str = "digits"
    sampler: str = "focus"
    budget_metric: str = "flops"
    latency_table: str | None = None
    strict_latency: bool = False  # refuse a latency table made on another device or version (default: warn)
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
    cutmix: float = 0.0  # cutmix Beta alpha (timm Mixup; 0: off)
    reprob: float = 0.0  # random erasing probability per image (timm RandomErasing, pixel mode)
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
    reward: str = "accuracy"  # the sampler's score of a subnet on a val batch: accuracy or likelihood
    reward_batch_size: int = 256
    specialize_n: int = 50
    log_every: int = 10
    checkpoint_every: int = 500
    eval_every: int | None = None  # val accuracy of probe subnets in metrics.jsonl; default steps // 10
    progress: bool | None = None  # None: a progress bar on a terminal, plain log lines otherwise
    check_data: bool = False  # decode every image file before training; refuse with the list of unreadable ones


def resolved_data(spec: str) -> str:
    """``--data`` as stored in a run: ``digits``, or the absolute path (searchable from any directory)."""
    return spec if spec == "digits" else str(Path(spec).expanduser().resolve())


def field_names() -> set[str]:
    """The names of :class:`TrainConfig`'s fields."""
    return {f.name for f in dataclasses.fields(TrainConfig)}


def _flagged(message: str) -> str:
    """A field check's message (``epsilon=2.0 must be ...``) with the field named as its flag."""
    name, sep, rest = message.partition("=")
    return f"{flag(name)}={rest}" if sep and name in field_names() else message


def check_config(cfg: TrainConfig) -> None:
    """Raise :class:`UsageError` naming (as its flag) the first field that is out of range."""
    choices = {"space": SearchSpace.preset_names(), "sampler": SAMPLERS, "budget_metric": METRICS,
               "reward": REWARDS, "backend": ("auto",) + ops.BACKENDS}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise UsageError(f"{flag(name)}={getattr(cfg, name)!r} is unknown; allowed: {', '.join(allowed)}")
    if cfg.device not in (None, "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise UsageError(f"--device={cfg.device!r} is not allowed; allowed: cpu, cuda, cuda:N")
    positive = ("num_budgets", "batch_size", "lr", "reward_batch_size", "specialize_n", "log_every",
                "checkpoint_every", "eval_every", "steps", "epochs", "stop_at", "threads", "clip_grad")
    for name in positive:
        v = getattr(cfg, name)
        if v is not None and not v > 0:
            raise UsageError(f"{flag(name)}={v!r} must be > 0")
    for name in ("min_lr", "weight_decay", "lr_warmup_steps", "smoothing", "mixup", "cutmix", "drop_path", "num_workers"):
        v = getattr(cfg, name)
        if v is not None and not v >= 0:
            raise UsageError(f"{flag(name)}={v!r} must be >= 0")
    try:
        SamplerOptions.of(cfg).check()
    except ValueError as exc:
        raise UsageError(_flagged(str(exc))) from None
    if not 0 <= cfg.reprob <= 1:
        raise UsageError(f"{flag('reprob')}={cfg.reprob!r} must be >= 0 and <= 1")
    for name in ("smoothing", "drop_path"):
        if not getattr(cfg, name) < 1:
            raise UsageError(f"{flag(name)}={getattr(cfg, name)!r} must be >= 0 and < 1")
    if not 0 < cfg.val_fraction < 1:
        raise UsageError(f"--val-fraction={cfg.val_fraction!r} must be > 0 and < 1")
    if cfg.steps is not None and cfg.epochs is not None:
        raise UsageError(f"give --steps ({cfg.steps}) or --epochs ({cfg.epochs}), not both")
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
        raise UsageError(f"--mixup and --cutmix need an even --batch-size, got {cfg.batch_size}")
    if cfg.budgets is not None:
        for b in cfg.budgets:
            if not (math.isfinite(b) and b > 0):
                raise UsageError(f"--budgets: budget {b:g} must be a positive finite number")
    if cfg.budget_metric == "latency" and cfg.latency_table is None:
        raise UsageError("--budget-metric latency needs --latency-table FILE")
    if cfg.latency_table is not None and not Path(cfg.latency_table).is_file():
        raise UsageError(f"--latency-table {cfg.latency_table!r} does not exist")


def _budgets_arg(text: str) -> list[float]:
    """``--budgets`` as argparse's type: a bad value is named with the reason, not the parser function."""
    try:
        return parse_budgets(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_OPTIONAL_TYPES = {"threads": int, "steps": int, "epochs": int, "lr_warmup_steps": int, "clip_grad": float,
                   "stop_at": int, "sampler_warmup": int, "eval_every": int, "progress": bool}


def coerce_field(name: str, value: Any) -> Any:
    """A YAML (or command-line string) value converted to the type of field ``name``."""
    if value is None:
        return None
    if name == "budgets":
        try:
            return parse_budgets(value)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
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
    names = field_names()
    out = {}
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key not in names:
            raise UsageError(f"config file {path!r} has unknown field {k!r}; allowed: {', '.join(sorted(names))}")
        out[key] = coerce_field(key, v)
    return out


def _add_sampler_options(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`SamplerOptions` field, typed and documented by the field itself."""
    for f in dataclasses.fields(SamplerOptions):
        flag, help_text = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(flag, type=_OPTIONAL_TYPES.get(f.name) or type(f.default), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m focusformer_fast.train`` flags; each sets the :class:`TrainConfig` field of its name."""
    p = Parser(prog="python -m focusformer_fast.train", argument_default=argparse.SUPPRESS,
               description="Train a weight-sharing ViT supernet with an architecture sampler.")
    p.add_argument("--config", help="YAML file of defaults (field: value); flags override it")
    p.add_argument("--space", help=f"search space preset: {', '.join(SearchSpace.preset_names())} (default digits)")
    p.add_argument("--data", help="'digits' (bundled), a CIFAR-100 folder, an ImageFolder root with train/ (and "
                                  "optional val/), or a folder of class folders")
    p.add_argument("--sampler", help=f"{', '.join(SAMPLERS)} (default focus)")
    p.add_argument("--budget-metric", help=f"{', '.join(METRICS)} (default flops, i.e. MACs)")
    p.add_argument("--latency-table", help="latency table file (profiler) for --budget-metric latency")
    p.add_argument("--strict-latency", action="store_true",
                   help="refuse a --latency-table made on another device or software version (default: a warning)")
    p.add_argument("--budgets", type=_budgets_arg,
                   help="comma-separated budgets, e.g. 1M,2M,3.5M (default: 5-point grid)")
    p.add_argument("--num-budgets", type=int, help="size of the default budget grid (default 5)")
    p.add_argument("--steps", type=int, help=f"optimizer steps (default {DEFAULT_STEPS})")
    p.add_argument("--epochs", type=int, help="epochs instead of --steps (default: none, --steps counts)")
    p.add_argument("--batch-size", type=int, help="images per step per rank (default 64)")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate (default 1e-3)")
    p.add_argument("--min-lr", type=float, help="final learning rate of the cosine schedule")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    p.add_argument("--lr-warmup-steps", type=int, help="linear LR warm-up steps (default: 5%% of the steps)")
    p.add_argument("--smoothing", type=float, help="label smoothing (default 0)")
    p.add_argument("--mixup", type=float, help="mixup alpha (default 0: off)")
    p.add_argument("--cutmix", type=float, help="cutmix alpha (default 0: off; with --mixup, timm switches per batch)")
    p.add_argument("--reprob", type=float, help="random erasing probability per image (default 0: off)")
    p.add_argument("--drop-path", type=float, help="stochastic depth rate, >= 0 and < 1")
    p.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value (default: none, off)")
    p.add_argument("--augment", help="auto (default: none for digits, basic otherwise), none, basic, "
                                     "or a timm RandAugment string like rand-m9-mstd0.5-inc1")
    p.add_argument("--val-fraction", type=float, help="share of the training images held out as val "
                                                     "(> 0 and < 1); val picks the subnets")
    p.add_argument("--seed", type=int, help="seed of everything random in the run")
    p.add_argument("--output", help="run directory (default runs/<time>-<sampler>-s<seed>)")
    p.add_argument("--resume", help="run directory or checkpoint file to continue; --steps M larger than the "
                                    "run's extends it (default: none, a new run)")
    p.add_argument("--stop-at", type=int, help="stop with a checkpoint after this global step (this invocation "
                                               "only; default: none)")
    p.add_argument("--backend", help=f"ops backend: auto, {', '.join(ops.BACKENDS)} (default auto)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: 1 for digits on CPU, else torch's)")
    _add_sampler_options(p)
    p.add_argument("--reward", help="focus: score of a subnet on a val batch: accuracy (default) or likelihood "
                                    "(exp of minus the mean cross-entropy)")
    p.add_argument("--reward-batch-size", type=int, help="val images per sampler reward and per evaluation batch")
    p.add_argument("--specialize-n", type=int, help="distinct archs scored per budget in the final table (default 50)")
    p.add_argument("--log-every", type=int, help="steps between metrics.jsonl records")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--eval-every", type=int,
                   help="record the val accuracy of the smallest, middle and largest subnets in metrics.jsonl "
                        "every N steps (default: steps // 10)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction,
                   help="a progress bar (default: on a terminal; otherwise plain log lines)")
    p.add_argument("--check-data", action="store_true",
                   help="decode every image before training and refuse with the list of unreadable files "
                        "(default off: an unreadable file is skipped, warned about, listed in RUN/bad_images.txt)")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction,
                   help="CUDA: capture each block shape's forward+backward as CUDA graphs once and replay them"
                        " for every subnet (default off)")
    add_version(p)
    return state_defaults(p, {f.name: f.default for f in dataclasses.fields(TrainConfig)})


def explicit_fields(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The fields set by ``--config`` YAML and flags (flags win), before defaults or a checkpoint."""
    given = vars(build_parser().parse_args(argv))
    explicit = load_yaml(given.pop("config")) if "config" in given else {}
    explicit.update(given)
    if explicit.get("augment") == "none":
        explicit["augment"] = None
    return explicit


def with_resume(explicit: dict[str, Any], saved: TrainConfig) -> TrainConfig:
    """The config of a resumed run: ``saved`` with this invocation's :data:`RESUME_OVERRIDES`.

    An override not given in ``explicit`` takes its default (``--stop-at`` of an earlier invocation
    does not stop this one). ``steps`` larger than the saved value extends the run. Raises
    :class:`UsageError` when ``explicit`` changes any other field, or shortens the run.
    """
    for name, v in explicit.items():
        if name == "steps" and saved.steps is not None and v is not None and v > saved.steps:
            continue
        if name not in RESUME_OVERRIDES and v != getattr(saved, name):
            if name == "steps":
                raise UsageError(f"--steps={v} cannot shorten the run (it has steps={saved.steps}); "
                                 f"give a larger value to extend it")
            raise UsageError(f"{flag(name)}={v!r} cannot change on --resume (the checkpoint has "
                             f"{getattr(saved, name)!r})")
    defaults = TrainConfig()
    invocation = {k: explicit.get(k, getattr(defaults, k)) for k in RESUME_OVERRIDES}
    return dataclasses.replace(saved, steps=explicit.get("steps", saved.steps), **invocation)
