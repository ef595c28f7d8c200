"""Timing (``nas.latency.timing``): a measurement stops at ``max_reps`` and summarizes its samples, the
median's confidence interval; on a GPU a CUDA graph replay gives the eager output."""

from __future__ import annotations

import pytest
import torch

from _latency_tables import CPU, DIGITS
from focusformer_fast.nas.latency.build import make_supernet, random_images, subnet_forward
from focusformer_fast.nas.latency.timing import Timing, TimingConfig, make_runner, measure, median_ci_rel

pytestmark = pytest.mark.usefixtures("one_thread")


def test_measure_stops_at_max_reps_and_summarizes() -> None:
    calls = []
    t = measure(lambda: calls.append(1), CPU, TimingConfig(warmup=2, min_reps=5, max_reps=7, max_time_s=10,
                                                               rel_ci=1e-9))
    assert t.reps == 7 and len(calls) == 9
    assert 0 <= t.p10_ms <= t.median_ms <= t.p90_ms


def test_timing_summary_and_median_ci() -> None:
    t = Timing.from_samples([float(v) for v in range(1, 101)])
    assert t.median_ms == 50.5 and t.p10_ms == pytest.approx(10.9) and t.p90_ms == pytest.approx(90.1)
    assert median_ci_rel([1.0] * 5) == float("inf")
    assert median_ci_rel([2.0] * 50) == 0.0


@pytest.mark.gpu
def test_graph_replay_matches_eager_output() -> None:
    net = make_supernet(DIGITS, torch.device("cuda"), torch.float32)
    images = random_images(DIGITS, 4, torch.device("cuda"), torch.float32)
    forward = subnet_forward(net, DIGITS.largest(), "dense")
    runner = make_runner(lambda: forward(images), images.device, graph=True)
    runner()
    torch.cuda.synchronize()
    torch.testing.assert_close(runner.output, forward(images))
