"""A training run on disk: its checkpoint, its search space and data, and loading it back for search.

The run directory of ``train`` is the shared one (:mod:`focusformer_fast.training.run_directory`: ``run.json``,
``metrics.jsonl``, ``checkpoint.pt``, ``run.lock``), plus

  ``results.json``   the specialization table (``results.png``: its val Pareto fronts; ``results.md``: as markdown)
  ``bad_images.txt`` unreadable image files that were skipped (``path<TAB>reason``), if any

Its checkpoint (:mod:`focusformer_fast.training.run_state`, kind ``train``) holds the supernet, optimizer,
schedule and sampler, and ``space``: the run's search space with the data's class count and
channels, so that ``search``, ``export``, ``finetune`` and ``profile`` work from the run alone, a
space file's run included (``run.json`` records it too). A checkpoint written before ``space`` was
stored names its preset in its config.

:func:`load_run` gives back what a search needs: the supernet, the sampler, the data splits and
the cost function of a run, from its directory or checkpoint file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from focusformer_fast.models.supernet import Supernet
from focusformer_fast.nas.costs import CostFn, fmt_cost, make_cost_fn
from focusformer_fast.nas.latency.table import LatencyTable
from focusformer_fast.nas.sampler.baselines import ArchSampler
from focusformer_fast.nas.sampler.factory import make_sampler
from focusformer_fast.space import SearchSpace, is_space_file, read_space_file
from focusformer_fast.training.config import TrainConfig, resolved_data
from focusformer_fast.training.run_directory import CHECKPOINT_NAME, RUN_INFO, resume_checkpoint
from focusformer_fast.training.run_state import read_run_checkpoint
from focusformer_fast.utils.cli import UsageError, say
from focusformer_fast.utils.distributed import Ranks, pick_device

if TYPE_CHECKING:
    from focusformer_fast.data.splits import DataSplits

KIND = "train"
FORMAT_VERSION = 2
CHECKPOINT_KEYS = frozenset({"format_version", "config", "step", "supernet", "optimizer", "scheduler", "sampler",
                             "rng", "position", "world_size"})


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load, verify (checksum) and sanity-check a training checkpoint; :class:`UsageError` if it is damaged or
    foreign. Config fields added since it was written take their defaults."""
    ckpt = read_run_checkpoint(path, kind=KIND, format_version=FORMAT_VERSION, config_type=TrainConfig)
    if not CHECKPOINT_KEYS <= set(ckpt):
        raise UsageError(f"checkpoint {str(path)!r} is not a focusformer_fast training checkpoint")
    return ckpt


def saved_config(resume: str | os.PathLike) -> TrainConfig:
    """The config stored in the checkpoint that ``resume`` names."""
    return TrainConfig(**read_checkpoint(resume_checkpoint(resume))["config"])


def _spaces_for(size: int) -> str:
    fit = [n for n in SearchSpace.preset_names() if SearchSpace.preset(n).image_size == size]
    return f"try --space {' or '.join(fit)}" if fit else f"no preset takes {size}x{size} images"


def _resize_note(native: tuple[int, int], space: SearchSpace, spec: str) -> str:
    """The note for images resized to the space's size; far from it (over 1.5x), how to train at their size."""
    h, w = native
    note = f"images are {h}x{w}; resizing them to {space.image_size}x{space.image_size} for --space {spec}"
    if h != w:
        return f"{note} (not square)"
    hint = _spaces_for(h)
    if not hint.startswith("try") and max(h, space.image_size) > 1.5 * min(h, space.image_size):
        hint += (f"; to train at their size, give --space FILE.yaml with image_size: {h} and a patch_size "
                 f"dividing it (README: your own search space)")
    return f"{note} ({hint})"


def _warn_small(splits: DataSplits) -> None:
    """A warning with the counts when val is too small to choose subnets reliably (under ~10 per class)."""
    n_val, k = len(splits.val), splits.num_classes
    if n_val < 10 * k:
        warnings.warn(f"val split has {n_val} images for {k} classes (under 10 per class): the subnets it picks "
                      f"are noisy; add images or raise --val-fraction (train {len(splits.train)}, test "
                      f"{len(splits.test)} images)", stacklevel=2)


def _named_space(spec: str) -> tuple[SearchSpace, bool]:
    """``--space``'s space, and whether it fixes the input channels (a space file giving ``in_chans``)."""
    if not is_space_file(spec):
        return SearchSpace.preset(spec), False
    try:
        space, given = read_space_file(spec)
    except ValueError as exc:
        raise UsageError(f"--space: {exc}") from None
    return space, "in_chans" in given


