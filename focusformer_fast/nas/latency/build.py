"""Building a latency table: what is timed for each entry, on which model and backend.

A subnet is timed as the extracted dense model (``backend="dense"``, the deployment path) or as
the supernet with a fixed arch through the sliced ops of one backend; eagerly, or replayed from
a CUDA graph. Table entries are marginal costs inside one forward, so they add up:
``stem[e] = T(stem)``, ``head[e] = T(stem -> head) - T(stem)``,
``block[e,h,r] = (T(stem -> k blocks -> head) - T(stem -> head)) / k``, where ``T`` is the
latency of one call (one graph replay on a GPU; the median, or p10 on CPU) and the ``k``
chained blocks have the same shape and distinct weights. The fixed cost of a call (a graph's
start-up on the GPU, Python entry on CPU) lands in ``stem`` once, as it does in a whole subnet.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from focusformer_fast import ops
from focusformer_fast.models.supernet import Supernet
from focusformer_fast.models.vit import StandaloneViT
from focusformer_fast.nas.latency.device import device_record, environment, resolve_device
from focusformer_fast.nas.latency.table import BatchTable, BlockShape, LatencyTable, block_key, block_shapes
from focusformer_fast.nas.latency.timing import Timing, TimingConfig, make_runner, measure
from focusformer_fast.space import Arch, SearchSpace

DENSE = "dense"

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_backend(backend: str, device_type: str) -> str:
    """``backend`` if it can run on ``device_type``: ``dense``, ``auto`` or an available ops backend."""
    allowed = [DENSE, "auto", *ops.available_backends(device_type)]
    if backend not in allowed:
        raise ValueError(f"backend={backend!r} cannot run on {device_type}; allowed here: {', '.join(allowed)}")
    return backend


def timed_backends(device_type: str) -> list[str]:
    """The ops backends worth timing on ``device_type``: the available ones, except Triton on CPU
    (there it runs under ``TRITON_INTERPRET=1``, an emulator whose latency means nothing)."""
    return [b for b in ops.available_backends(device_type) if not (device_type == "cpu" and b == "triton")]


def check_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not supported; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def random_images(space: SearchSpace, batch_size: int, device: torch.device, dtype: torch.dtype,
                  seed: int = 0) -> Tensor:
    """Seeded images ``[batch_size, in_chans, image_size, image_size]`` on ``device`` in ``dtype``."""
    shape = (batch_size, space.in_chans, space.image_size, space.image_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


def make_supernet(space: SearchSpace, device: torch.device, dtype: torch.dtype) -> Supernet:
    """An inference-mode supernet of ``space`` on ``device`` in ``dtype`` (weights are random)."""
    return Supernet(space).to(device=device, dtype=dtype).eval()


def subnet_forward(net: Supernet, arch: Arch, backend: str) -> Callable[[Tensor], Tensor]:
    """Forward of subnet ``arch``: images ``[B, C, H, W]`` -> logits ``[B, classes]``.

    ``backend="dense"``: the extracted standalone model (contiguous weights, plain modules).
    Otherwise: the supernet with ``arch`` fixed, its sliced ops on ``backend``.
    """
    check_backend(backend, net.head_weight.device.type)
    if backend == DENSE:
        return net.extract(arch).eval()

    def forward(images: Tensor) -> Tensor:
        with ops.set_backend(backend):
            return net(images, arch)

    return forward


def time_forward(forward: Callable[[Tensor], Tensor], images: Tensor, *, graph: bool = False,
                 timing: TimingConfig | None = None) -> Timing:
    """Latency of ``forward(images)`` on ``images``' device, eager or replayed from a CUDA graph."""
    device = images.device
    runner = make_runner(lambda: forward(images), device, graph)
    return measure(runner, device, timing or TimingConfig.for_device(device))


def measure_subnet(net: Supernet, arch: Arch, *, batch_size: int, backend: str = DENSE, graph: bool = False,
                   timing: TimingConfig | None = None, seed: int = 0) -> Timing:
    """Latency of ``arch`` (whole subnet) at ``batch_size`` on ``net``'s device and dtype."""
    images = random_images(net.space, batch_size, net.head_weight.device, net.head_weight.dtype, seed)
    return time_forward(subnet_forward(net, arch, backend), images, graph=graph, timing=timing)


@dataclass
class _Pieces:
    """A ViT of ``k`` blocks of one shape, cut where the table cuts it.

    ``stem``: images ``[B, C, H, W]`` -> tokens ``[B, N, e]``; ``forward``: images -> logits
    ``[B, classes]`` through stem, the ``k`` blocks and the head.
    """

    stem: Callable[[Tensor], Tensor]
    forward: Callable[[Tensor], Tensor]


def _dense_pieces(space: SearchSpace, shape: BlockShape, k: int, device: torch.device,
                  dtype: torch.dtype) -> _Pieces:
    e, h, r = shape
    model = StandaloneViT.from_arch(space, Arch(e, k, (h,) * k, (r,) * k)).to(device=device, dtype=dtype).eval()
    return _Pieces(model.embed, model)


