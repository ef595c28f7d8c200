"""The dtypes the fast backends compute and return in, under autocast as the reference gets them.

Autocast casts floating tensors other than float64 (``F.linear``, SDPA: to the autocast dtype;
``F.layer_norm``: to float32) and leaves float64 and non-float tensors alone. The backends follow
it, with one deliberate difference for LayerNorm: they normalize in float32 as the reference
does, but return the autocast dtype, because every consumer of a LayerNorm output in the
supernet is a linear that autocast would cast to that dtype anyway (the same rounding, done
once in the LayerNorm's store instead of by a separate cast kernel).
"""

from __future__ import annotations

import torch
from torch import Tensor


def autocast_dtype(t: Tensor) -> torch.dtype | None:
    """The dtype autocast casts ``t`` to for a matmul on its device, or None when it leaves ``t`` alone
    (autocast off, float64, or not floating)."""
    dev = t.device.type
    if t.is_floating_point() and t.dtype != torch.float64 and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return None


def matmul_dtype(t: Tensor) -> torch.dtype:
    """Compute (and output) dtype of a linear or attention on ``t``: autocast's, else ``t.dtype``."""
    return autocast_dtype(t) or t.dtype


def layernorm_out_dtype(x: Tensor) -> torch.dtype:
    """Output dtype of the fast backends' LayerNorm of ``x`` (statistics are float32 regardless)."""
    return autocast_dtype(x) or x.dtype
