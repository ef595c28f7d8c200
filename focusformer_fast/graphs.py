"""CUDA graphs of supernet blocks for training: each block shape is captured once and replayed for any subnet.

Eager supernet training is launch-bound: a random subnet's step issues hundreds of small kernels
from Python. A whole-subnet graph would be captured anew for nearly every step (the space holds
~10^9 subnets), but a block's work depends only on its *shape*: (block index, embed dim, heads,
MLP width) at a given batch, token count, dtype and backend. autoformer-t has at most
14 x 3 x 2 x 2 = 168 of them, so :class:`BlockGraphs` captures each block shape's forward and
backward as two CUDA graphs the first time it is used, and replays them afterwards.

Memory and data flow, per (batch, tokens, dtype):

* the residual stream between blocks lives in static buffers: block ``i`` reads ``act[i]`` and
  writes ``act[i + 1]``, and its backward reads ``grad[i + 1]`` and writes ``grad[i]``; every
  graph of block ``i`` uses the same buffers (viewed at the subnet's embed dim), so consecutive
  graphed blocks hand activations and gradients over without a copy;
* the graphs of block ``i`` share one private memory pool, and only the parameter gradients of a
  captured graph stay allocated after capture: the saved activations of block ``i``'s shapes
  overlap in memory, which is safe because one forward uses one shape per block, and its backward
  runs before the next forward (:meth:`BlockGraphs.usable` sends a forward to the eager path
  while an earlier graphed forward, still referenced, has not finished its backward);
* parameter gradients go back through autograd (so ``AccumulateGrad`` hooks, DDP's among them,
  fire as usual) as full-size tensors, copied out of the graph's memory in one foreach launch.

The cache holds at most ``max_graphs`` block shapes and evicts the least recently used one.
Graph mode is for training: evaluation, ``torch.no_grad`` and CPU tensors run eagerly.
"""

from __future__ import annotations

import collections
import dataclasses
import weakref
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from . import ops

if TYPE_CHECKING:
    from .space import Arch

WARMUP_ITERS = 2  # eager runs before a capture: lazy initialisation, cuBLAS workspaces, Triton autotuning


@dataclasses.dataclass
class _Entry:
    """The two graphs of one block shape and the tensors they own."""

    forward: torch.cuda.CUDAGraph
    backward: torch.cuda.CUDAGraph
    x: Tensor  # [B, N, e] view of act[i]: the captured input
    out: Tensor  # [B, N, e] view of act[i + 1]
    grad_out: Tensor  # [B, N, e] view of grad[i + 1]
    grad_x: Tensor  # [B, N, e] view of grad[i]
    param_grads: tuple[Tensor | None, ...]  # full-size, one per block parameter
    param_ptrs: tuple[int, ...]  # data_ptr of each parameter at capture


class _Token:
    """One graphed forward: the count of its blocks whose backward has not replayed yet."""

    def __init__(self, pending: int):
        self.pending = pending


class _GraphedBlock(torch.autograd.Function):
    """Autograd node of one replayed block: forward and backward are graph replays."""

    @staticmethod
    def forward(ctx, entry: _Entry, token: _Token, x: Tensor, *params: Tensor) -> Tensor:
        if x.data_ptr() != entry.x.data_ptr():
            entry.x.copy_(x)
        entry.forward.replay()
        ctx.entry, ctx.token = entry, token
        return entry.out.detach()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        entry = ctx.entry
        if grad_out.data_ptr() != entry.grad_out.data_ptr() or grad_out.stride() != entry.grad_out.stride():
            entry.grad_out.copy_(grad_out)
        entry.backward.replay()
        ctx.token.pending -= 1
        # autograd adopts a returned gradient as .grad when nothing else seems to hold it, so the
        # graph's own tensors (which the next replay overwrites) are copied out, in one launch
        held = [g for g in entry.param_grads if g is not None]
        fresh = iter(torch._foreach_mul(held, 1.0) if held else ())
        param_grads = tuple(None if g is None else next(fresh) for g in entry.param_grads)
        return (None, None, entry.grad_x.detach(), *param_grads)


@dataclasses.dataclass
class _Stream:
    """Static residual-stream buffers for one (batch, tokens, dtype, device): flat, sized for E_max."""

    act: list[Tensor]
    grad: list[Tensor]

    def view(self, buffers: list[Tensor], i: int, shape: tuple[int, int, int]) -> Tensor:
        return buffers[i][: shape[0] * shape[1] * shape[2]].view(shape)


