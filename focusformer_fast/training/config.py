"""The trainer's configuration: its fields, their checks, YAML files and command-line flags.

A run is fully described by a :class:`TrainConfig`. Values come from the field defaults, then a
``--config`` YAML file, then flags; on ``--resume`` (or ``--auto-resume`` of a run with a
checkpoint) from the checkpoint's config, of which only :data:`RESUME_OVERRIDES` may change. Four
groups of fields are owned elsewhere (names, defaults, checks and help): the sampler's
(:class:`~focusformer_fast.nas.sampler.options.SamplerOptions`), timm's recipe
(:class:`~focusformer_fast.training.recipe.RecipeOptions`), the run's own
(:class:`~focusformer_fast.training.run_options.RunOptions`) and the loaders'
(:class:`~focusformer_fast.data.options.LoaderOptions`); the last three are shared with ``finetune``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from focusformer_fast import ops
from focusformer_fast.data.options import AUGMENT_HELP, LoaderOptions
from focusformer_fast.nas.costs import METRICS, parse_budgets
from focusformer_fast.nas.sampler.options import SAMPLERS, SamplerOptions
from focusformer_fast.space import SearchSpace, is_space_file, read_space_file
from focusformer_fast.training.recipe import RecipeOptions
from focusformer_fast.training.run_options import RunOptions, continued_config, relaunch_differences, relaunch_error
from focusformer_fast.utils.cli import (Parser, UsageError, add_option_flags, add_version, field_type, flag,
                                        state_defaults)

DEFAULT_STEPS = 2000
REWARDS = ("accuracy", "likelihood")
RESUME_OVERRIDES = ("resume", "auto_resume", "stop_at", "backend", "graphs", "progress", "check_data",
                    "strict_latency")
"""Fields of one invocation: on ``--resume`` they take this invocation's value (or the default), never the
checkpoint's; they do not change the result. ``steps`` may also grow on resume (the run is extended)."""
PATH_FIELDS = ("data", "space", "latency_table", "output", "cache_data")
"""Fields holding a path, stored resolved (absolute) so a run is found from any directory."""


@dataclass
class TrainConfig(SamplerOptions, RecipeOptions, RunOptions, LoaderOptions):
    """Everything a run depends on. Units: steps are optimizer steps, budgets are in ``budget_metric`` units.

    The :class:`SamplerOptions` fields (``epsilon``, ``sampler_lr``, ...) configure the ``focus`` sampler,
    the :class:`RecipeOptions` fields (``lr``, ``mixup``, ...) the optimizer, schedule and
    regularization, the :class:`RunOptions` fields (``output``, ``auto_resume``, ...) the run directory,
    the :class:`LoaderOptions` fields (``num_workers``, ``pin_memory``, ``cache_data``) the data loaders.
    """

    space: str = "digits"  # a preset name, or a YAML/JSON space file (space.read_space_file)
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
    augment: str | None = "auto"  # chosen by the data (data.choose_augment) and recorded as chosen
    val_fraction: float = 0.1
    backend: str = "auto"
    graphs: bool = False  # CUDA graphs per block shape (Supernet(graphs=True)); no effect on CPU
    reward: str = "accuracy"  # the sampler's score of a subnet on a val batch: accuracy or likelihood
    reward_batch_size: int = 256
    specialize_n: int = 50
    eval_every: int | None = None  # val accuracy of probe subnets in metrics.jsonl; default steps // 10
    check_data: bool = False  # decode every image file before training; refuse with the list of unreadable ones


def resolved_data(spec: str) -> str:
    """``--data`` as stored in a run: ``digits``, or the absolute path (searchable from any directory)."""
    return spec if spec == "digits" else str(Path(spec).expanduser().resolve())


