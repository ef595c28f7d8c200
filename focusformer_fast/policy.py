"""The FocusFormer policy π(arch | budget): an autoregressive LSTM over a space's decisions.

Decisions in order: depth, embed dim, then per block below the depth its mlp ratio and heads.
Rollouts are batched (``B`` archs, any budgets, take ``2 + 2 * max_depth`` LSTM steps
together); choices whose cheapest completion cannot fit a budget are masked. How the policy is
trained is :class:`focusformer_fast.sampler.FocusSampler`'s business.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .space import Arch, SearchSpace

DEPTH, EMBED, MLP, HEADS = "depth", "embed", "mlp_ratio", "num_heads"


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the enclosed torch ops on one intra-op thread, then restore the thread count.

    The policy's ops are tiny ([B, 64]); extra threads only add synchronization, which on a
    busy 2-core machine made a 40-step toy run take 15 s instead of 0.25 s.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class Rollout:
    """One arch drawn (or scored) by the policy.

    ``log_prob`` and ``entropy`` are 0-d tensors: sums over the decisions taken (blocks past
    the depth are not decided), with grad when drawn with grad. ``log_uniform`` is the
    log-probability of the same decisions under masked uniform sampling (each decision uniform
    over its allowed choices): ``-sum(log n_allowed)``.
    """

    arch: Arch
    log_prob: Tensor
    entropy: Tensor
    log_uniform: float


class _Partial:
    """Decisions taken so far; completes them with the cheapest values to bound the cost."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.values: dict[str, Any] = {DEPTH: None, EMBED: None, MLP: [], HEADS: []}
        self.free = False  # the dearest completion fits: no later choice can exceed the budget

    def decides(self, kind: str, block: int) -> bool:
        """Whether decision ``kind`` of ``block`` is taken (per-block ones only below the depth)."""
        return kind in (DEPTH, EMBED) or block < self.values[DEPTH]

    def take(self, kind: str, value: Any) -> None:
        if kind in (MLP, HEADS):
            self.values[kind].append(value)
        else:
            self.values[kind] = value

    def cheapest(self, kind: str | None = None, value: Any = None) -> Arch:
        """The cheapest arch that extends the decisions so far (plus ``kind = value`` if given)."""
        v = {DEPTH: self.values[DEPTH], EMBED: self.values[EMBED], MLP: list(self.values[MLP]),
             HEADS: list(self.values[HEADS])}
        if kind is not None:
            if kind in (MLP, HEADS):
                v[kind].append(value)
            else:
                v[kind] = value
        s = self.space
        d = v[DEPTH] if v[DEPTH] is not None else s.depths[0]
        e = v[EMBED] if v[EMBED] is not None else s.embed_dims[0]
        ratios = v[MLP] + [s.mlp_ratios[0]] * (d - len(v[MLP]))
        heads = v[HEADS] + [s.num_heads[0]] * (d - len(v[HEADS]))
        return Arch(e, d, tuple(heads), tuple(ratios))

    def dearest(self) -> Arch:
        """The most expensive arch that extends the decisions so far."""
        s, v = self.space, self.values
        d = v[DEPTH] if v[DEPTH] is not None else s.depths[-1]
        e = v[EMBED] if v[EMBED] is not None else s.embed_dims[-1]
        ratios = v[MLP] + [s.mlp_ratios[-1]] * (d - len(v[MLP]))
        heads = v[HEADS] + [s.num_heads[-1]] * (d - len(v[HEADS]))
        return Arch(e, d, tuple(heads), tuple(ratios))

    def mask(self, kind: str, values: Sequence, fits: Callable[[Arch], bool]) -> list[bool]:
        """Choices whose cheapest completion fits; if none does, the first (cheapest) alone.

        Once the dearest completion fits, every later choice is allowed without a cost call.
        """
        if not self.free:
            self.free = fits(self.dearest())
        if self.free:
            return [True] * len(values)
        ok = [fits(self.cheapest(kind, v)) for v in values]
        return ok if any(ok) else [True] + [False] * (len(values) - 1)


def _draw(probs: Sequence[float], u: float) -> int:
    """Inverse-CDF draw from ``probs`` with a uniform ``u`` in [0, 1); never a zero-probability entry."""
    acc, last = 0.0, 0
    for i, p in enumerate(probs):
        if p > 0.0:
            acc, last = acc + p, i
            if u < acc:
                return i
    return last


