"""A run's checkpoint, shared by ``train`` and ``finetune``: written with every rank's RNG state, read back checked.

A run checkpoint is a dict written by :func:`~focusformer_fast.utils.checkpoints.save_checkpoint` (atomic,
checksummed, the previous one kept) holding ``kind`` (``train``, ``finetune``), ``format_version``,
``config`` (the command's config dataclass as a dict), ``step``, ``position`` (of the batch stream),
``world_size``, ``rng`` (one state per rank), ``launch`` (the flags the run was started with) and the
command's own state (weights, optimizer, schedule, ...).

A checkpoint written before the newest config fields existed still reads: missing fields take
their defaults (none of them changes what is computed) and renamed ones their new name.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from focusformer_fast.utils.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from focusformer_fast.utils.cli import UsageError
from focusformer_fast.utils.distributed import Ranks


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


def write_run_checkpoint(path: Path, payload: dict[str, Any], ranks: Ranks) -> None:
    """Rank 0 writes ``payload`` with every rank's RNG state (``rng``, gathered) and the world size to
    ``path``; every rank returns once it is on disk. Call it on every rank at the same step."""
    rng = [rng_state()]
    if ranks.on:
        rng = [None] * ranks.world
        dist.all_gather_object(rng, rng_state())
    if ranks.rank == 0:
        save_checkpoint(path, {**payload, "rng": rng, "world_size": ranks.world})
    if ranks.on:
        dist.barrier()


def read_run_checkpoint(path: Path, *, kind: str, format_version: int, config_type: type,
                        renamed: dict[str, str] | None = None) -> dict[str, Any]:
    """Load and verify a run checkpoint of ``kind``; :class:`UsageError` (one line) for a damaged or foreign one.

    Its ``config`` is completed for ``config_type``: fields named in ``renamed`` (old -> new) take
    their new names, fields it lacks their defaults; a field this version does not know is refused.
    A checkpoint without ``kind`` is a training checkpoint (written before kinds were recorded).
    """
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    found = ckpt.get("kind", "train")
    if found != kind:
        raise UsageError(f"checkpoint {str(path)!r} is a {found} checkpoint, not a {kind} one")
    if ckpt.get("format_version") != format_version:
        raise UsageError(f"checkpoint {str(path)!r} has format_version={ckpt.get('format_version')}; "
                         f"this version reads {format_version}")
    config = ckpt.get("config")
    if not isinstance(config, dict):
        raise UsageError(f"checkpoint {str(path)!r} has no config")
    config = {(renamed or {}).get(k, k): v for k, v in config.items()}
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise UsageError(f"checkpoint {str(path)!r} has a config with fields this version does not know: "
                         f"{', '.join(unknown)}")
    defaults = dataclasses.asdict(config_type())
    ckpt["config"] = {**{k: defaults[k] for k in fields if k not in config}, **config}
    return ckpt


def check_world_size(ckpt: dict[str, Any], ranks: Ranks) -> None:
    """Raise :class:`UsageError` unless ``ckpt`` was written by as many ranks as this run has."""
    if ckpt["world_size"] != ranks.world:
        raise UsageError(f"checkpoint was written by {ckpt['world_size']} ranks; this run has {ranks.world}")
