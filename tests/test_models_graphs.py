"""Graph mode of the supernet (``Supernet(graphs=True)``, ``models.graphs``) against the eager path.

The ``gpu`` tests train a stream of random subnets twice from the same initial weights, eagerly
and on per-block-shape CUDA graphs, on each ops backend (``torch``, ``cuda``, ``triton``), and
compare every loss and every parameter gradient; they also cover the cases the graph cache must
get right: a second forward before the backward, eviction from a full cache, gradients
accumulated over two steps, bf16 autocast, and optimizer steps between replays (the graphs'
compute-dtype copies of the weights are refreshed).
On a CPU-only machine the CPU tests check that graph mode falls back to the eager path.

    python -m pytest -q tests/test_models_graphs.py       # on a GPU
"""

import copy
import random

import pytest
import torch
import torch.nn.functional as F

from _backends import selected
from focusformer_fast import SearchSpace, Supernet, ops
from focusformer_fast.models.graphs import BlockGraphs

SPACE = SearchSpace.preset("digits")


def make_pair(device, max_graphs=512, drop_path=0.0):
    """An eager supernet and a graph-mode copy with the same weights, on ``device``, in training mode."""
    torch.manual_seed(0)
    eager = Supernet(SPACE, drop_path_rate=drop_path).to(device).train()
    graphed = Supernet(SPACE, drop_path_rate=drop_path, graphs=True, max_graphs=max_graphs).to(device).train()
    graphed.load_state_dict(eager.state_dict())
    return eager, graphed


