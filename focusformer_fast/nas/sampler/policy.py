"""The FocusFormer policy π(arch | budget): an autoregressive LSTM over a space's decisions.

Decisions in order: depth, embed dim, then per block below the depth its mlp ratio and heads.
Rollouts are batched tensors end to end (``B`` archs, any budgets, take ``2 + 2 * max_depth``
LSTM steps together; an arch is its decisions' indices, :class:`Draws`). A choice is masked when
even the cheapest completion of the decisions so far plus that choice exceeds its budget, from
per-block cost tables (:class:`~focusformer_fast.nas.block_costs.BlockCosts`): a few gathers per
decision, exact for any per-block cost table, monotone or not. :meth:`SamplerPolicy.beam` draws
``n`` distinct archs without replacement (stochastic beam search). How the policy is trained is
:class:`focusformer_fast.nas.sampler.focus.FocusSampler`'s business.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focusformer_fast.nas.block_costs import BlockCosts
from focusformer_fast.space import Arch, SearchSpace

DEPTH, EMBED, MLP, HEADS = "depth", "embed", "mlp_ratio", "num_heads"
ArchKey = tuple
"""An arch as a hashable tuple of decision indices: ``(e, d, h_0, r_0, ..., h_{depth-1}, r_{depth-1})``."""


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the enclosed torch ops on one intra-op thread, then restore the thread count.

    The policy's ops are tiny ([B, 64]); extra threads only add synchronization, which on a
    busy 2-core machine made a 40-step toy run take 15 s instead of 0.25 s. The count is per
    thread in torch's OpenMP build, so the sampler's worker thread leaves the trainer's alone.
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
class Draws:
    """``B`` archs drawn (or scored) by the policy, as decision indices into the space's choices.

    ``e``, ``d``: ``[B]`` embed and depth indices; ``h``, ``r``: ``[B, max_depth]`` heads and mlp
    ratio indices (0 at and past the depth). ``log_prob``, ``entropy`` and ``kl`` are ``[B]``
    sums over the decisions taken (with grad when drawn with grad); ``kl`` is Σ_t KL(π_t ‖
    uniform over the allowed choices) along the path, nats.
    """

    space: SearchSpace
    e: Tensor
    d: Tensor
    h: Tensor
    r: Tensor
    log_prob: Tensor
    entropy: Tensor
    kl: Tensor

    def __len__(self) -> int:
        return self.e.shape[0]

    def keys(self, start: int = 0) -> list[ArchKey]:
        """One :data:`ArchKey` per draw from row ``start`` on (equal keys: equal archs)."""
        depths = self.space.depths
        out = []
        for e, d, h, r in zip(self.e[start:].tolist(), self.d[start:].tolist(), self.h[start:].tolist(),
                              self.r[start:].tolist()):
            n = depths[d]
            out.append((e, d, *(x for pair in zip(h[:n], r[:n]) for x in pair)))
        return out

    def archs(self) -> list[Arch]:
        return [key_arch(self.space, k) for k in self.keys()]


def key_arch(space: SearchSpace, key: ArchKey) -> Arch:
    """The :class:`Arch` of an :data:`ArchKey`."""
    depth = space.depths[key[1]]
    blocks = key[2:]
    return Arch(space.embed_dims[key[0]], depth, tuple(space.num_heads[i] for i in blocks[0::2]),
                tuple(space.mlp_ratios[i] for i in blocks[1::2]))


def arch_key(costs: BlockCosts, arch: Arch) -> ArchKey:
    """The :data:`ArchKey` of an arch (``ValueError`` for one outside the space)."""
    e, d, hs, rs = costs.indices(arch)
    return (e, d, *(x for pair in zip(hs, rs) for x in pair))


def key_row(space: SearchSpace, key: ArchKey) -> Tensor:
    """An :data:`ArchKey` as one long tensor ``[2 + 2 * max_depth]``: ``e, d, h_0.., r_0..`` (0 past the depth)."""
    row = torch.zeros(2 + 2 * space.max_depth, dtype=torch.long)
    blocks = key[2:]
    n = len(blocks) // 2
    row[0], row[1] = key[0], key[1]
    row[2: 2 + n] = torch.tensor(blocks[0::2], dtype=torch.long)
    row[2 + space.max_depth: 2 + space.max_depth + n] = torch.tensor(blocks[1::2], dtype=torch.long)
    return row


def split_rows(rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``e``, ``d`` ``[B]`` and ``h``, ``r`` ``[B, max_depth]`` of stacked :func:`key_row` s ``[B, 2 + 2 * max_depth]``."""
    depth = (rows.shape[1] - 2) // 2
    return rows[:, 0], rows[:, 1], rows[:, 2: 2 + depth], rows[:, 2 + depth:]