def space_data_cost(cfg: TrainConfig, *, stored: SearchSpace | None = None,
                    quiet: bool = False) -> tuple[SearchSpace, DataSplits, CostFn]:
    """The run's space (with the data's class count and channels), its data splits and its cost function.

    The space is ``stored`` (a run's own, from its checkpoint) or else what ``cfg.space`` names: a
    preset or a space file. Digits data fits only 8x8 spaces (an error names those); other data is
    brought to the space's image size (a note when its files are another size, suggesting a space
    file at their size when it is far). ``quiet``: no notes or warnings (ranks > 0).
    """
    from focusformer_fast.data.datasets import load_dataset  # timm/torchvision/sklearn: not needed to reject bad flags

    space, fixes_channels = (stored, True) if stored is not None else _named_space(cfg.space)
    try:
        splits = load_dataset(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, augment=cfg.augment,
                              image_size=None if cfg.data == "digits" else space.image_size, cache_dir=cfg.cache_data)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if splits.image_size != space.image_size:
        raise UsageError(f"--space {cfg.space} takes {space.image_size}x{space.image_size} images; data "
                         f"{cfg.data!r} is {splits.image_size}x{splits.image_size}x{splits.in_chans}; "
                         f"{_spaces_for(splits.image_size)}")
    if fixes_channels and splits.in_chans != space.in_chans:
        raise UsageError(f"--space {cfg.space} has in_chans={space.in_chans}; data {cfg.data!r} has "
                         f"{splits.in_chans}-channel images (leave in_chans out of a space file to take the data's)")
    native = splits.native_size
    if not quiet and native is not None and native != (space.image_size,) * 2:
        say("note", _resize_note(native, space, cfg.space))
    if not quiet:
        _warn_small(splits)
    space = dataclasses.replace(space, num_classes=splits.num_classes, in_chans=splits.in_chans)
    try:
        if cfg.budget_metric == "latency" and cfg.strict_latency:
            try:
                LatencyTable.load(cfg.latency_table, strict=True)
            except ValueError as exc:
                raise UsageError(str(exc).replace("refused (strict)", "refused (--strict-latency)")) from None
        cost_fn = make_cost_fn(space, cfg.budget_metric, cfg.latency_table)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return space, splits, cost_fn


def stored_space(ckpt: dict[str, Any]) -> SearchSpace | None:
    """The search space a training checkpoint stores (None for one written before spaces were stored)."""
    return SearchSpace.from_dict(ckpt["space"]) if "space" in ckpt else None


def run_space(run: str | os.PathLike) -> SearchSpace:
    """A training run's search space (with its data's classes and channels), from ``run.json`` when it
    records it, else from its checkpoint (a preset's, for a run from before spaces were stored)."""
    p = Path(run)
    info = p / RUN_INFO if p.is_dir() else p.parent / RUN_INFO
    try:
        return SearchSpace.from_dict(json.loads(info.read_text())["space"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ckpt = read_checkpoint(resume_checkpoint(run))
    space = stored_space(ckpt)
    return space if space is not None else SearchSpace.preset(ckpt["config"]["space"])


def warn_budgets_above(space: SearchSpace, cost_fn: CostFn, budgets: Sequence[float], metric: str) -> None:
    """A warning for each budget above the largest arch's cost: every arch fits it, it is no constraint."""
    top = float(cost_fn(space.largest()))
    for b in budgets:
        if b > top:
            warnings.warn(f"budget {fmt_cost(b, metric)} is above the largest arch's cost {fmt_cost(top, metric)}: "
                          f"every arch fits it", stacklevel=2)


def build_sampler(cfg: TrainConfig, space: SearchSpace, cost_fn: CostFn) -> ArchSampler:
    """The run's sampler (``cfg.sampler`` with the config's sampler options, over ``cfg.budgets``)."""
    return make_sampler(cfg.sampler, space, cost_fn, cfg.budgets, seed=cfg.seed, options=cfg)


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


def load_run(run: str | os.PathLike, *, device: str | None = None, latency_table: str | None = None,
             data: str | None = None) -> TrainedRun:
    """Load the checkpoint of a training run (its directory or ``checkpoint.pt``), with its data splits.

    Args:
        run: what ``--output`` of ``python -m focusformer_fast.train`` named, or its checkpoint file.
        device: ``cpu``, ``cuda``, ``cuda:1``; default the run's, else cuda when available.
        latency_table: for latency runs, a table measured on this machine instead of the run's.
        data: the run's dataset at another place (it was moved); default the path in the run.

    Raises :class:`UsageError` naming the problem (missing or foreign checkpoint, data, table).
    """
    path = resume_checkpoint(run)
    ckpt = read_checkpoint(path)
    cfg = TrainConfig(**ckpt["config"])
    if latency_table is not None and cfg.budget_metric != "latency":
        raise UsageError(f"--latency-table applies to latency runs only; run {str(path.parent)!r} was trained with "
                         f"--budget-metric {cfg.budget_metric}")
    if data is None and cfg.data != "digits" and not Path(cfg.data).exists():
        raise UsageError(f"the run's data {cfg.data!r} does not exist (moved?); give its new place with --data DIR")
    cfg = dataclasses.replace(cfg, device=device or cfg.device, latency_table=latency_table or cfg.latency_table,
                              data=resolved_data(data) if data else cfg.data)
    dev = pick_device(cfg.device, Ranks())
    space, splits, cost_fn = space_data_cost(cfg, stored=stored_space(ckpt))
    net = Supernet(space, drop_path_rate=cfg.drop_path).to(dev)
    net.load_state_dict(ckpt["supernet"])
    sampler = build_sampler(cfg, space, cost_fn)
    sampler.load_state_dict(ckpt["sampler"])
    return TrainedRun(path, cfg, ckpt["step"], dev, space, splits, cost_fn, net.eval(), sampler)


__all__ = ["CHECKPOINT_NAME", "FORMAT_VERSION", "TrainedRun", "load_run", "read_checkpoint", "run_space",
           "space_data_cost", "stored_space"]
