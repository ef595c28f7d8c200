"""Supernet training on a GPU (pytest-benchmark), each backend beside its baseline in the same run.

* ``train-stream-autoformer-t-bs128``: one train step (forward + backward, bf16 autocast) per
  subnet of a seeded stream of 30 random autoformer-t subnets, in the modes

  - ``torch``: eager sliced PyTorch, the baseline (measured before this project's kernels
    existed: 42-43 ms/step on an H100);
  - ``triton``, ``cuda``: the supernet on the ``triton`` / ``cuda`` ops backend, eager;
  - ``torch+graphs``, ``triton+graphs``, ``cuda+graphs``: the same backends with the supernet
    built with ``graphs=True``, i.e. each block's forward + backward captured as a CUDA graph
    once per (block index, block shape, batch, dtype, backend) and replayed afterwards.

  Every step starts as after an optimizer step: the compute-dtype copies of the super-weights
  are stale (``ops.casts.invalidate()``) and the fast backends recast each super-weight once.
  Every mode warms up on one pass over the stream itself (so every width class and every block
  position the timed steps use has been seen: compiled or captured) and times a second pass.
  The triton modes first also run one uniform subnet per width class, and neither the stream's
  warm-up pass nor the timed pass may compile or tune a kernel after those
  (``warmup_compilations == new_compilations == 0``). The first pass (width classes and the
  stream's warm-up) is printed and kept in ``extra_info["first_pass"]``: its wall time and, for
  triton, the variants it compiled and the configs it tuned (none unless
  ``FOCUSFORMER_TRITON_AUTOTUNE=1``). The graph modes
  check that the timed pass only replays: ``graph_stats()`` ``captures`` and ``eager`` do not
  grow, ``replays`` does; the stats after warm-up and after the timed pass are in ``extra_info``.
  Targets, per step, as a ratio to ``torch``: ``cuda+graphs`` and ``triton+graphs`` <= 0.5x (one
  CUDA graph of the whole eager step per subnet measured ~0.57x before this project's kernels).
* ``train-step-autoformer-t-max-bs256`` / ``forward-autoformer-t-max-bs256``: the largest
  subnet, fixed: the supernet on ``triton``, ``cuda`` and eager ``torch`` vs the extracted dense
  model, eager (``dense``) and ``torch.compile``-d (``dense-compile``, the baseline of these
  groups; targets: triton <= 0.9x compile for the train step, <= 1.0x forward).

``extra_info`` holds ``mode``, ``baseline``, the device and versions and the peak GPU memory of
the run. Skipped without CUDA (and under ``TRITON_INTERPRET=1``); a mode whose backend cannot run
here is skipped with the reason (``-rs`` shows it). Every timed call synchronizes.

    python -m pytest -rs benchmarks/test_train_stream.py --benchmark-json=$OUT/train_stream_<device>.json
    python benchmarks/render.py $OUT/train_stream_<device>.json -o $OUT/train_stream_<device>.md
"""

from __future__ import annotations

import gc
import importlib
import itertools
import math
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _env import GPU_ONLY, environment, require_backend
from torch import nn

from focusformer_fast import Arch, SearchSpace, Supernet, ops
from focusformer_fast.ops import casts

pytestmark = GPU_ONLY

PRESET = "autoformer-t"
STREAM_BATCH, STREAM_LEN = 128, 30
FIXED_BATCH = 256
SEED = 0
STREAM_MODES = ["torch", "triton", "cuda", "torch+graphs", "triton+graphs", "cuda+graphs"]
STREAM_BASELINE = "torch"
KERNEL_MODULES = ("linear", "layernorm", "attention")


def split_mode(mode: str) -> tuple[str, bool]:
    """``(ops backend, graphs)`` of a stream mode: ``"cuda+graphs"`` -> ``("cuda", True)``."""
    backend, _, suffix = mode.partition("+")
    if suffix not in ("", "graphs"):
        raise ValueError(f"mode {mode!r} is not <backend> or <backend>+graphs")
    return backend, suffix == "graphs"