def keys_tensors(space: SearchSpace, keys: list[ArchKey]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``e``, ``d`` ``[B]`` and ``h``, ``r`` ``[B, max_depth]`` index tensors of :data:`ArchKey` s."""
    return split_rows(torch.stack([key_row(space, k) for k in keys]))


MASKED = -1e9
"""Logit of a masked choice: its probability underflows to exactly 0, and entropies stay finite."""


class _Decisions:
    """The decisions taken so far by ``B`` rows, and what they already cost (for the masks)."""

    def __init__(self, n: int, space: SearchSpace, costs: BlockCosts | None, budgets: Tensor | None):
        self.depth_values = torch.tensor(space.depths, dtype=torch.float64)
        self.blocks = torch.arange(space.max_depth)
        self.costs = costs
        self.budgets = None if budgets is None or costs is None else budgets + costs.tolerance
        self.e = torch.zeros(n, dtype=torch.long)
        self.d = torch.zeros(n, dtype=torch.long)
        self.h = torch.zeros(n, space.max_depth, dtype=torch.long)
        self.r = torch.zeros(n, space.max_depth, dtype=torch.long)
        self.depth = torch.zeros(n, dtype=torch.float64)  # the chosen depth's value
        self.prefix = torch.zeros(n, dtype=torch.float64)  # base[e, d] + deltas of the blocks decided
        self.slack = torch.zeros(n, space.max_depth, dtype=torch.float64)  # per block: budget - cheapest rest

    def take(self, kind: str, block: int, idx: Tensor, active: Tensor | None) -> None:
        costs = self.costs
        if kind == DEPTH:
            self.d = idx
            self.depth = self.depth_values[idx]
        elif kind == EMBED:
            self.e = idx
            if costs is not None:
                rest = (self.depth[:, None] - self.blocks[None, :] - 1).clamp(min=0) * costs.block_min[idx][:, None]
                self.slack = self.budgets[:, None] - rest - costs.base[idx, self.d][:, None]
                self.ratio_min, self.delta = costs.ratio_min[idx], costs.delta[idx]
        elif kind == MLP:
            self.r[:, block] = idx if active is None else idx * active
        else:
            self.h[:, block] = idx if active is None else idx * active
            if costs is not None:
                step = self.delta[torch.arange(idx.shape[0]), idx, self.r[:, block]]
                self.slack = self.slack - (step if active is None else step * active)[:, None]

    def select(self, rows: Tensor) -> None:
        for name in ("e", "d", "h", "r", "depth", "slack", "ratio_min", "delta"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name)[rows])
        self.budgets = None if self.budgets is None else self.budgets[rows]

    def allowed(self, kind: str, block: int) -> Tensor:
        """``[B, C]``: choices whose cheapest completion fits the row's budget; a row where none
        fits gets its cheapest choice alone (only below the space's cheapest arch)."""
        costs = self.costs
        if kind == DEPTH:
            comp = costs.floor.min(dim=0).values[None, :] - self.budgets[:, None]
        elif kind == EMBED:
            comp = costs.floor[:, self.d].t() - self.budgets[:, None]
        elif kind == MLP:
            comp = self.ratio_min - self.slack[:, block, None]
        else:
            rows = torch.arange(self.r.shape[0])
            comp = self.delta[rows, :, self.r[:, block]] - self.slack[:, block, None]
        low = comp.min(dim=1, keepdim=True).values
        return (comp <= 0) | ((comp == low) & (low > 0))


def _gumbel(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    u = torch.rand(shape, generator=gen, dtype=dtype).clamp_min(1e-30)
    return -torch.log(-torch.log(u))


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable at both ends."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class SamplerPolicy(nn.Module):
    """Autoregressive LSTM policy π(arch | budget) over a space's decisions.

    Decisions in order: depth, embed, then for each block below the depth its mlp ratio and
    heads. Input at every decision: the embedding of the previous choice (a learned start
    vector first) plus an embedding of the normalized budget. One categorical head per
    decision kind; choices that cannot fit the budget are masked.
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

    def _start(self, budgets_norm: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor, Tensor]:
        """Budget embedding ``[B, H]``; the LSTM's input projection of the start ``[B, 4H]``, of each
        kind's choices ``[C, 4H]`` (embedding plus budget: ``W_ih (e + b) = W_ih e + W_ih b``), its
        recurrent weight ``[H, 4H]``; zero state."""
        n = budgets_norm.shape[0]
        b = self.budget_embed(budgets_norm.to(torch.float32).view(n, 1))
        w_ih = self.lstm.weight_ih.t()
        base = torch.addmm(self.lstm.bias_ih + self.lstm.bias_hh, b, w_ih)
        proj = {k: e.weight @ w_ih for k, e in self.choice_embed.items()}
        return base, self.start @ w_ih + base, proj, self.lstm.weight_hh.t(), torch.zeros(n, self.lstm.hidden_size)

    @staticmethod
    def _cell(x: Tensor, h: Tensor, c: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor]:
        """``nn.LSTMCell`` given its input projection ``x`` (gate order i, f, g, o)."""
        gates = torch.addmm(x, h, w_hh)
        i, f, g, o = torch.sigmoid(gates).chunk(4, dim=1)
        c = f * c + i * torch.tanh(gates[:, 2 * h.shape[1]: 3 * h.shape[1]])
        return o * torch.tanh(c), c

    def rollout(self, budgets_norm: Tensor, budgets: Tensor | None, costs: BlockCosts | None, *,
                gen: torch.Generator | None = None,
                given: tuple[Tensor, Tensor, Tensor, Tensor] | None = None, uniform: Tensor | None = None) -> Draws:
        """Draw one arch per budget; with ``given``, the first rows score those archs instead
        (teacher forcing) and the rest are drawn.

        Args:
            budgets_norm: ``[B]`` budgets mapped to ``(c - cost_min) / (cost_max - cost_min)``.
            budgets: ``[B]`` float64 budgets in cost units, for the masks (``None``: no masks).
            costs: the cost tables of the budgets' cost function (``None``: no masks).
            gen: source of the draws (Gumbel-max sampling at each decision).
            given: ``(e, d, h, r)`` index tensors (:class:`Draws`) of the first ``m <= B`` archs.
            uniform: ``[B]`` bool: rows drawn masked-uniform (each decision uniform over the allowed
                choices) instead of from the policy; their ``log_prob`` is still the policy's.
        """
        n = budgets_norm.shape[0]
        m = 0 if given is None else given[0].shape[0]
        if m < n and gen is None:
            raise ValueError("rollout needs gen to draw archs (or given archs to score)")
        masked = costs is not None and budgets is not None
        base, x, proj, w_hh, h = self._start(budgets_norm)
        c = h
        st = _Decisions(n, self.space, costs if masked else None, budgets)
        heads = {k: (lin.weight, lin.bias) for k, lin in self.heads.items()}
        noise = _gumbel((n, len(self.schedule), max(len(v) for v in self.choices.values())), gen) if m < n else None
        chosen_all, ent_all, log_n_all = [], [], []
        decided = len(self.schedule)
        for t, (kind, block) in enumerate(self.schedule):
            if t >= decided:
                break
            active = None if kind in (DEPTH, EMBED) else (block < st.depth).to(torch.float32)
            h, c = self._cell(x, h, c, w_hh)
            logits = F.linear(h, *heads[kind])
            width = logits.shape[1]
            if masked:
                allowed = st.allowed(kind, block)
                logits = logits.masked_fill(~allowed, MASKED)
                log_n = allowed.sum(dim=1).to(torch.float64).log()
            else:
                log_n = torch.full((n,), math.log(width), dtype=torch.float64)
            logp = F.log_softmax(logits, dim=-1)
            probs = logp.exp()
            if m < n:
                drawing = logp.detach()
                if uniform is not None:
                    drawing = torch.where(uniform[:, None], torch.where(drawing > MASKED / 2, 0.0, MASKED), drawing)
                drawn = (drawing[m:] + noise[m:, t, :width]).argmax(dim=1)
                idx = drawn if m == 0 else torch.cat([_given(given, kind, block), drawn])
            else:
                idx = _given(given, kind, block)
            chosen = logp.gather(1, idx[:, None]).squeeze(1)
            if m and masked and bool((chosen[:m] if active is None else chosen[:m] * active[:m]).min() < MASKED / 2):
                raise ValueError(f"an arch to score is masked out by its budget at decision {kind!r}")
            ent = -(probs * logp).sum(dim=1)
            if active is None:
                chosen_all.append(chosen), ent_all.append(ent), log_n_all.append(log_n)
            else:
                chosen_all.append(chosen * active), ent_all.append(ent * active)
                log_n_all.append(log_n * active)
            st.take(kind, block, idx, None if active is None else active.long())
            if kind == DEPTH:
                decided = 2 + 2 * int(st.depth.max())
            x = proj[kind][idx] + base
        log_prob, entropy = torch.stack(chosen_all).sum(dim=0), torch.stack(ent_all).sum(dim=0)
        kl = torch.stack(log_n_all).sum(dim=0).to(torch.float32) - entropy
        return Draws(self.space, st.e, st.d, st.h, st.r, log_prob, entropy, kl)

    @torch.no_grad()
    def beam(self, budget_norm: float, budget: float, costs: BlockCosts | None, n: int,
             gen: torch.Generator, temperature: float = 1.0) -> Draws:
        """``n`` distinct archs drawn without replacement from π(·|budget), in draw order (fewer
        when fewer fit): stochastic beam search (Kool et al. 2019), i.e. Gumbel-top-n over whole
        archs, one beam of at most ``n`` partial archs, from π^(1/temperature) (renormalized at
        each decision). ``log_prob`` is each arch's log-probability under it."""
        base, x, proj, w_hh, h = self._start(torch.tensor([budget_norm]))
        c = h
        st = _Decisions(1, self.space, costs, torch.tensor([budget], dtype=torch.float64))
        heads = {k: (lin.weight, lin.bias) for k, lin in self.heads.items()}
        phi = torch.zeros(1, dtype=torch.float64)  # log π of each partial arch
        g = torch.zeros(1, dtype=torch.float64)  # its perturbed log π (Gumbel), the max over its completions
        for kind, block in self.schedule:
            k = phi.shape[0]
            active = torch.ones(k, dtype=torch.bool) if kind in (DEPTH, EMBED) else block < st.depth
            if not active.any():
                break
            h, c = self._cell(x, h, c, w_hh)
            logits = F.linear(h, *heads[kind]) / temperature
            if costs is not None:
                logits = logits.masked_fill(~st.allowed(kind, block), float("-inf"))
            logp = F.log_softmax(logits, dim=-1).to(torch.float64)
            child = phi[:, None] + logp
            perturbed = child + _gumbel(tuple(child.shape), gen, torch.float64)
            top = perturbed.max(dim=1, keepdim=True).values
            v = g[:, None] - perturbed + _log1mexp(perturbed - top)
            g_child = g[:, None] - v.clamp(min=0) - torch.log1p(torch.exp(-v.abs()))
            g_child = torch.where(torch.isneginf(perturbed), float("-inf"), g_child)
            forced = torch.full_like(g_child, float("-inf"))
            forced[:, 0] = g
            g_child = torch.where(active[:, None], g_child, forced)
            child = torch.where(active[:, None], child, torch.where(torch.isneginf(forced), float("-inf"), phi[:, None]))
            flat = g_child.flatten()
            keep = flat.topk(min(n, int(torch.isfinite(flat).sum()))).indices
            rows, idx = keep // logp.shape[1], keep % logp.shape[1]
            phi, g = child.flatten()[keep], flat[keep]
            h, c, base, active = h[rows], c[rows], base[rows], active[rows]
            st.select(rows)
            st.take(kind, block, idx, active.to(torch.long) if kind in (MLP, HEADS) else None)
            x = proj[kind][idx] + base
        zero = torch.zeros(phi.shape[0])
        return Draws(self.space, st.e, st.d, st.h, st.r, phi.to(torch.float32), zero, zero)


def _given(given: tuple[Tensor, Tensor, Tensor, Tensor], kind: str, block: int) -> Tensor:
    e, d, h, r = given
    if kind == DEPTH:
        return d
    if kind == EMBED:
        return e
    return (r if kind == MLP else h)[:, block]