class SamplerPolicy(nn.Module):
    """Autoregressive LSTM policy π(arch | budget) over a space's decisions.

    Decisions in order: depth, embed, then for each block below the depth its mlp ratio and
    heads. Input at every decision: the embedding of the previous choice (a learned start
    vector first) plus an embedding of the normalized budget. One categorical head per
    decision kind; choices that cannot fit the budget are masked. Rollouts are batched:
    ``B`` archs (any budgets) take ``2 + 2 * max_depth`` LSTM steps together.
    """

    def __init__(self, space: SearchSpace, hidden: int = 64, seed: int = 0):
        super().__init__()
        self.space = space
        self.choices = {DEPTH: space.depths, EMBED: space.embed_dims, MLP: space.mlp_ratios, HEADS: space.num_heads}
        self.schedule = [(DEPTH, 0), (EMBED, 0)] + [(k, i) for i in range(space.max_depth) for k in (MLP, HEADS)]
        self.budget_embed = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.choice_embed = nn.ModuleDict({k: nn.Embedding(len(c), hidden) for k, c in self.choices.items()})
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, len(c)) for k, c in self.choices.items()})
        gen = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1, generator=gen)  # PNAG's init, from a private stream

    def _cell(self, x: Tensor, h: Tensor, c: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """``nn.LSTMCell`` as one matmul (same weights and gate order i, f, g, o; faster at batch 1-64)."""
        i, f, g, o = torch.addmm(b, torch.cat([x, h], dim=1), w).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def rollout(
        self,
        budgets_norm: Sequence[float],
        *,
        rng: random.Random | None = None,
        fits: Sequence[Callable[[Arch], bool]] | None = None,
        archs: Sequence[Arch] | None = None,
    ) -> list[Rollout]:
        """Draw one arch per budget (or, with ``archs``, score those archs).

        Args:
            budgets_norm: ``B`` budgets, each mapped to ``(c - cost_min) / (cost_max - cost_min)``.
            rng: source of the draws (uniforms for inverse-CDF sampling).
            fits: per budget, ``fits(a)`` is True when arch ``a`` is within it. A choice is
                masked when even the cheapest completion of the decisions so far plus that
                choice does not fit (exact for costs monotone in every decision).
            archs: ``B`` archs of the space to score (teacher forcing) instead of drawing.
        """
        n = len(budgets_norm)
        if archs is None and rng is None:
            raise ValueError("rollout needs rng to draw archs (or archs to score)")
        b = self.budget_embed(torch.tensor(budgets_norm, dtype=torch.float32).view(n, 1))
        w = torch.cat([self.lstm.weight_ih, self.lstm.weight_hh], dim=1).t()
        bias = self.lstm.bias_ih + self.lstm.bias_hh
        h = c = torch.zeros(n, self.lstm.hidden_size)
        inp = self.start + b
        partials = [_Partial(self.space) for _ in range(n)]
        log_prob, entropy = torch.zeros(n), torch.zeros(n)
        log_uniform = [0.0] * n
        for kind, block in self.schedule:
            active = [p.decides(kind, block) for p in partials]
            if not any(active):
                break
            h, c = self._cell(inp, h, c, w, bias)
            logits = self.heads[kind](h)
            values = self.choices[kind]
            if fits is not None:
                allowed = [p.mask(kind, values, f) if a else [True] * len(values)
                           for p, f, a in zip(partials, fits, active)]
                logits = logits.masked_fill(~torch.tensor(allowed), float("-inf"))
                for j in range(n):
                    if active[j]:
                        log_uniform[j] -= math.log(sum(allowed[j]))
            else:
                for j in range(n):
                    if active[j]:
                        log_uniform[j] -= math.log(len(values))
            logp = F.log_softmax(logits, dim=-1)
            probs = logp.exp()
            if archs is None:
                rows = probs.detach().tolist()
                idx = [_draw(rows[j], rng.random()) if active[j] else 0 for j in range(n)]
            else:
                idx = [self._index(kind, archs[j], block) if active[j] else 0 for j in range(n)]
            idx_t = torch.tensor(idx)
            chosen = logp.gather(1, idx_t.view(n, 1)).view(n)
            if archs is not None and not torch.isfinite(chosen).all():
                raise ValueError(f"an arch to score is masked out by its budget at decision {kind!r}")
            ent = -(probs * logp.masked_fill(probs == 0, 0.0)).sum(dim=1)
            act = torch.tensor(active)
            log_prob = log_prob + torch.where(act, chosen, 0.0)
            entropy = entropy + torch.where(act, ent, 0.0)
            for j in range(n):
                if active[j]:
                    partials[j].take(kind, values[idx[j]])
            inp = self.choice_embed[kind].weight[idx_t] + b
        return [Rollout(p.cheapest(), log_prob[j], entropy[j], log_uniform[j]) for j, p in enumerate(partials)]

    def _index(self, kind: str, arch: Arch, block: int) -> int:
        if kind == DEPTH:
            v = arch.depth
        elif kind == EMBED:
            v = arch.embed_dim
        else:
            v = (arch.mlp_ratio if kind == MLP else arch.num_heads)[block]
        values = self.choices[kind]
        for i, c in enumerate(values):
            if math.isclose(v, c):
                return i
        raise ValueError(f"Arch.{kind}={v!r} is not in space {self.space.name!r}; allowed: {list(values)}")
