"""A reward estimator: arch encoding -> predicted val score, fitted on the record of real scores.

The sampler's real evaluations (a supernet forward on a val batch each) are few; its policy is
tiny and cheap to update. The estimator turns the :class:`~focusformer_fast.scored_record.ScoredRecord`
into a score for any arch, so a round of real scores can feed many policy steps (PNAG trains
its generator against such an estimator).

Encoding (:func:`encode`, ``F`` floats per arch): one-hots of depth and embed dim; per block
``i < max_depth`` an "active" flag and one-hots of its mlp ratio and heads (zero past the
depth); the active blocks' mean mlp ratio and heads (normalized to [0, 1] over the choices);
and the log of FLOPs and parameters, normalized to [0, 1] over the space.

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
from torch import Tensor, nn

from .space import Arch, SearchSpace

LOSSES = ("regression", "ranking")


def _norm(v: float, choices: Sequence[float]) -> float:
    lo, hi = min(choices), max(choices)
    return 0.0 if hi == lo else (v - lo) / (hi - lo)


def encode(space: SearchSpace, arch: Arch) -> list[float]:
    """The estimator's features of ``arch`` (see the module docstring); ``F`` floats."""
    onehot = lambda v, cs: [float(math.isclose(v, c)) for c in cs]  # noqa: E731
    x = onehot(arch.depth, space.depths) + onehot(arch.embed_dim, space.embed_dims)
    for i in range(space.max_depth):
        if i < arch.depth:
            x += [1.0] + onehot(arch.mlp_ratio[i], space.mlp_ratios) + onehot(arch.num_heads[i], space.num_heads)
        else:
            x += [0.0] * (1 + len(space.mlp_ratios) + len(space.num_heads))
    x.append(sum(_norm(r, space.mlp_ratios) for r in arch.mlp_ratio) / arch.depth)
    x.append(sum(_norm(h, space.num_heads) for h in arch.num_heads) / arch.depth)
    for count in (space.flops, space.params):
        lo, hi = math.log(count(space.smallest())), math.log(count(space.largest()))
        x.append(0.0 if hi == lo else (math.log(count(arch)) - lo) / (hi - lo))
    return x


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b of two equal-length sequences (scipy's); nan if undefined (a constant side)."""
    from scipy.stats import kendalltau  # half a second to import: not on a command's start

    return float(kendalltau(x, y).statistic)


class RewardEstimator:
    """Predicts an arch's val score from :func:`encode`; refit on weighted records.

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
        dim = len(encode(space, space.smallest()))
        self.model = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                   nn.Linear(hidden, 1))
        with torch.no_grad():
            for p in self.model.parameters():  # a private stream: the global torch RNG is untouched
                p.copy_(torch.randn(p.shape, generator=torch_gen) * (1.0 / math.sqrt(p.shape[-1])
                                                                     if p.dim() > 1 else 0.0))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.pairs = torch.Generator().manual_seed(seed + 1)
        self.fitted = False
        self._features: dict[Arch, list[float]] = {}

    def features(self, archs: Sequence[Arch]) -> Tensor:
        """``[len(archs), F]`` encodings (memoized per arch)."""
        rows = []
        for a in archs:
            f = self._features.get(a)
            if f is None:
                f = self._features[a] = encode(self.space, a)
            rows.append(f)
        return torch.tensor(rows, dtype=torch.float32)

    def predict(self, archs: Sequence[Arch]) -> Tensor:
        """Predicted scores, shape ``[len(archs)]`` (no grad)."""
        with torch.no_grad():
            return self.model(self.features(archs)).view(-1)

    def fit(self, archs: Sequence[Arch], scores: Sequence[float], weights: Sequence[float]) -> float:
        """``fit_steps`` Adam steps on the records; returns the last loss."""
        x = self.features(archs)
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