def kernel_cache_sizes() -> dict[str, int]:
    """Compiled variants (JIT cache entries) and tuned keys (autotune cache entries, when
    ``FOCUSFORMER_TRITON_AUTOTUNE=1``) of every Triton kernel."""
    from triton.runtime.jit import JITFunction

    from focusformer_fast.ops.kernels._common import Kernel

    sizes = {}
    for module in (importlib.import_module(f"focusformer_fast.ops.kernels.{m}") for m in KERNEL_MODULES):
        for name, obj in vars(module).items():
            key = f"{module.__name__.rsplit('.', 1)[-1]}.{name}"
            if isinstance(obj, Kernel) and obj.tuner is not None:
                sizes[key + ".tuned"] = len(obj.tuner.cache)
            if isinstance(obj, JITFunction):
                sizes[key + ".compiled"] = sum(len(cache[0]) for cache in obj.device_caches.values())
    return sizes


def first_pass_counts(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Compiled variants and tuned keys added between two :func:`kernel_cache_sizes`."""
    growth = cache_growth(before, after)
    return {kind: sum(n for k, n in growth.items() if k.endswith(f".{kind}")) for kind in ("compiled", "tuned")}


def cache_growth(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The entries of :func:`kernel_cache_sizes` that changed, by how much."""
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def width_class_archs(space: SearchSpace) -> list[Arch]:
    """One uniform subnet per (embed dim, MLP ratio, heads): every width a random subnet can use."""
    d = space.depths[0]
    return [
        Arch(e, d, (h,) * d, (r,) * d)
        for e in space.embed_dims for r in space.mlp_ratios for h in space.num_heads
    ]


def make_batch(space: SearchSpace, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    images = torch.randn(batch, space.in_chans, space.image_size, space.image_size, generator=g)
    labels = torch.randint(0, space.num_classes, (batch,), generator=g)
    return images.to(device), labels.to(device)


def train_step(model: Callable[[torch.Tensor, Arch], torch.Tensor], params: list[nn.Parameter],
               images: torch.Tensor, labels: torch.Tensor, backend: str) -> Callable[[Arch], float]:
    """``step(arch)``: zero grads, forward + backward under bf16 autocast on ``backend``, synchronize.

    Each step starts with stale compute-dtype copies of the weights, as after an optimizer step."""

    def step(arch: Arch) -> float:
        casts.invalidate()
        for p in params:
            p.grad = None
        with ops.set_backend(backend), torch.autocast(images.device.type, torch.bfloat16):
            loss = F.cross_entropy(model(images, arch), labels)
        loss.backward()
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        return loss.item()

    return step


def fresh_memory(device: torch.device) -> None:
    """Free what earlier cases left and restart the peak-memory counter."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)


def stream_case(mode: str, device: torch.device, batch: int = STREAM_BATCH, preset: str = PRESET,
                length: int = STREAM_LEN) -> tuple[Callable[[], float], Callable[[], dict[str, Any]]]:
    """``(run, report)``: ``run()`` trains the next subnet of a seeded stream of ``length`` subnets
    (cycling), after a warm-up of one pass over that stream (triton: preceded by every width
    class); ``report()`` the kernel-cache growth and graph statistics since the warm-up."""
    backend, graphs = split_mode(mode)
    fresh_memory(device)
    torch.manual_seed(SEED)
    space = SearchSpace.preset(preset)
    net = (Supernet(space, graphs=True) if graphs else Supernet(space)).to(device)
    images, labels = make_batch(space, batch, device)
    step = train_step(net, list(net.parameters()), images, labels, backend)
    rng = random.Random(SEED)
    stream = [space.sample(rng) for _ in range(length)]
    triton = backend == "triton"
    caches = []
    cold, start = kernel_cache_sizes() if triton else {}, time.perf_counter()
    if triton:
        for arch in width_class_archs(space):
            step(arch)
        caches.append(kernel_cache_sizes())
    for arch in stream:
        step(arch)
    if triton:
        caches.append(kernel_cache_sizes())
    first_pass = {"seconds": round(time.perf_counter() - start, 2), "subnets": len(stream) + (
        len(width_class_archs(space)) if triton else 0)}
    if triton:
        first_pass.update(first_pass_counts(cold, caches[1]))
    print(f"\n{mode}: first pass: {first_pass}", flush=True)
    warm_stats = net.graph_stats() if graphs else None
    archs = itertools.cycle(stream)

    def report() -> dict[str, Any]:
        info: dict[str, Any] = {"max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
        info["first_pass"] = first_pass
        if triton:
            info["warmup_compilations"] = cache_growth(caches[0], caches[1])
            info["new_compilations"] = cache_growth(caches[1], kernel_cache_sizes())
        if graphs:
            info["graph_stats_warmup"] = dict(warm_stats)
            info["graph_stats"] = dict(net.graph_stats())
        return info

    return lambda: step(next(archs)), report


@pytest.mark.parametrize("mode", STREAM_MODES)
def test_train_stream(benchmark, mode: str) -> None:
    backend, graphs = split_mode(mode)
    require_backend(backend)
    device = torch.device("cuda", torch.cuda.current_device())
    run, report = stream_case(mode, device)
    benchmark.group = f"train-stream-{PRESET}-bs{STREAM_BATCH}"
    benchmark.extra_info.update(
        kind="train-stream", preset=PRESET, mode=mode, backend=backend, graphs=graphs, baseline=STREAM_BASELINE,
        batch=STREAM_BATCH, subnets=STREAM_LEN, warmup="one pass over the stream" + (
            " after one subnet per width class" if backend == "triton" else ""),
        dtype="bf16-autocast", **environment(device),
    )
    loss = benchmark.pedantic(run, rounds=STREAM_LEN, iterations=1)
    assert math.isfinite(loss), f"loss is {loss}"
    info = report()
    if backend == "triton":
        warm, new = info.pop("warmup_compilations"), info.pop("new_compilations")
        info.update(warmup_compilations=sum(warm.values()), new_compilations=sum(new.values()))
    benchmark.extra_info.update(info)
    if backend == "triton":
        assert not warm, f"the subnet stream compiled or re-tuned kernels after the width classes: {warm}"
        assert not new, f"the timed stream compiled or re-tuned kernels after warm-up: {new}"
    if graphs:
        before, after = info["graph_stats_warmup"], info["graph_stats"]
        assert after["captures"] == before["captures"], f"the timed stream captured new graphs: {before} -> {after}"
        assert after["eager"] == before["eager"], f"the timed stream ran blocks eagerly: {before} -> {after}"
        assert after["replays"] > before["replays"], f"the timed stream replayed no graph: {before} -> {after}"


# -- the largest subnet, fixed: supernet vs the dense extracted model ------------------------

MODES = ["dense", "dense-compile", "torch", "triton", "cuda"]
FIXED_BASELINE = "dense-compile"


def fixed_case(mode: str, device: torch.device, batch: int = FIXED_BATCH, preset: str = PRESET
               ) -> tuple[Callable[[], float], Callable[[], torch.Tensor]]:
    """``(train_step, forward)`` of the largest subnet of ``preset`` in ``mode``, both warmed up."""
    fresh_memory(device)
    torch.manual_seed(SEED)
    space = SearchSpace.preset(preset)
    arch = space.largest()
    net = Supernet(space).to(device)
    images, labels = make_batch(space, batch, device)
    if mode.startswith("dense"):
        dense = net.extract(arch).to(device)
        params = list(dense.parameters())
        compiled = torch.compile(dense) if mode == "dense-compile" else dense

        def model(x: torch.Tensor, _arch: Arch) -> torch.Tensor:
            return compiled(x)

        backend = "torch"
    else:
        model, params, backend = net, list(net.parameters()), mode
    step = train_step(model, params, images, labels, backend)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), ops.set_backend(backend), torch.autocast(device.type, torch.bfloat16):
            out = model(images, arch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    for _ in range(3):
        step(arch)
        forward()
    return (lambda: step(arch)), forward


@pytest.mark.parametrize("what", ["train-step", "forward"])
@pytest.mark.parametrize("mode", MODES)
def test_fixed_largest_subnet(benchmark, mode: str, what: str) -> None:
    backend = "torch" if mode.startswith("dense") else mode
    require_backend(backend)
    device = torch.device("cuda", torch.cuda.current_device())
    step, forward = fixed_case(mode, device)
    benchmark.group = f"{what}-{PRESET}-max-bs{FIXED_BATCH}"
    benchmark.extra_info.update(
        kind=what, preset=PRESET, arch=str(SearchSpace.preset(PRESET).largest()), mode=mode, backend=backend,
        baseline=FIXED_BASELINE, batch=FIXED_BATCH, dtype="bf16-autocast", **environment(device),
    )
    if what == "train-step":
        loss = benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)
        assert math.isfinite(loss), f"loss is {loss}"
    else:
        logits = benchmark.pedantic(forward, rounds=20, iterations=1, warmup_rounds=2)
        assert torch.isfinite(logits.float()).all()
    benchmark.extra_info["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