def resolved_paths(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with the :data:`PATH_FIELDS` they set made absolute (``digits`` and presets stay names)."""
    out = dict(fields)
    for name in PATH_FIELDS:
        v = out.get(name)
        if v is None or (name == "space" and not is_space_file(v)):
            continue
        out[name] = resolved_data(v) if name == "data" else str(Path(v).expanduser().resolve())
    return out


def field_names() -> set[str]:
    """The names of :class:`TrainConfig`'s fields."""
    return {f.name for f in dataclasses.fields(TrainConfig)}


def _flagged(message: str) -> str:
    """A field check's message (``epsilon=2.0 must be ...``) with the field named as its flag."""
    name, sep, rest = message.partition("=")
    return f"{flag(name)}={rest}" if sep and name in field_names() else message


def check_config(cfg: TrainConfig) -> None:
    """Raise :class:`UsageError` naming (as its flag) the first field that is out of range."""
    presets = SearchSpace.preset_names()
    if cfg.space not in presets and not is_space_file(cfg.space):
        raise UsageError(f"--space={cfg.space!r} is unknown; allowed: {', '.join(presets)}, or a space file "
                         f"(.yaml, .yml, .json) of SearchSpace fields")
    if cfg.space not in presets and not cfg.resume:  # a run continued keeps the space it stored
        try:
            read_space_file(cfg.space)
        except ValueError as exc:
            raise UsageError(f"--space: {exc}") from None
    choices = {"sampler": SAMPLERS, "budget_metric": METRICS, "reward": REWARDS, "backend": ("auto",) + ops.BACKENDS}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise UsageError(f"{flag(name)}={getattr(cfg, name)!r} is unknown; allowed: {', '.join(allowed)}")
    for name in ("num_budgets", "batch_size", "reward_batch_size", "specialize_n", "eval_every", "steps", "epochs"):
        v = getattr(cfg, name)
        if v is not None and not v > 0:
            raise UsageError(f"{flag(name)}={v!r} must be > 0")
    for options in (RunOptions, RecipeOptions, SamplerOptions, LoaderOptions):
        try:
            options.of(cfg).check()
        except ValueError as exc:
            raise UsageError(_flagged(str(exc))) from None
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


def coerce_field(name: str, value: Any) -> Any:
    """A YAML (or command-line string) value converted to the type of field ``name``."""
    if value is None:
        return None
    if name == "budgets":
        try:
            return parse_budgets(value)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    kind = field_type(TrainConfig.__dataclass_fields__[name])
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


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m focusformer_fast.train`` flags; each sets the :class:`TrainConfig` field of its name."""
    p = Parser(prog="python -m focusformer_fast.train", argument_default=argparse.SUPPRESS,
               description="Train a weight-sharing ViT supernet with an architecture sampler.")
    p.add_argument("--config", help="YAML file of defaults (field: value); flags override it")
    p.add_argument("--space", help=f"search space: a preset ({', '.join(SearchSpace.preset_names())}) or a "
                                   f"YAML/JSON file of SearchSpace fields at your images' size (README: your own "
                                   f"search space)")
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
    p.add_argument("--augment", help=AUGMENT_HELP)
    p.add_argument("--val-fraction", type=float, help="share of the training images held out as val "
                                                     "(> 0 and < 1); val picks the subnets")
    p.add_argument("--backend", help=f"ops backend: auto, {', '.join(ops.BACKENDS)} (default auto)")
    add_option_flags(p.add_argument_group("data loaders (shared with finetune)"), LoaderOptions)
    add_option_flags(p.add_argument_group("timm recipe (shared with finetune)"), RecipeOptions)
    add_option_flags(p.add_argument_group("run directory, resume, progress (shared with finetune)"), RunOptions)
    add_option_flags(p.add_argument_group("focus sampler"), SamplerOptions)
    p.add_argument("--reward", help="focus: score of a subnet on a val batch: accuracy (default) or likelihood "
                                    "(exp of minus the mean cross-entropy)")
    p.add_argument("--reward-batch-size", type=int, help="val images per sampler reward and per evaluation batch")
    p.add_argument("--specialize-n", type=int, help="distinct archs scored per budget in the final table (default 50)")
    p.add_argument("--eval-every", type=int,
                   help="record the val accuracy of the smallest, middle and largest subnets in metrics.jsonl "
                        "every N steps (default: steps // 10)")
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
    return continued_config(saved, explicit, RESUME_OVERRIDES, steps=explicit.get("steps", saved.steps))


def with_relaunch(explicit: dict[str, Any], saved: TrainConfig, launch: dict[str, Any] | None,
                  checkpoint: str) -> TrainConfig:
    """The config of ``--auto-resume`` continuing a run from ``checkpoint``: as :func:`with_resume`, but the
    flags are compared with those the run was started with (``launch``; paths resolved), as a relaunch
    of the same command line gives them. Raises :class:`UsageError` naming the flags that differ."""
    if launch is not None:
        now = resolved_paths({k: v for k, v in explicit.items() if k != "output"})
        first = {k: v for k, v in launch.items() if k != "output"}
        defaults = dataclasses.asdict(TrainConfig())
        differ = relaunch_differences(now, first, defaults, RESUME_OVERRIDES, growable=("steps",))
        if differ:
            raise UsageError(relaunch_error(saved.output, differ))
    return continued_config(saved, explicit, RESUME_OVERRIDES, steps=explicit.get("steps", saved.steps),
                            resume=checkpoint)
