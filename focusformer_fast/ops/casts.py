"""Copies of parameters in the compute dtype, made once per change of the parameter instead of once per call.

Under bf16 autocast the super-weights stay float32 and every GEMM computes in bfloat16. Casting a
super-weight at every call (as autocast does for ``F.linear``, and once more for the backward's
dX GEMM) costs a kernel launch and a pass over the whole super-weight per linear per step;
:func:`cast` instead keeps one copy per (parameter, dtype), shared by the forward and the
backward, and makes a new one only when the parameter has changed:

* its version counter moved (any in-place update: ``torch.optim`` steps, ``load_state_dict``,
  arithmetic under ``no_grad``);
* its storage moved (``.to()``, ``param.data = ...``);
* an optimizer step ran since the copy was made (every ``torch.optim.Optimizer.step``, fused
  ones included, which do not bump version counters, calls :func:`invalidate`).

An update through ``param.data`` outside an optimizer step is invisible to all three: call
:func:`invalidate` after it. Only leaves that require grad (parameters) are cached, as autocast's
own cast cache does; other tensors are cast at each call. A new copy is a new tensor (never
written in place), so a backward still running on the previous one reads the values its forward used.

Graph mode (:mod:`focusformer_fast.models.graphs`) needs copies at fixed addresses: inside
``with StaticCasts.scope()`` (warm-up and capture of a block's graphs), :func:`cast` returns the
copies of that :class:`StaticCasts`, and :meth:`StaticCasts.refresh` recasts the stale ones in place
before a replay.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

_generation = 0  # bumped by invalidate(): every copy made before is stale
_hook = None
_local = threading.local()
_copies: WeakIdKeyDictionary = WeakIdKeyDictionary()  # parameter -> {dtype: _Copy}


@dataclass
class _Copy:
    tensor: Tensor
    stamp: tuple[int, int, int]  # (version, data_ptr, generation) of the parameter when copied


def _stamp(param: Tensor) -> tuple[int, int, int]:
    return param._version, param.data_ptr(), _generation


def invalidate(*_args, **_kwargs) -> None:
    """Mark every cached copy stale (the next :func:`cast` recasts). Called after each optimizer step."""
    global _generation
    _generation += 1


def _watch_optimizers() -> None:
    global _hook
    if _hook is None:
        _hook = register_optimizer_step_post_hook(invalidate)


def cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``, detached: the cached copy of a parameter, a fresh cast of anything else.

    Returns ``t.detach()`` itself when it already has ``dtype``. Gradients do not flow through
    the result: callers pass the parameter too and return its gradient themselves.
    """
    if t.dtype == dtype:
        return t.detach()
    if not (t.is_leaf and t.requires_grad):
        return t.detach().to(dtype)
    static = getattr(_local, "static", None)
    if static is not None:
        return static.get(t, dtype)
    _watch_optimizers()
    by_dtype = _copies.setdefault(t, {})
    copy = by_dtype.get(dtype)
    stamp = _stamp(t)
    if copy is None or copy.stamp != stamp:
        copy = by_dtype[dtype] = _Copy(t.detach().to(dtype), stamp)
    return copy.tensor


class StaticCasts:
    """Copies at fixed addresses, for CUDA graphs that read them: one per (parameter, dtype) seen.

    Inside :meth:`scope`, :func:`cast` returns these copies (made on first use, recast in place
    when stale); :meth:`refresh` recasts every stale one in place, in one launch, and is what a
    graph replay runs first.
    """

    def __init__(self) -> None:
        self._copies: dict[tuple[int, torch.dtype], tuple[Tensor, _Copy]] = {}

    def __len__(self) -> int:
        return len(self._copies)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Route :func:`cast` to this set within the context (this thread only)."""
        _watch_optimizers()
        saved = getattr(_local, "static", None)
        _local.static = self
        try:
            yield
        finally:
            _local.static = saved

    def get(self, param: Tensor, dtype: torch.dtype) -> Tensor:
        """The fixed copy of ``param`` in ``dtype``, made or recast in place if stale."""
        key = (id(param), dtype)
        held = self._copies.get(key)
        if held is None or held[0] is not param:
            held = self._copies[key] = (param, _Copy(param.detach().to(dtype), _stamp(param)))
        elif held[1].stamp != _stamp(param):
            self._recast([held])
        return held[1].tensor

    def refresh(self) -> int:
        """Recast every stale copy in place; returns how many were."""
        stale = [held for held in self._copies.values() if held[1].stamp != _stamp(held[0])]
        if stale:
            self._recast(stale)
        return len(stale)

    @staticmethod
    def _recast(held: list[tuple[Tensor, _Copy]]) -> None:
        with torch.no_grad():
            torch._foreach_copy_([copy.tensor for _, copy in held], [param.detach() for param, _ in held])
        for param, copy in held:
            copy.stamp = _stamp(param)