def _sliced_pieces(net: Supernet, shape: BlockShape, k: int, backend: str) -> _Pieces:
    e, h, r = shape
    hidden = int(e * r)

    def stem(images: Tensor) -> Tensor:
        with ops.set_backend(backend):
            return net.embed(images, e)

    def forward(images: Tensor) -> Tensor:
        with ops.set_backend(backend):
            x = net.embed(images, e)
            for i in range(k):
                x = net.blocks[i](x, h, hidden)
            return net.forward_head(x)

    return _Pieces(stem, forward)


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar of ``total`` steps, shown on a terminal when ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="shape", disable=None if enabled else True, leave=False)


def _build_batch(space: SearchSpace, batch_size: int, *, net: Supernet | None, backend: str, graph: bool,
                 device: torch.device, dtype: torch.dtype, timing: TimingConfig, chain: int,
                 bar: Any) -> BatchTable:
    images = random_images(space, batch_size, device, dtype)

    def pieces(shape: BlockShape, k: int) -> _Pieces:
        if net is None:
            return _dense_pieces(space, shape, k, device, dtype)
        return _sliced_pieces(net, shape, k, backend)

    def run(label: str, shape: BlockShape, k: int, stem_only: bool) -> float:
        p = pieces(shape, k)
        t = time_forward(p.stem if stem_only else p.forward, images, graph=graph, timing=timing)
        raw[label] = t.to_dict()
        bar.update(1)
        return t.stat(timing.statistic)

    raw: dict[str, dict[str, Any]] = {}
    stem, head, blocks = {}, {}, {}
    for e in space.embed_dims:
        base = (e, space.num_heads[0], space.mlp_ratios[0])
        stem[e] = run(f"stem/e{e}", base, 0, True)
        stem_head = run(f"stem+head/e{e}", base, 0, False)
        head[e] = stem_head - stem[e]
        for shape in block_shapes(space):
            if shape[0] == e:
                full = run(f"stem+{chain}x{block_key(shape)}+head", shape, chain, False)
                blocks[shape] = (full - stem_head) / chain
    return BatchTable(stem, head, blocks, raw)


def build_table(space: SearchSpace, batch_sizes: Iterable[int], *, device: torch.device | str = "auto",
                dtype: str = "fp32", backend: str = DENSE, graph: bool | None = None,
                timing: TimingConfig | None = None, chain: int = 4, progress: bool = True) -> LatencyTable:
    """Measure every stem, head and block shape of ``space`` at each batch size.

    Args:
        space: the search space.
        batch_sizes: positive ints.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or a ``torch.device``.
        dtype: ``fp32``, ``bf16`` or ``fp16``; weights and inputs are cast to it.
        backend: ``dense`` (standalone modules) or an ops backend / ``auto`` (sliced supernet).
        graph: replay CUDA graphs (default: on for CUDA, off for CPU).
        timing: repetition policy (default :meth:`TimingConfig.for_device`).
        chain: blocks chained per block-shape measurement, ``1 <= chain <= space.max_depth``.
        progress: show a tqdm bar (on a terminal).

    Returns:
        the :class:`LatencyTable` (not saved; see :meth:`LatencyTable.save`).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    torch_dtype = check_dtype(dtype)
    check_backend(backend, device.type)
    graph = device.type == "cuda" if graph is None else graph
    if graph and device.type != "cuda":
        raise ValueError(f"graph=True needs a CUDA device; device={device} (use graph=False on CPU)")
    sizes = check_batch_sizes(batch_sizes)
    if not 1 <= chain <= space.max_depth:
        raise ValueError(f"chain={chain} must be in [1, {space.max_depth}] (the space's max depth)")
    timing = timing or TimingConfig.for_device(device)
    net = None if backend == DENSE else make_supernet(space, device, torch_dtype)
    record = device_record(device)
    per_batch = 2 * len(space.embed_dims) + len(block_shapes(space))
    t0 = time.perf_counter()
    batches = {}
    with progress_bar(per_batch * len(sizes), f"latency table {space.name}", progress) as bar:
        for b in sizes:
            batches[b] = _build_batch(space, b, net=net, backend=backend, graph=graph, device=device,
                                      dtype=torch_dtype, timing=timing, chain=chain, bar=bar)
    return LatencyTable(
        space=space, env=environment(device.type, record), dtype=dtype, backend=backend, graph=graph,
        batches=batches, device=record, timing=dataclasses.asdict(timing), chain=chain,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=time.perf_counter() - t0,
    )


def check_batch_sizes(batch_sizes: Iterable[int]) -> list[int]:
    """Sorted distinct positive ints, else ``ValueError`` naming the bad value."""
    sizes = list(batch_sizes)
    for b in sizes:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"batch size {b!r} is not allowed; batch sizes must be positive ints")
    if not sizes or len(set(sizes)) != len(sizes):
        raise ValueError(f"batch_sizes={sizes!r} must be a non-empty list of distinct positive ints")
    return sorted(sizes)

