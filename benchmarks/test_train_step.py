"""Supernet train step on the digits preset, per CPU backend (pytest-benchmark).

Each round trains the next subnet of a seeded stream (the same stream for every backend),
so the figure is what the trainer pays per step. pytest-benchmark prints the backends side
by side in the group ``train-step-digits-cpu`` with each row's ratio to the fastest.

    pytest benchmarks/test_train_step.py --benchmark-json=benchmarks/results/train_step_cpu.json
"""

import itertools
import platform
import random

import pytest
import torch

from focusformer_fast import SearchSpace, Supernet, ops

BATCH = 64


def _step_fn(backend: str):
    torch.manual_seed(0)
    space = SearchSpace.preset("digits")
    net = Supernet(space)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    rng = random.Random(0)
    archs = itertools.cycle([space.sample(rng) for _ in range(16)])
    x = torch.randn(BATCH, 1, 8, 8)
    y = torch.randint(0, 10, (BATCH,))

    def step() -> float:
        with ops.set_backend(backend):
            loss = torch.nn.functional.cross_entropy(net(x, next(archs)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss.item()

    return step


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_train_step_digits_cpu(benchmark, backend):
    if backend not in ops.available_backends("cpu"):
        pytest.skip(f"backend {backend!r} not available on this machine")
    step = _step_fn(backend)
    step()
    benchmark.group = "train-step-digits-cpu"
    benchmark.extra_info.update(
        backend=backend, batch=BATCH, torch=torch.__version__, threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
    )
    loss = benchmark.pedantic(step, rounds=30, warmup_rounds=3)
    assert torch.isfinite(torch.tensor(loss))
