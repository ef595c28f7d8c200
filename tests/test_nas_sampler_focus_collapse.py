"""The focus sampler on rewards it cannot rank: the estimator's trust gate, no collapse on pure noise,
bounded memory, its learning off the trainer's thread (CPU, seconds).

These tests use only the sampler's public interface (``FocusSampler``, ``update``, ``propose``,
``estimator_trusted``, ``diagnose``), so they run on earlier versions of it too.
"""

from __future__ import annotations

import random
import threading
import tracemalloc

import pytest

from focusformer_fast.nas.costs import budget_grid, make_cost_fn
from focusformer_fast.nas.sampler.diagnostics import diagnose
from focusformer_fast.nas.sampler.focus import FocusSampler
from focusformer_fast.space import SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = SearchSpace.preset("digits")
FLOPS = make_cost_fn(SPACE, "flops")
LO, HI = FLOPS(SPACE.smallest()), FLOPS(SPACE.largest())


def fixed_noise(archs):
    """A score with no structure that a repeated arch repeats (a val batch smaller than the reward
    batch scores every arch on the same images): 0.9 plus a fixed random value per arch."""
    return [0.9 + 0.02 * random.Random(str(a)).gauss(0.0, 1.0) for a in archs]


FEW = SearchSpace("few", (32, 48), (2.0,), (2, 4), (1, 2), image_size=8, patch_size=2, in_chans=1, num_classes=10,
                  head_dim=16)
"""12 archs: a round of 5 draws soon repeats archs already scored."""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trust_gate_counts_only_archs_never_scored_before(seed):
    # 200 evaluations of 12 archs: an estimator that memorizes them predicts a repeated arch's score
    # exactly, and knows nothing of an arch it has not seen. It must not be trusted.
    cost = make_cost_fn(FEW, "flops")
    fs = FocusSampler(FEW, cost, budget_grid(FEW, cost), seed=seed, reward_model="estimator", epsilon=0.0,
                      update_every=1)
    for step in range(40):
        fs.update(step, fixed_noise)
    assert not fs.estimator_trusted()
    assert diagnose(fs)["estimator_trusted"] is False


def test_no_collapse_on_a_reward_it_cannot_rank():
    # 800 evaluations (the default digits run's) of a score without structure
    fs = FocusSampler(SPACE, FLOPS, budget_grid(SPACE, FLOPS), seed=0, epsilon=0.0)
    for k in range(160):
        fs.update(10 * k + 9, fixed_noise)
    for b in fs.budgets:
        assert len(set(fs.propose(b, 50, random.Random(1)))) >= 25, b
    for row in diagnose(fs)["budgets"]:
        assert row["kl_uniform"] - row["kl_initial"] < 0.5, row  # nats: its draws stay near masked uniform


def test_memory_stays_bounded():
    # autoformer-t: its masks visit many partial archs and its estimator many draws per round
    space = SearchSpace.preset("autoformer-t")
    flops = make_cost_fn(space, "flops")
    lo, hi = flops(space.smallest()), flops(space.largest())
    fs = FocusSampler(space, flops, budget_grid(space, flops), seed=0, epsilon=0.0, update_every=1)

    def informative(archs):  # the estimator ranks it, so it does all its work every round
        return [0.6 + 0.3 * (flops(a) - lo) / (hi - lo) for a in archs]

    for step in range(10):
        fs.update(step, informative)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for step in range(10, 30):
        fs.update(step, informative)
    fs.state_dict()  # waits for the last round's job
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 2**20, f"{grown / 2**20:.1f} MiB more after 20 more rounds"  # the record's 100 new entries: ~0.1


def test_learning_runs_off_the_trainers_thread():
    fs = FocusSampler(SPACE, FLOPS, budget_grid(SPACE, FLOPS), seed=0, epsilon=0.0, update_every=2)
    threads = []
    job = fs._learn_and_draw
    fs._learn_and_draw = lambda *args: (threads.append(threading.current_thread()), job(*args))[1]
    for step in range(10):
        fs.next(step)
        fs.update(step, fixed_noise)
    fs.state_dict()
    assert threads and all(t is not threading.main_thread() for t in threads)
