"""Supernet training with the Triton kernels on a GPU (pytest-benchmark), each beside its baseline.

* ``train-stream-autoformer-t-bs128``: one train step (forward + backward, bf16 autocast) per
  subnet of a seeded stream of 30 random autoformer-t subnets, ``triton`` vs eager sliced
  ``torch`` (target: triton <= 0.4x). The triton run also checks that the stream compiles and
  re-tunes nothing once a warm-up has covered every width class (``new_compilations == 0``).
* ``train-step-autoformer-t-max-bs256`` / ``forward-autoformer-t-max-bs256``: the largest
  subnet, fixed: the supernet on ``triton`` (and eager ``torch``) vs the extracted dense model,
  eager and ``torch.compile``-d (targets: triton <= 0.9x compile for the train step, <= 1.0x
  forward).

Skipped without CUDA (and under ``TRITON_INTERPRET=1``). Every timed call synchronizes.

    python -m pytest benchmarks/test_train_stream.py \\
        --benchmark-json=benchmarks/results/train_stream_<device>.json
"""

from __future__ import annotations

import itertools
import os
import random
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from focusformer_fast import Arch, SearchSpace, Supernet, ops

GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not GPU, reason="needs a CUDA device (and TRITON_INTERPRET unset)"),
]

PRESET = "autoformer-t"
STREAM_BATCH, STREAM_LEN = 128, 30
FIXED_BATCH = 256
SEED = 0


def environment(device: torch.device) -> dict[str, Any]:
    """Device and versions recorded with every figure."""
    import triton

    props = torch.cuda.get_device_properties(device)
    return {
        "device": props.name, "capability": f"{props.major}.{props.minor}", "sm_count": props.multi_processor_count,
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
    }


def kernel_cache_sizes() -> dict[str, int]:
    """Compiled variants (JIT cache entries) and tuned keys (autotune cache entries) of every Triton kernel."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from focusformer_fast.kernels import attention, layernorm, linear

    sizes = {}
    for module in (linear, layernorm, attention):
        for name, obj in vars(module).items():
            key = f"{module.__name__.rsplit('.', 1)[-1]}.{name}"
            if isinstance(obj, Autotuner):
                sizes[key + ".tuned"] = len(obj.cache)
                obj = obj.fn
            if isinstance(obj, JITFunction):
                sizes[key + ".compiled"] = sum(len(cache[0]) for cache in obj.device_caches.values())
    return sizes


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
    """``step(arch)``: zero grads, forward + backward under bf16 autocast on ``backend``, synchronize."""

    def step(arch: Arch) -> float:
        for p in params:
            p.grad = None
        with ops.set_backend(backend), torch.autocast(images.device.type, torch.bfloat16):
            loss = F.cross_entropy(model(images, arch), labels)
        loss.backward()
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        return loss.item()

    return step


def stream_case(backend: str, device: torch.device, batch: int = STREAM_BATCH, preset: str = PRESET,
                length: int = STREAM_LEN) -> tuple[Callable[[], float], Callable[[], dict[str, int]]]:
    """A supernet train step that takes the next subnet of a seeded stream at each call, after a
    warm-up over every width class; and a function returning the kernel cache growth since then."""
    torch.manual_seed(SEED)
    space = SearchSpace.preset(preset)
    net = Supernet(space).to(device)
    images, labels = make_batch(space, batch, device)
    step = train_step(net, list(net.parameters()), images, labels, backend)
    rng = random.Random(SEED)
    stream = [space.sample(rng) for _ in range(length)]
    for arch in width_class_archs(space) + stream[:1]:
        step(arch)
    before = kernel_cache_sizes()
    archs = itertools.cycle(stream)

    def growth() -> dict[str, int]:
        after = kernel_cache_sizes()
        return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}

    return lambda: step(next(archs)), growth


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_train_stream(benchmark, backend: str) -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    run, growth = stream_case(backend, device)
    benchmark.group = f"train-stream-{PRESET}-bs{STREAM_BATCH}"
    benchmark.extra_info.update(
        kind="train-stream", preset=PRESET, backend=backend, batch=STREAM_BATCH, subnets=STREAM_LEN,
        dtype="bf16-autocast", **environment(device),
    )
    loss = benchmark.pedantic(run, rounds=STREAM_LEN, iterations=1)
    assert loss == loss, "loss is NaN"
    if backend == "triton":
        new = growth()
        benchmark.extra_info["new_compilations"] = sum(new.values())
        assert not new, f"the subnet stream compiled or re-tuned kernels after warm-up: {new}"


# -- the largest subnet, fixed: supernet vs the dense extracted model ------------------------

MODES = ["dense", "dense-compile", "torch", "triton"]


def fixed_case(mode: str, device: torch.device, batch: int = FIXED_BATCH, preset: str = PRESET
               ) -> tuple[Callable[[], float], Callable[[], torch.Tensor]]:
    """``(train_step, forward)`` of the largest subnet of ``preset`` in ``mode``, both warmed up."""
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
    device = torch.device("cuda", torch.cuda.current_device())
    step, forward = fixed_case(mode, device)
    benchmark.group = f"{what}-{PRESET}-max-bs{FIXED_BATCH}"
    benchmark.extra_info.update(
        kind=what, preset=PRESET, arch=str(SearchSpace.preset(PRESET).largest()), mode=mode, batch=FIXED_BATCH,
        dtype="bf16-autocast", **environment(device),
    )
    if what == "train-step":
        loss = benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)
        assert loss == loss, "loss is NaN"
    else:
        logits = benchmark.pedantic(forward, rounds=20, iterations=1, warmup_rounds=2)
        assert torch.isfinite(logits.float()).all()
