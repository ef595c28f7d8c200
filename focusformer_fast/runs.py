"""A training run on disk: its checkpoint (paths, reading, writing, RNG state) and loading it back.

Run directory (written by :mod:`focusformer_fast.train`):
  ``run.json``       resolved config, seed, versions, device, world size, resumes
  ``metrics.jsonl``  one record every ``log_every`` steps
  ``checkpoint.pt``  everything needed to continue bit-for-bit on CPU (written atomically, with a
                     checksum verified on load; ``checkpoint.prev.pt`` is the one before it)
  ``results.json``   the specialization table (``results.png``: its val Pareto fronts; ``results.md``: as markdown)
  ``bad_images.txt`` unreadable image files that were skipped (``path<TAB>reason``), if any

:func:`load_run` gives back what a search needs: the supernet, the sampler, the data splits and
the cost function of a run, from its directory or checkpoint file.
"""

from __future__ import annotations

import dataclasses
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .cli import UsageError, say
from .config import TrainConfig, field_names, resolved_data
from .costs import CostFn, fmt_cost, make_cost_fn
from .distributed import Ranks
from .latency.table import LatencyTable
from .sampler import ArchSampler, make_sampler
from .space import SearchSpace
from .supernet import Supernet

if TYPE_CHECKING:
    from .data import DataSplits

FORMAT_VERSION = 2
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_KEYS = frozenset({"format_version", "config", "step", "supernet", "optimizer", "scheduler", "sampler",
                             "rng", "position", "world_size"})


def checkpoint_path(resume: str | os.PathLike) -> Path:
    """The checkpoint a run path (``--resume``) names: a file, or ``checkpoint.pt`` in a directory."""
    p = Path(resume)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise UsageError(f"checkpoint {str(p)!r} does not exist")
    return p


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load, verify (checksum) and sanity-check a checkpoint; :class:`UsageError` if it is damaged or foreign."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS <= set(ckpt):
        raise UsageError(f"checkpoint {str(path)!r} is not a focusformer_fast training checkpoint")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise UsageError(f"checkpoint {str(path)!r} has format_version={ckpt['format_version']}; "
                         f"this version reads {FORMAT_VERSION}")
    if not isinstance(ckpt["config"], dict) or not set(ckpt["config"]) <= field_names():
        unknown = sorted(set(ckpt["config"]) - field_names()) if isinstance(ckpt["config"], dict) else []
        raise UsageError(f"checkpoint {str(path)!r} has a config with fields this version does not know"
                         f"{': ' + ', '.join(unknown) if unknown else ''}")
    # fields added since the checkpoint was written take their defaults (none of them changes training)
    defaults = dataclasses.asdict(TrainConfig())
    ckpt["config"] = {**{k: defaults[k] for k in field_names() - set(ckpt["config"])}, **ckpt["config"]}
    return ckpt


def saved_config(resume: str | os.PathLike) -> TrainConfig:
    """The config stored in the checkpoint that ``resume`` names."""
    return TrainConfig(**read_checkpoint(checkpoint_path(resume))["config"])


def write_checkpoint(path: Path, ckpt: dict[str, Any]) -> None:
    """Write ``ckpt`` (a dict with :data:`CHECKPOINT_KEYS` but the format version) to ``path``
    (:func:`~focusformer_fast.checkpoints.save_checkpoint`: atomic, checksummed, previous kept)."""
    save_checkpoint(path, {"format_version": FORMAT_VERSION, **ckpt})


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states of this process, as checkpoint-safe tensors and tuples."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def pick_device(cfg: TrainConfig, ranks: Ranks) -> torch.device:
    """The run's device: ``cfg.device``, else this rank's CUDA GPU when there is one, else CPU."""
    want = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device={want!r} is not available: no CUDA GPU visible")
        return torch.device(want if ":" in want else f"cuda:{ranks.local_rank}")
    return torch.device("cpu")


def _spaces_for(size: int) -> str:
    fit = [n for n in SearchSpace.preset_names() if SearchSpace.preset(n).image_size == size]
    return f"try --space {' or '.join(fit)}" if fit else f"no preset takes {size}x{size} images"


def _warn_small(splits: DataSplits) -> None:
    """A warning with the counts when val is too small to choose subnets reliably (under ~10 per class)."""
    n_val, k = len(splits.val), splits.num_classes
    if n_val < 10 * k:
        warnings.warn(f"val split has {n_val} images for {k} classes (under 10 per class): the subnets it picks "
                      f"are noisy; add images or raise --val-fraction (train {len(splits.train)}, test "
                      f"{len(splits.test)} images)", stacklevel=2)


def space_data_cost(cfg: TrainConfig, *, quiet: bool = False) -> tuple[SearchSpace, DataSplits, CostFn]:
    """The run's space (with the data's class count and channels), its data splits and its cost function.

    Digits data fits only 8x8 spaces (an error names those); other data is brought to the space's
    image size (a note when its files are another size). ``quiet``: no notes or warnings (ranks > 0).
    """
    from .data import load_dataset  # timm/torchvision/sklearn: not needed to reject bad flags

    space = SearchSpace.preset(cfg.space)
    try:
        splits = load_dataset(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, augment=cfg.augment,
                              image_size=None if cfg.data == "digits" else space.image_size, cache_dir=cfg.cache_data)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if splits.image_size != space.image_size:
        raise UsageError(f"--space {cfg.space} takes {space.image_size}x{space.image_size} images; data "
                         f"{cfg.data!r} is {splits.image_size}x{splits.image_size}x{splits.in_chans}; "
                         f"{_spaces_for(splits.image_size)}")
    native = splits.native_size
    if not quiet and native is not None and native != (space.image_size,) * 2:
        say("note", f"images are {native[0]}x{native[1]}; resizing them to {space.image_size}x{space.image_size} "
                    f"for --space {cfg.space} ({_spaces_for(native[0]) if native[0] == native[1] else 'not square'})")
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
    path = checkpoint_path(run)
    ckpt = read_checkpoint(path)
    cfg = TrainConfig(**ckpt["config"])
    if latency_table is not None and cfg.budget_metric != "latency":
        raise UsageError(f"--latency-table applies to latency runs only; run {str(path.parent)!r} was trained with "
                         f"--budget-metric {cfg.budget_metric}")
    if data is None and cfg.data != "digits" and not Path(cfg.data).exists():
        raise UsageError(f"the run's data {cfg.data!r} does not exist (moved?); give its new place with --data DIR")
    cfg = dataclasses.replace(cfg, device=device or cfg.device, latency_table=latency_table or cfg.latency_table,
                              data=resolved_data(data) if data else cfg.data)
    dev = pick_device(cfg, Ranks())
    space, splits, cost_fn = space_data_cost(cfg)
    net = Supernet(space, drop_path_rate=cfg.drop_path).to(dev)
    net.load_state_dict(ckpt["supernet"])
    sampler = build_sampler(cfg, space, cost_fn)
    sampler.load_state_dict(ckpt["sampler"])
    return TrainedRun(path, cfg, ckpt["step"], dev, space, splits, cost_fn, net.eval(), sampler)
