"""The per-block latency lookup table: its file format and the predictor built on it.

A table holds, per batch size, *marginal* latencies (ms) that add up inside one forward: the
stem (patch embed + CLS/pos) and head (final norm + classifier) of every embed dim, and every
distinct block shape ``(embed dim, heads, mlp ratio)`` (how they are measured:
:mod:`focusformer_fast.nas.latency.build`). :class:`LatencyModel` predicts
``stem + sum(blocks) + head`` and is a cost function ``cost(arch) -> ms``.

Tables are JSON with a format version, written atomically, keyed by device, driver, torch and
CUDA versions, dtype, backend and batch sizes; loading one made elsewhere warns (or, with
``strict=True``, raises) naming every field that differs. Nothing here measures anything.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from focusformer_fast.nas.latency.device import ENV_FIELDS, environment, environment_differences
from focusformer_fast.space import Arch, SearchSpace
from focusformer_fast.utils.atomic_files import write_json_atomic
from focusformer_fast.utils.version import __version__

FORMAT_VERSION = 1

TABLE_KIND = "focusformer_fast.latency_table"

BlockShape = tuple[int, int, float]


class LatencyTableWarning(UserWarning):
    """A latency table was made on another device or software version than this one."""


def block_key(shape: BlockShape) -> str:
    """JSON key of a block shape: ``(192, 3, 3.5)`` -> ``"e192-h3-r3.5"``."""
    e, h, r = shape
    return f"e{e}-h{h}-r{float(r)!r}"


def parse_block_key(key: str) -> BlockShape:
    """Inverse of :func:`block_key`; ``ValueError`` for anything else."""
    m = re.fullmatch(r"e(\d+)-h(\d+)-r([0-9.]+)", key)
    if m is None:
        raise ValueError(f"block key {key!r} is not of the form 'e<embed>-h<heads>-r<ratio>'")
    return int(m[1]), int(m[2]), float(m[3])


def block_shapes(space: SearchSpace) -> list[BlockShape]:
    """Every distinct block shape of ``space``: embed dims x heads x mlp ratios."""
    return [(e, h, r) for e in space.embed_dims for h in space.num_heads for r in space.mlp_ratios]


@dataclass
class BatchTable:
    """Marginal latencies (ms) at one batch size: ``stem[e]``, ``head[e]``, ``blocks[(e, h, r)]``.

    ``raw`` holds the measurements they were derived from (:meth:`Timing.to_dict` per key).
    """

    stem: dict[int, float]
    head: dict[int, float]
    blocks: dict[BlockShape, float]
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stem": {str(e): v for e, v in self.stem.items()},
            "head": {str(e): v for e, v in self.head.items()},
            "blocks": {block_key(s): v for s, v in self.blocks.items()},
            "raw": self.raw,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BatchTable":
        return cls(
            {int(e): float(v) for e, v in d["stem"].items()},
            {int(e): float(v) for e, v in d["head"].items()},
            {parse_block_key(k): float(v) for k, v in d["blocks"].items()},
            dict(d.get("raw", {})),
        )


@dataclass
class LatencyTable:
    """A per-block latency lookup table of one search space on one device.

    Attributes:
        space: the search space the table covers.
        env: what the table is keyed by (:data:`ENV_FIELDS`).
        dtype, backend, graph: how the pieces were run (``graph``: CUDA-graph replays).
        batches: batch size -> :class:`BatchTable`.
        device: the full device record (:func:`device_record`) at build time.
        timing: the :class:`TimingConfig` used, as a dict.
        chain: blocks per chained measurement (``k`` in the module docstring).
        created: ISO time of the build; build_seconds: its wall time.
        validation: the last :func:`validate` report, if any.
    """

    space: SearchSpace
    env: dict[str, Any]
    dtype: str
    backend: str
    graph: bool
    batches: dict[int, BatchTable]
    device: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    chain: int = 4
    created: str = ""
    build_seconds: float = 0.0
    validation: dict[str, Any] | None = None

    def key(self) -> dict[str, Any]:
        return {**self.env, "dtype": self.dtype, "backend": self.backend, "graph": self.graph,
                "batch_sizes": sorted(self.batches)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": TABLE_KIND,
            "units": "ms",
            "key": self.key(),
            "focusformer_fast": __version__,
            "device": self.device,
            "space": self.space.to_dict(),
            "timing": self.timing,
            "chain": self.chain,
            "created": self.created,
            "build_seconds": self.build_seconds,
            "batches": {str(b): t.to_dict() for b, t in sorted(self.batches.items())},
            "validation": self.validation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyTable":
        """Parse :meth:`to_dict` output; ``ValueError`` names the first problem."""
        if not isinstance(d, dict) or d.get("kind") != TABLE_KIND:
            raise ValueError(f"not a latency table (kind={d.get('kind') if isinstance(d, dict) else None!r}, "
                             f"expected {TABLE_KIND!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version={d.get('format_version')!r}; this version reads {FORMAT_VERSION}")
        try:
            key = d["key"]
            return cls(
                space=SearchSpace.from_dict(d["space"]),
                env={name: key[name] for name in ENV_FIELDS},
                dtype=key["dtype"],
                backend=key["backend"],
                graph=bool(key["graph"]),
                batches={int(b): BatchTable.from_dict(t) for b, t in d["batches"].items()},
                device=d.get("device", {}),
                timing=d.get("timing", {}),
                chain=int(d.get("chain", 4)),
                created=d.get("created", ""),
                build_seconds=float(d.get("build_seconds", 0.0)),
                validation=d.get("validation"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"missing or malformed field {exc}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON atomically (see :func:`write_json_atomic`)."""
        return write_json_atomic(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike, *, strict: bool = False) -> "LatencyTable":
        """Read a table; warn (``strict=False``) or raise (``strict=True``) if it was made elsewhere.

        Raises ``ValueError`` for a missing, corrupt or wrong-version file.
        """
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"latency table {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"latency table {str(path)!r} is unreadable or corrupt: {exc}") from None
        try:
            table = cls.from_dict(d)
        except ValueError as exc:
            raise ValueError(f"latency table {str(path)!r} is corrupt or incompatible: {exc}") from None
        table.check_environment(str(path), strict=strict)
        return table

    def check_environment(self, label: str = "(in memory)", *, strict: bool = False) -> list[str]:
        """Compare the table's key with this process; warn or raise naming what differs."""
        diffs = environment_differences(self.env, environment(self.env["device_type"]))
        if diffs:
            msg = (f"latency table {label!r} was made on another device or version ({'; '.join(diffs)}); "
                   "its latencies may not hold here")
            if strict:
                raise ValueError(f"{msg}; refused (strict)")
            warnings.warn(msg, LatencyTableWarning, stacklevel=3)
        return diffs