def batch(device, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(size, SPACE.in_chans, SPACE.image_size, SPACE.image_size, generator=g)
    labels = torch.randint(0, SPACE.num_classes, (size,), generator=g)
    return images.to(device), labels.to(device)


def loss_of(net, images, labels, arch, autocast):
    with torch.autocast(images.device.type, torch.bfloat16, enabled=autocast):
        return F.cross_entropy(net(images, arch).float(), labels)


def grads(net):
    return {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}


def assert_grads_close(got, expected, rtol, atol):
    assert got.keys() == expected.keys()
    for name, g in got.items():
        e = expected[name]
        assert (g is None) == (e is None), name
        if g is not None:
            torch.testing.assert_close(g, e, rtol=rtol, atol=atol, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_graph_mode_on_cpu_is_the_eager_path():
    eager, graphed = make_pair("cpu")
    images, labels = batch("cpu")
    arch = SPACE.sample(random.Random(0))
    for net in (eager, graphed):
        loss_of(net, images, labels, arch, autocast=False).backward()
    assert_grads_close(grads(graphed), grads(eager), rtol=0, atol=0)
    assert graphed.graph_stats() == {"captures": 0, "replays": 0, "eager": 0, "cached": 0}


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8"])
def test_max_graphs_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=f"max_graphs={bad!r} must be a positive int"):
        BlockGraphs(bad)


# -- on a GPU ------------------------------------------------------------------------------

BACKENDS = [b for b in ("torch", "cuda", "triton") if selected(b)]  # FOCUSFORMER_TEST_BACKENDS narrows them
# the graph cache's own cases run on the default backend: with the torch tests only
default_backend = pytest.mark.skipif(not selected("torch"), reason="FOCUSFORMER_TEST_BACKENDS leaves out torch")
# fp32: the same kernels run eagerly and replayed; bf16 autocast: same kernels, looser for safety
TOL = {False: (1e-5, 1e-6), True: (2e-2, 2e-3)}


def available(backend):
    if backend not in ops.available_backends("cuda"):
        pytest.skip(f"backend {backend} is unavailable here")


@pytest.mark.gpu
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_of_subnets_matches_eager(backend, autocast):
    available(backend)
    eager, graphed = make_pair("cuda")
    rng = random.Random(1)
    archs = [SPACE.sample(rng) for _ in range(12)]
    archs += archs[:4]  # replays of captured shapes
    rtol, atol = TOL[autocast]
    with ops.set_backend(backend):
        for step, arch in enumerate(archs):
            images, labels = batch("cuda", seed=step)
            losses = []
            for net in (eager, graphed):
                net.zero_grad(set_to_none=True)
                loss = loss_of(net, images, labels, arch, autocast)
                loss.backward()
                losses.append(loss.item())
            assert losses[1] == pytest.approx(losses[0], rel=rtol, abs=atol), f"step {step} {arch}"
            assert_grads_close(grads(graphed), grads(eager), rtol, atol)
    stats = graphed.graph_stats()
    assert stats["replays"] == sum(a.depth for a in archs) and stats["eager"] == 0
    assert 0 < stats["captures"] < stats["replays"]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_optimizer_steps_between_replays_match_eager(backend):
    """bf16 autocast, SGD steps between subnets: the graphs read the weights' bf16 copies, refreshed
    after every step, so losses and updated weights stay equal to the eager run's."""
    available(backend)
    eager, graphed = make_pair("cuda")
    opts = [torch.optim.SGD(net.parameters(), lr=0.05) for net in (eager, graphed)]
    rng = random.Random(8)
    archs = [SPACE.sample(rng) for _ in range(3)] * 2  # the second round replays
    rtol, atol = TOL[True]
    with ops.set_backend(backend):
        for step, arch in enumerate(archs):
            images, labels = batch("cuda", seed=step)
            losses = []
            for net, opt in zip((eager, graphed), opts):
                opt.zero_grad(set_to_none=True)
                loss = loss_of(net, images, labels, arch, autocast=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            assert losses[1] == pytest.approx(losses[0], rel=rtol, abs=atol), f"step {step} {arch}"
    for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(q, p, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
    assert graphed.graph_stats()["replays"] > graphed.graph_stats()["captures"]


@pytest.mark.gpu
@default_backend
def test_gradients_accumulate_over_steps_without_zeroing():
    eager, graphed = make_pair("cuda")
    rng = random.Random(2)
    arch_a, arch_b = SPACE.sample(rng), SPACE.sample(rng)
    for step, arch in enumerate([arch_a, arch_b, arch_a]):
        images, labels = batch("cuda", seed=step)
        for net in (eager, graphed):
            loss_of(net, images, labels, arch, autocast=False).backward()
    assert_grads_close(grads(graphed), grads(eager), *TOL[False])


@pytest.mark.gpu
@default_backend
def test_second_forward_before_backward_runs_eagerly_and_stays_correct():
    eager, graphed = make_pair("cuda")
    rng = random.Random(3)
    arch_a, arch_b = SPACE.sample(rng), SPACE.sample(rng)
    images, labels = batch("cuda")
    for net in (eager, graphed):
        loss = loss_of(net, images, labels, arch_a, False) + loss_of(net, images, labels, arch_b, False)
        loss.backward()
    assert_grads_close(grads(graphed), grads(eager), *TOL[False])
    assert graphed.graph_stats()["eager"] == arch_b.depth


@pytest.mark.gpu
@default_backend
def test_full_cache_evicts_and_stays_correct():
    eager, graphed = make_pair("cuda", max_graphs=2)
    rng = random.Random(4)
    for step in range(6):
        arch = SPACE.sample(rng)
        images, labels = batch("cuda", seed=step)
        for net in (eager, graphed):
            net.zero_grad(set_to_none=False)
            loss_of(net, images, labels, arch, autocast=False).backward()
        assert_grads_close(grads(graphed), grads(eager), *TOL[False])
    assert graphed.graph_stats()["cached"] == 2


@pytest.mark.gpu
@default_backend
def test_eval_and_no_grad_forwards_run_eagerly():
    _, graphed = make_pair("cuda")
    images, _ = batch("cuda")
    arch = SPACE.largest()
    with torch.no_grad():
        graphed(images, arch)
    graphed.eval()
    graphed(images, arch)
    assert graphed.graph_stats() == {"captures": 0, "replays": 0, "eager": 0, "cached": 0}


@pytest.mark.gpu
@default_backend
def test_drop_path_in_graph_mode_trains():
    _, graphed = make_pair("cuda", drop_path=0.2)
    rng = random.Random(5)
    for step in range(4):
        graphed.zero_grad(set_to_none=True)
        images, labels = batch("cuda", seed=step)
        loss = loss_of(graphed, images, labels, SPACE.sample(rng), autocast=True)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in graphed.parameters())


@pytest.mark.gpu
@default_backend
def test_deepcopy_starts_an_empty_cache_on_the_copy():
    eager, graphed = make_pair("cuda")
    images, labels = batch("cuda")
    arch = SPACE.sample(random.Random(6))
    loss_of(graphed, images, labels, arch, autocast=False).backward()
    clone = copy.deepcopy(graphed)
    assert clone.graph_stats()["cached"] == 0 and graphed.graph_stats()["cached"] == arch.depth
    clone.zero_grad(set_to_none=True)
    for net in (eager, clone):
        loss_of(net, images, labels, arch, autocast=False).backward()
    assert_grads_close(grads(clone), grads(eager), *TOL[False])


@pytest.mark.gpu
@default_backend
def test_backward_of_a_graph_whose_memory_a_later_forward_took_raises():
    _, graphed = make_pair("cuda")
    images, labels = batch("cuda")
    arch = SPACE.sample(random.Random(7))
    old = loss_of(graphed, images, labels, arch, autocast=False)
    old.backward(retain_graph=True)
    loss_of(graphed, images, labels, arch, autocast=False).backward()
    with pytest.raises(RuntimeError, match="graph mode: a later forward reused this block's graph memory"):
        old.backward()
