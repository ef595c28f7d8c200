"""A bounded record of scored subnets: what the sampler learned from every real evaluation.

Each entry is one subnet scored with the shared weights during training: its arch, the budget
it was drawn for, its cost (budget units), its val score in [0, 1] and the global step. The
record keeps the newest ``capacity`` entries; since the shared weights change as training goes
on, an entry's weight halves every ``half_life`` steps of age (:meth:`ScoredRecord.weights`).
It lives inside the sampler's ``state_dict`` so a resumed run continues with the same record.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from focusformer_fast.space import Arch

DEFAULT_CAPACITY = 1000
"""Entries kept: more than the 800 real evaluations of the default digits run."""
DEFAULT_HALF_LIFE = 500
"""Steps after which an entry weighs half: a quarter of the default 2000-step run."""


@dataclass(frozen=True)
class Scored:
    """One real evaluation: ``arch`` drawn for ``budget`` costs ``cost``, scored ``score`` at ``step``."""

    arch: Arch
    budget: float
    cost: float
    score: float
    step: int


class ScoredRecord:
    """The newest ``capacity`` scored subnets, oldest first."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, half_life: float = DEFAULT_HALF_LIFE):
        if capacity < 1 or not half_life > 0:
            raise ValueError(f"record capacity={capacity!r} must be >= 1 and half_life={half_life!r} > 0")
        self.capacity, self.half_life = capacity, float(half_life)
        self.entries: deque[Scored] = deque(maxlen=capacity)

    def add(self, entries: Iterable[Scored]) -> None:
        """Append ``entries`` (dropping the oldest beyond ``capacity``)."""
        self.entries.extend(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Scored]:
        return iter(self.entries)

    def weights(self, now: int) -> list[float]:
        """Per entry, ``0.5 ** ((now - step) / half_life)``: 1 for this step's entries."""
        return [0.5 ** (max(now - e.step, 0) / self.half_life) for e in self.entries]

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "half_life": self.half_life,
                "entries": [[e.arch.to_dict(), e.budget, e.cost, e.score, e.step] for e in self.entries]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity, self.half_life = int(state["capacity"]), float(state["half_life"])
        self.entries = deque((Scored(Arch.from_dict(a), float(b), float(c), float(s), int(t))
                              for a, b, c, s, t in state["entries"]), maxlen=self.capacity)