class BlockGraphs:
    """Per-block-shape CUDA graph cache of a :class:`~focusformer_fast.supernet.Supernet` (``graphs=True``).

    Args:
        max_graphs: block shapes kept (each: a forward and a backward graph and the block's
            full-size parameter gradients); the least recently used is evicted beyond it.
    """

    def __init__(self, max_graphs: int = 512):
        if not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs={max_graphs!r} must be a positive int")
        self.max_graphs = max_graphs
        self._entries: collections.OrderedDict[tuple, _Entry] = collections.OrderedDict()
        self._streams: dict[tuple, _Stream] = {}
        self._pools: dict[int, tuple] = {}
        self._last_token: weakref.ref | None = None
        self.captures = self.replays = self.eager = 0

    def __deepcopy__(self, memo: dict) -> BlockGraphs:
        # the graphs read the original model's parameters: a copied model starts with an empty cache
        return BlockGraphs(self.max_graphs)

    def stats(self) -> dict[str, int]:
        """``captures``/``replays``: block shapes captured / blocks replayed so far; ``eager``: blocks run
        without a graph in graph mode; ``cached``: block shapes held now."""
        return {"captures": self.captures, "replays": self.replays, "eager": self.eager, "cached": len(self._entries)}

    def clear(self) -> None:
        """Drop every graph and buffer (e.g. after moving the model to another device or dtype)."""
        self._entries.clear()
        self._streams.clear()
        self._pools.clear()
        self._last_token = None

    def usable(self, x: Tensor, training: bool, depth: int) -> bool:
        """Whether a forward of ``depth`` blocks on ``x`` can run on graphs: a training forward on
        CUDA with grad enabled, outside a capture, with no earlier graphed forward still waiting for
        its backward. Training forwards that cannot are counted in ``stats()["eager"]``."""
        if not (x.is_cuda and training and torch.is_grad_enabled()):
            return False
        token = None if self._last_token is None else self._last_token()
        if torch.cuda.is_current_stream_capturing() or (token is not None and token.pending > 0):
            self.eager += depth
            return False
        return True

    def run_blocks(self, blocks: nn.ModuleList, x: Tensor, arch: Arch) -> Tensor:
        """The blocks of ``arch`` on ``x`` ``[B, N, e]``, each replayed from its shape's graphs."""
        token = _Token(arch.depth)
        self._last_token = weakref.ref(token)
        b, n, _ = x.shape
        stream = self._stream(b, n, x.dtype, x.device, len(blocks), blocks[0].norm1_weight.shape[0])
        for i in range(arch.depth):
            entry = self._entry(blocks[i], i, arch.num_heads[i], arch.mlp_hidden(i), x, stream)
            x = _GraphedBlock.apply(entry, token, x, *blocks[i].parameters())
            self.replays += 1
        return x

    def _stream(self, b: int, n: int, dtype: torch.dtype, device: torch.device, depth: int, e_max: int) -> _Stream:
        key = (b, n, dtype, device)
        if key not in self._streams:
            size = b * n * e_max
            self._streams[key] = _Stream(
                act=[torch.empty(size, dtype=dtype, device=device) for _ in range(depth + 1)],
                grad=[torch.empty(size, dtype=dtype, device=device) for _ in range(depth + 1)],
            )
        return self._streams[key]

    def _entry(self, block: nn.Module, i: int, heads: int, hidden: int, x: Tensor, stream: _Stream) -> _Entry:
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        key = (i, heads, hidden, tuple(x.shape), x.dtype, x.device, autocast, ops.current_backend(), block.training)
        params = tuple(block.parameters())
        entry = self._entries.get(key)
        if entry is not None and entry.param_ptrs != tuple(p.data_ptr() for p in params):
            del self._entries[key]  # the parameters moved (to(), a new dtype): the graphs read stale memory
            entry = None
        if entry is None:
            entry = self._capture(block, i, heads, hidden, x, stream, params)
            self._entries[key] = entry
            while len(self._entries) > self.max_graphs:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry

    def _capture(self, block: nn.Module, i: int, heads: int, hidden: int, x: Tensor, stream: _Stream,
                 params: tuple[Tensor, ...]) -> _Entry:
        shape = tuple(x.shape)
        static_x = stream.view(stream.act, i, shape)
        grad_out = stream.view(stream.grad, i + 1, shape)
        if x.data_ptr() != static_x.data_ptr():
            static_x.copy_(x.detach())
        grad_out.fill_(1.0)  # warm-up backward input; the real one is copied in before each replay
        enabled, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
        trained = tuple(p for p in params if p.requires_grad)

        def run() -> None:
            # autocast's cast cache would let a capture reuse a cast made outside it: keep it off
            with torch.enable_grad(), torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
                leaf = static_x.detach().requires_grad_(True)
                torch.autograd.grad(block(leaf, heads, hidden), (leaf, *trained), grad_out, allow_unused=True)

        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_ITERS):
                run()
        torch.cuda.current_stream(x.device).wait_stream(side)
        del side

        pool = self._pools.setdefault(i, torch.cuda.graph_pool_handle())
        forward, backward = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
            leaf = static_x.detach().requires_grad_(True)
            # thread_local: a data-loader thread's CUDA calls do not invalidate the capture
            with torch.cuda.graph(forward, pool=pool, capture_error_mode="thread_local"):
                y = block(leaf, heads, hidden)
                out = stream.view(stream.act, i + 1, shape)
                out.copy_(y)
            with torch.cuda.graph(backward, pool=pool, capture_error_mode="thread_local"):
                grads = torch.autograd.grad(y, (leaf, *trained), grad_out, allow_unused=True)
                grad_x = stream.view(stream.grad, i, shape)
                grad_x.copy_(grads[0])
        self.captures += 1
        by_param = dict(zip(map(id, trained), grads[1:]))
        return _Entry(
            forward=forward, backward=backward, x=static_x, out=out, grad_out=grad_out, grad_x=grad_x,
            param_grads=tuple(by_param.get(id(p)) for p in params), param_ptrs=tuple(p.data_ptr() for p in params),
        )
