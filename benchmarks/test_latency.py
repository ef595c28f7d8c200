"""Inference latency per subnet (pytest-benchmark): the smallest, middle and largest arch of each
preset and a seeded sample of random archs, per backend, at batch 1 and a throughput batch.

Modes: ``dense`` (the extracted standalone subnet, eager: the baseline every other figure is
divided by), each available ops backend running the supernet with the arch fixed (not Triton on
CPU, where it is only an interpreter), and on a GPU
each of those replayed from a CUDA graph (``+graph``). On a GPU each timed call synchronizes.

Defaults: on a GPU the autoformer-t/s/b presets in bf16 at batch 1 and 64; without one the
``digits`` preset in fp32 at batch 1 and 16 (so CI, which runs ``--benchmark-disable``, stays
fast). Override with ``FOCUSFORMER_BENCH_PRESETS=digits,cifar-t``, ``FOCUSFORMER_BENCH_BATCHES=1,8``
and ``FOCUSFORMER_BENCH_RANDOM=4`` (random archs per preset, seed 0).

    pytest benchmarks/test_latency.py --benchmark-json=benchmarks/results/latency_<device>.json
    python benchmarks/render.py benchmarks/results/latency_<device>.json -o benchmarks/results/latency_<device>.md
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

from focusformer_fast.models.supernet import Supernet
from focusformer_fast.nas.latency.build import (DENSE, DTYPES, make_supernet, random_images, subnet_forward,
                                                timed_backends)
from focusformer_fast.nas.latency.device import device_record
from focusformer_fast.nas.latency.timing import make_runner
from focusformer_fast.nas.latency.validate import validation_archs
from focusformer_fast.space import Arch, SearchSpace

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda", torch.cuda.current_device()) if GPU else torch.device("cpu")
DTYPE = "bf16" if GPU else "fp32"
SEED = 0
KIND = "subnet-latency"


def _env_list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = os.environ.get(name, "")
    return tuple(v.strip() for v in value.split(",") if v.strip()) or default


GPU_PRESETS = ("autoformer-t", "autoformer-s", "autoformer-b")
PRESETS = _env_list("FOCUSFORMER_BENCH_PRESETS", GPU_PRESETS if GPU else ("digits",))
BATCHES = tuple(int(b) for b in _env_list("FOCUSFORMER_BENCH_BATCHES", ("1", "64") if GPU else ("1", "16")))
N_RANDOM = int(os.environ.get("FOCUSFORMER_BENCH_RANDOM", "2"))


def _archs(space: SearchSpace) -> dict[str, Arch]:
    named = {"smallest": space.smallest(), "middle": space.middle(), "largest": space.largest()}
    sampled = {f"random{i}": a for i, a in enumerate(validation_archs(space, N_RANDOM, SEED))}
    return {**named, **sampled}


def _modes() -> list[tuple[str, bool]]:
    names = [DENSE, *timed_backends(DEVICE.type)]
    return [(n, g) for n in names for g in ((False, True) if GPU else (False,))]


def _cases() -> list[Any]:
    cases = []
    for preset in PRESETS:
        for label in _archs(SearchSpace.preset(preset)):
            for batch in BATCHES:
                for backend, graph in _modes():
                    mode = backend + ("+graph" if graph else "")
                    cases.append(pytest.param(preset, label, backend, graph, batch,
                                              id=f"{preset}-{label}-bs{batch}-{mode}"))
    return cases


@functools.lru_cache(maxsize=1)
def _supernet(preset: str) -> Supernet:
    return make_supernet(SearchSpace.preset(preset), DEVICE, DTYPES[DTYPE])


@functools.lru_cache(maxsize=1)
def _device_name() -> str:
    return device_record(DEVICE)["name"]


def _synchronized(runner: Callable[[], Any]) -> Callable[[], Any]:
    if not GPU:
        return runner

    def step() -> Any:
        out = runner()
        torch.cuda.synchronize(DEVICE)
        return out

    return step


@pytest.mark.parametrize(("preset", "label", "backend", "graph", "batch"), _cases())
def test_subnet_latency(benchmark, preset: str, label: str, backend: str, graph: bool, batch: int) -> None:
    space = SearchSpace.preset(preset)
    arch = _archs(space)[label]
    images = random_images(space, batch, DEVICE, DTYPES[DTYPE])
    forward = subnet_forward(_supernet(preset), arch, backend)
    runner = make_runner(lambda: forward(images), DEVICE, graph)
    step = _synchronized(runner)
    benchmark.group = f"latency-{preset}-bs{batch}"
    benchmark.extra_info.update(
        kind=KIND, preset=preset, arch_label=label, arch=str(arch), flops=space.flops(arch),
        params=space.params(arch), backend=backend, graph=graph, batch=batch, dtype=DTYPE,
        device=_device_name(), device_type=DEVICE.type, torch=torch.__version__,
        threads=torch.get_num_threads(),
    )
    with torch.inference_mode():
        for _ in range(3):
            step()
        out = benchmark(step)
    logits = runner.output if graph else out
    assert logits.shape == (batch, space.num_classes)
    assert torch.isfinite(logits.float()).all()