@dataclass(frozen=True)
class LatencyBreakdown:
    """Predicted latency of one subnet, in milliseconds: stem, each block in order, head."""

    stem_ms: float
    blocks_ms: tuple[float, ...]
    head_ms: float

    @property
    def total_ms(self) -> float:
        return self.stem_ms + sum(self.blocks_ms) + self.head_ms


def _snap(value: float, allowed: Sequence[float]) -> float:
    return next(a for a in allowed if math.isclose(value, a))


class LatencyModel:
    """Latency predictor from a :class:`LatencyTable` at one batch size: stem + blocks + head.

    Implements the sampler's cost interface: ``cost(arch) -> float`` in milliseconds.

    Args:
        table: the lookup table.
        batch_size: which of the table's batch sizes to predict for (default: the smallest).
    """

    def __init__(self, table: LatencyTable, batch_size: int | None = None):
        sizes = sorted(table.batches)
        batch_size = sizes[0] if batch_size is None else batch_size
        if batch_size not in table.batches:
            raise ValueError(f"batch_size={batch_size!r} is not in the latency table; it has: {sizes}")
        self.table = table
        self.space = table.space
        self.batch_size = batch_size
        self._entries = table.batches[batch_size]

    @classmethod
    def load(cls, path: str | os.PathLike, batch_size: int | None = None, *, strict: bool = False) -> "LatencyModel":
        """Load a table file (see :meth:`LatencyTable.load`) and predict at ``batch_size``."""
        return cls(LatencyTable.load(path, strict=strict), batch_size)

    def breakdown(self, arch: Arch) -> LatencyBreakdown:
        """Per-piece prediction for ``arch``; ``ValueError`` if it is outside the table's space."""
        self.space.validate(arch)
        e, t = arch.embed_dim, self._entries
        blocks = []
        for h, r in zip(arch.num_heads, arch.mlp_ratio):
            shape = (e, h, _snap(r, self.space.mlp_ratios))
            if shape not in t.blocks:
                raise ValueError(f"block shape {block_key(shape)} is not in the latency table "
                                 f"(batch {self.batch_size}); it has {len(t.blocks)} shapes")
            blocks.append(t.blocks[shape])
        if e not in t.stem or e not in t.head:
            raise ValueError(f"embed_dim={e} has no stem/head entry in the latency table; it has {sorted(t.stem)}")
        return LatencyBreakdown(t.stem[e], tuple(blocks), t.head[e])

    def cost(self, arch: Arch) -> float:
        """Predicted latency of ``arch`` in milliseconds per forward of ``batch_size`` images."""
        return self.breakdown(arch).total_ms

    __call__ = cost

    def __repr__(self) -> str:
        env = self.table.env
        return (f"LatencyModel(space={self.space.name!r}, device={env['device_name']!r}, dtype={self.table.dtype}, "
                f"backend={self.table.backend}, graph={self.table.graph}, batch_size={self.batch_size})")

