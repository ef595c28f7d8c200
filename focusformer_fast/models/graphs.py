"""CUDA graphs of supernet blocks for training: each block shape is captured once and replayed for any subnet.

Eager supernet training is launch-bound: a random subnet's step issues hundreds of small kernels
from Python. A whole-subnet graph would be captured anew for nearly every step (the space holds
~10^9 subnets), but a block's work depends only on its *shape*: (block index, embed dim, heads,
MLP width) at a given batch, token count, dtype and backend. autoformer-t has at most
14 x 3 x 2 x 2 = 168 of them, so :class:`BlockGraphs` captures each block shape's forward and
backward as two CUDA graphs the first time it is used, and replays them afterwards.

Memory and data flow, per device:

* the residual stream between blocks lives in static buffers (per batch, tokens and dtype):
  block ``i`` reads ``act[i]`` and writes ``act[i + 1]``, and its backward reads ``grad[i + 1]``
  and writes ``grad[i]``; every graph of block ``i`` uses the same buffers (viewed at the
  subnet's embed dim), so consecutive graphed blocks hand activations and gradients over without
  a copy;
* block index ``i`` has one *slot*: a private memory pool shared by all of its graphs, and one
  set of full-size parameter-gradient buffers its backward graphs write. Nothing a graph
  allocates stays allocated after its capture, so the saved activations of block ``i``'s shapes
  overlap in memory: safe because one forward uses one shape per block and its backward runs
  before the next forward (:meth:`BlockGraphs.usable` sends a forward to the eager path while an
  earlier graphed forward, still referenced, has not finished its backward; a backward whose
  slot a later forward took raises instead of reading overwritten activations);
* parameter gradients go back through autograd (so ``AccumulateGrad`` hooks, DDP's among them,
  fire as usual) as full-size tensors, copied out of the slot's buffers in one foreach launch;
* under autocast the fast backends' GEMMs read compute-dtype copies of the super-weights
  (:mod:`focusformer_fast.ops.casts`): the slot holds them at fixed addresses
  (:class:`~focusformer_fast.ops.casts.StaticCasts`), the graphs read them, and a forward replay
  first recasts those whose parameter changed since (one launch after an optimizer step).

Warm-up and capture run on one side stream per device (so cuBLAS workspaces are created by the
warm-up, outside every graph pool); the forward is captured under the caller's autocast state
(its cast cache off), the backward outside autocast, as an eager ``loss.backward()`` runs. A
capture neither synchronizes the device nor empties the allocator's cache (``torch.cuda.graph``
does both on entry, which a first pass over a stream of subnets would pay per block shape).
The cache holds at most ``max_graphs`` block shapes and evicts the least recently used one.
Graph mode is for training: evaluation, ``torch.no_grad`` and CPU tensors run eagerly.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from focusformer_fast import ops
from focusformer_fast.ops.casts import StaticCasts

if TYPE_CHECKING:
    from focusformer_fast.space import Arch

WARMUP_ITERS = 2  # eager runs before a capture: lazy initialisation, cuBLAS workspaces, Triton autotuning


def _new_pool() -> object:
    """A graph memory pool whose lifetime the caller holds: a ``MemPool`` (its id is the graph pool
    handle), or on a torch without ``MemPool`` a bare handle."""
    mempool = getattr(torch.cuda, "MemPool", None)
    return mempool() if mempool is not None else torch.cuda.graph_pool_handle()


@contextlib.contextmanager
def _capturing(graph: torch.cuda.CUDAGraph, pool_id: object) -> Iterator[None]:
    """Capture the enclosed work on the current stream into ``graph``, allocating from ``pool_id``.

    ``torch.cuda.graph`` minus what it does on entry (synchronize the device, collect garbage,
    empty the allocator's cache). ``thread_local``: a data-loader thread's CUDA calls do not
    invalidate the capture.
    """
    graph.capture_begin(pool=pool_id, capture_error_mode="thread_local")
    try:
        yield
    finally:
        graph.capture_end()


class _Token:
    """One graphed forward: the count of its blocks whose backward has not replayed yet."""

    def __init__(self, pending: int):
        self.pending = pending


@dataclasses.dataclass
class _Slot:
    """What all graphs of one block index on one device share."""

    pool: object  # from _new_pool(): held, so the pool outlives the eviction of all its graphs
    param_grads: tuple[Tensor, ...]  # full-size, one per block parameter, written by the backward graphs
    casts: StaticCasts  # compute-dtype copies of the block's parameters that the graphs read
    owner: _Token | None = None  # the forward whose activations the pool holds now


@dataclasses.dataclass
class _Entry:
    """The two graphs of one block shape and the static tensors they read and write."""

    forward: torch.cuda.CUDAGraph
    backward: torch.cuda.CUDAGraph
    slot: _Slot
    x: Tensor  # [B, N, e] view of act[i]: the captured input
    out: Tensor  # [B, N, e] view of act[i + 1]
    grad_out: Tensor  # [B, N, e] view of grad[i + 1]
    grad_x: Tensor  # [B, N, e] view of grad[i]
    trained: tuple[bool, ...]  # which block parameters get a gradient
    param_ptrs: tuple[int, ...]  # data_ptr of each parameter at capture


class _GraphedBlock(torch.autograd.Function):
    """Autograd node of one replayed block: forward and backward are graph replays."""

    @staticmethod
    def forward(ctx, entry: _Entry, token: _Token, x: Tensor, *params: Tensor) -> Tensor:
        with torch.cuda.device(x.device):
            if x.data_ptr() != entry.x.data_ptr():
                entry.x.copy_(x)
            entry.slot.casts.refresh()
            entry.forward.replay()
        entry.slot.owner = token
        ctx.entry, ctx.token = entry, token
        return entry.out.detach()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        entry = ctx.entry
        if entry.slot.owner is not ctx.token:
            raise RuntimeError(
                "graph mode: a later forward reused this block's graph memory before this backward ran "
                "(backward of an older graph after retain_graph=True); run it eagerly (Supernet(graphs=False))"
            )
        with torch.cuda.device(grad_out.device):
            if grad_out.data_ptr() != entry.grad_out.data_ptr() or grad_out.stride() != entry.grad_out.stride():
                entry.grad_out.copy_(grad_out)
            entry.backward.replay()
            # autograd adopts a returned gradient as .grad when nothing else seems to hold it, so the
            # slot's buffers (which the next replay overwrites) are copied out, in one launch
            held = [g for g, t in zip(entry.slot.param_grads, entry.trained) if t]
            fresh = iter(torch._foreach_mul(held, 1.0) if held else ())
        ctx.token.pending -= 1
        return (None, None, entry.grad_x.detach(), *(next(fresh) if t else None for t in entry.trained))


@dataclasses.dataclass
class _Stream:
    """Static residual-stream buffers for one (batch, tokens, dtype, device): flat, sized for E_max."""

    act: list[Tensor]
    grad: list[Tensor]

    def view(self, buffers: list[Tensor], i: int, shape: tuple[int, int, int]) -> Tensor:
        return buffers[i][: shape[0] * shape[1] * shape[2]].view(shape)


class BlockGraphs:
    """Per-block-shape CUDA graph cache of a :class:`~focusformer_fast.models.supernet.Supernet` (``graphs=True``).

    Args:
        max_graphs: block shapes kept (each: a forward and a backward graph); the least recently
            used is evicted beyond it.
    """

    def __init__(self, max_graphs: int = 512):
        if not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs={max_graphs!r} must be a positive int")
        self.max_graphs = max_graphs
        self._entries: collections.OrderedDict[tuple, _Entry] = collections.OrderedDict()
        self._streams: dict[tuple, _Stream] = {}
        self._slots: dict[tuple, _Slot] = {}
        self._capture_streams: dict[torch.device, torch.cuda.Stream] = {}
        self._last_token: weakref.ref | None = None
        self.captures = self.replays = self.eager = 0

    def __deepcopy__(self, memo: dict) -> BlockGraphs:
        # the graphs read the original model's parameters: a copied model starts with an empty cache
        return BlockGraphs(self.max_graphs)

    def stats(self) -> dict[str, int]:
        """``captures``/``replays``: block shapes captured / blocks replayed so far; ``eager``: training
        forwards' blocks run without a graph in graph mode; ``cached``: block shapes held now."""
        return {"captures": self.captures, "replays": self.replays, "eager": self.eager, "cached": len(self._entries)}

    def clear(self) -> None:
        """Drop every graph and buffer (e.g. after moving the model to another device or dtype)."""
        self._entries.clear()
        self._streams.clear()
        self._slots.clear()
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
            params = tuple(blocks[i].parameters())
            entry = self._entry(blocks[i], params, i, arch.num_heads[i], arch.mlp_hidden(i), x, stream)
            x = _GraphedBlock.apply(entry, token, x, *params)
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

    def _slot(self, i: int, params: tuple[Tensor, ...], device: torch.device) -> _Slot:
        key = (device, i)
        slot = self._slots.get(key)
        if slot is None or any(g.shape != p.shape or g.dtype != p.dtype for g, p in zip(slot.param_grads, params)):
            with torch.cuda.device(device):
                slot = _Slot(_new_pool(), tuple(torch.empty_like(p) for p in params), StaticCasts())
            self._slots[key] = slot
        return slot

    def _entry(self, block: nn.Module, params: tuple[Tensor, ...], i: int, heads: int, hidden: int, x: Tensor,
               stream: _Stream) -> _Entry:
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        trained = tuple(p.requires_grad for p in params)
        key = (i, heads, hidden, tuple(x.shape), x.dtype, x.device, autocast, ops.current_backend(), block.training,
               trained)
        entry = self._entries.get(key)
        if entry is not None and entry.param_ptrs != tuple(p.data_ptr() for p in params):
            del self._entries[key]  # the parameters moved (to(), a new dtype): the graphs read stale memory
            entry = None
        if entry is None:
            with torch.cuda.device(x.device):
                entry = self._capture(block, i, heads, hidden, x, stream, params)
            self._entries[key] = entry
            while len(self._entries) > self.max_graphs:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry

    def _capture(self, block: nn.Module, i: int, heads: int, hidden: int, x: Tensor, stream: _Stream,
                 params: tuple[Tensor, ...]) -> _Entry:
        shape = tuple(x.shape)
        slot = self._slot(i, params, x.device)
        static_x = stream.view(stream.act, i, shape)
        out = stream.view(stream.act, i + 1, shape)
        grad_out = stream.view(stream.grad, i + 1, shape)
        grad_x = stream.view(stream.grad, i, shape)
        if x.data_ptr() != static_x.data_ptr():
            static_x.copy_(x.detach())
        grad_out.fill_(1.0)  # warm-up backward input; the real one is copied in before each replay
        enabled, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
        trained = tuple(p for p in params if p.requires_grad)

        def forward() -> tuple[Tensor, Tensor]:
            leaf = static_x.detach().requires_grad_(True)
            # autocast's cast cache would let a capture reuse a cast made outside it: keep it off
            with torch.enable_grad(), torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
                return leaf, block(leaf, heads, hidden)

        def backward(leaf: Tensor, y: Tensor) -> tuple[Tensor | None, ...]:
            with torch.autocast("cuda", enabled=False):
                return torch.autograd.grad(y, (leaf, *trained), grad_out, allow_unused=True)

        side = self._capture_streams.setdefault(x.device, torch.cuda.Stream(device=x.device))
        side.wait_stream(torch.cuda.current_stream(x.device))
        graphs = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        pool_id = slot.pool.id if hasattr(slot.pool, "id") else slot.pool
        with torch.cuda.stream(side), slot.casts.scope():
            for _ in range(WARMUP_ITERS):
                backward(*forward())
            with _capturing(graphs[0], pool_id):
                leaf, y = forward()
                out.copy_(y)
            with _capturing(graphs[1], pool_id):
                grads = backward(leaf, y)
                grad_x.copy_(grads[0])
                by_param = dict(zip(map(id, trained), grads[1:]))
                for p, buf in zip(params, slot.param_grads):
                    g = by_param.get(id(p))
                    if g is not None:
                        buf.copy_(g)
                    elif p.requires_grad:
                        buf.zero_()  # a parameter this block shape does not use
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.captures += 1
        return _Entry(
            forward=graphs[0], backward=graphs[1], slot=slot, x=static_x, out=out, grad_out=grad_out, grad_x=grad_x,
            trained=tuple(p.requires_grad for p in params), param_ptrs=tuple(p.data_ptr() for p in params),
        )
