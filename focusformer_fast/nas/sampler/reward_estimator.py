"""A reward estimator: arch encoding -> predicted val score, fitted on the record of real scores.

The sampler's real evaluations (a supernet forward on a val batch each) are few; its policy is
tiny and cheap to update. The estimator turns the :class:`~focusformer_fast.nas.sampler.scored_record.ScoredRecord`
into a score for any arch, so a round of real scores can feed many policy draws (PNAG trains
its generator against such an estimator).

Encoding (:class:`Encoder`, ``F`` floats per arch, computed as tensors from the archs' decision
indices, nothing memoized): one-hots of depth and embed dim; per block ``i < max_depth`` an
"active" flag and one-hots of its mlp ratio and heads (zero past the depth); the active blocks'
mean mlp ratio and heads (normalized to [0, 1] over the choices); and the log of FLOPs and
parameters, normalized to [0, 1] over the space (from per-block tables built once).

The model is a small MLP ``F -> hidden -> hidden -> 1``, warm-started from its previous fit.
Two losses (``loss``): ``"regression"``, a recency-weighted squared error on the scores; or
``"ranking"``, a pairwise logistic loss on the order of pairs of records (PNAG's ranking loss,
without its Pareto term: the sampler applies the budget itself). The sampler uses regression,
which keeps estimates on the score's scale for the Pareto-aware reward; how the two compare
is measured in docs/sampler.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusformer_fast.nas.block_costs import BlockCosts
from focusformer_fast.nas.sampler.policy import arch_key, keys_tensors
from focusformer_fast.space import Arch, SearchSpace

LOSSES = ("regression", "ranking")
Indices = tuple[Tensor, Tensor, Tensor, Tensor]
"""Archs as ``(e, d, h, r)`` decision indices (:class:`focusformer_fast.nas.sampler.policy.Draws`)."""


def _unit(values: Sequence[float]) -> Tensor:
    """``values`` mapped linearly onto [0, 1] (all 0 when they are one value)."""
    t = torch.tensor(values, dtype=torch.float32)
    span = t.max() - t.min()
    return (t - t.min()) / span if span > 0 else torch.zeros_like(t)


class Encoder:
    """The estimator's features (module docstring) of archs given as :data:`Indices`: ``[B, F]``."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.counts = [BlockCosts.of(space, space.flops), BlockCosts.of(space, space.params)]
        self.log_ranges = [(math.log(c.min_cost()), math.log(c.max_cost())) for c in self.counts]
        self.ratio_unit, self.heads_unit = _unit(space.mlp_ratios), _unit(space.num_heads)
        self.dim = len(space.depths) + len(space.embed_dims) + space.max_depth * (
            1 + len(space.mlp_ratios) + len(space.num_heads)) + 4

    def indices(self, archs: Sequence[Arch]) -> Indices:
        return keys_tensors(self.space, [arch_key(self.counts[0], a) for a in archs])

    def __call__(self, x: Indices | Sequence[Arch]) -> Tensor:
        e, d, h, r = x if isinstance(x, tuple) else self.indices(x)
        s, n = self.space, e.shape[0]
        depth = torch.tensor(s.depths, dtype=torch.float32)[d]
        active = (torch.arange(s.max_depth)[None, :] < depth[:, None]).to(torch.float32)  # [B, max_depth]
        blocks = torch.cat([active[..., None], F.one_hot(r, len(s.mlp_ratios)) * active[..., None],
                            F.one_hot(h, len(s.num_heads)) * active[..., None]], dim=2).view(n, -1)
        mean_ratio = (self.ratio_unit[r] * active).sum(dim=1) / depth
        mean_heads = (self.heads_unit[h] * active).sum(dim=1) / depth
        logs = []
        for count, (lo, hi) in zip(self.counts, self.log_ranges):
            logs.append((count.costs(e, d, h, r).log() - lo) / (hi - lo) if hi > lo else torch.zeros(n))
        return torch.cat([F.one_hot(d, len(s.depths)), F.one_hot(e, len(s.embed_dims)), blocks,
                          torch.stack([mean_ratio, mean_heads, *(t.to(torch.float32) for t in logs)], dim=1)],
                         dim=1).to(torch.float32)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b of two equal-length sequences; nan if undefined (a side whose values are all equal).

    ``(concordant - discordant) / sqrt(pairs untied in x * pairs untied in y)`` over all pairs, in one
    tensor op (the sampler's ``n`` is at most a few hundred). Not scipy's: importing ``scipy.stats``
    takes 0.5-0.7 s, and on the sampler's first rounds that import stalled training for 90 ms.
    """
    a, b = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    i, j = torch.triu_indices(len(a), len(a), 1)
    dx, dy = torch.sign(a[i] - a[j]), torch.sign(b[i] - b[j])
    untied = float(torch.count_nonzero(dx)) * float(torch.count_nonzero(dy))
    return float((dx * dy).sum()) / math.sqrt(untied) if untied else math.nan


class RewardEstimator:
    """Predicts an arch's val score from its :class:`Encoder` features; refit on weighted records.

    Args:
        space: the search space whose archs are encoded.
        loss: ``"regression"`` or ``"ranking"`` (module docstring).
        hidden: MLP width.
        fit_steps: full-batch Adam steps per :meth:`fit` (warm-started from the last fit).
        lr: Adam learning rate.
        seed: seeds the initialization and the ranking loss's pair draws.
    """

    def __init__(self, space: SearchSpace, *, loss: str = "regression", hidden: int = 64, fit_steps: int = 50,
                 lr: float = 3e-3, seed: int = 0):
        if loss not in LOSSES:
            raise ValueError(f"estimator loss {loss!r} is unknown; allowed: {', '.join(LOSSES)}")
        self.space, self.loss, self.fit_steps = space, loss, fit_steps
        torch_gen = torch.Generator().manual_seed(seed)
        self.encode = Encoder(space)
        dim = self.encode.dim
        self.model = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                   nn.Linear(hidden, 1))
        with torch.no_grad():
            for p in self.model.parameters():  # a private stream: the global torch RNG is untouched
                p.copy_(torch.randn(p.shape, generator=torch_gen) * (1.0 / math.sqrt(p.shape[-1])
                                                                     if p.dim() > 1 else 0.0))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, fused=True)
        self.pairs = torch.Generator().manual_seed(seed + 1)
        self.fitted = False

    def predict(self, archs: Indices | Sequence[Arch]) -> Tensor:
        """Predicted scores, shape ``[B]`` (no grad), of archs as :data:`Indices` or :class:`Arch` es."""
        with torch.no_grad():
            return self.model(self.encode(archs)).view(-1)

    def fit(self, archs: Indices | Sequence[Arch], scores: Sequence[float], weights: Sequence[float]) -> float:
        """``fit_steps`` Adam steps on the records; returns the last loss."""
        x = self.encode(archs)
        y = torch.tensor(scores, dtype=torch.float32)
        w = torch.tensor(weights, dtype=torch.float32)
        w = w / w.sum()
        loss = torch.zeros(())
        for _ in range(self.fit_steps):
            pred = self.model(x).view(-1)
            loss = self._loss(pred, y, w)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.fitted = True
        return loss.item()

    def _loss(self, pred: Tensor, y: Tensor, w: Tensor) -> Tensor:
        if self.loss == "regression":
            return (w * (pred - y) ** 2).sum()
        n = len(y)
        i = torch.randint(n, (4 * n,), generator=self.pairs)
        j = torch.randint(n, (4 * n,), generator=self.pairs)
        sign = torch.sign(y[i] - y[j])
        pw = w[i] * w[j] * sign.abs()
        if pw.sum() == 0:
            return (pred * 0).sum()
        return (pw * nn.functional.softplus(-sign * (pred[i] - pred[j]))).sum() / pw.sum()

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "pairs": self.pairs.get_state(), "fitted": self.fitted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["loss"] != self.loss:
            raise ValueError(f"estimator state was fitted with loss {state['loss']!r}, not {self.loss!r}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.pairs.set_state(state["pairs"])
        self.fitted = bool(state["fitted"])
