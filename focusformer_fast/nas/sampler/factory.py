"""A sampler by name: ``focus``, ``uniform`` or ``sandwich``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from focusformer_fast.nas.costs import CostFn
from focusformer_fast.nas.sampler.baselines import ArchSampler, SandwichSampler, UniformSampler
from focusformer_fast.nas.sampler.focus import FocusSampler
from focusformer_fast.nas.sampler.options import SAMPLERS, SamplerOptions
from focusformer_fast.space import SearchSpace


def make_sampler(name: str, space: SearchSpace, cost_fn: CostFn, budgets: Sequence[float], *, seed: int,
                 options: SamplerOptions | None = None) -> ArchSampler:
    """A sampler by name (``focus``, ``uniform``, ``sandwich``); ``focus`` trains with ``options``
    (any object holding the :class:`SamplerOptions` fields; default: their defaults)."""
    if name == "focus":
        opts = SamplerOptions() if options is None else SamplerOptions.of(options)
        return FocusSampler(space, cost_fn, budgets, seed=seed, **dataclasses.asdict(opts))
    if name == "uniform":
        return UniformSampler(space, cost_fn, seed)
    if name == "sandwich":
        return SandwichSampler(space, cost_fn, seed)
    raise ValueError(f"sampler {name!r} is unknown; allowed: {', '.join(SAMPLERS)}")
