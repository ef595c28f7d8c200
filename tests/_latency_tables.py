"""A latency table of the digits space built on this CPU with a few timed reps, so the tests that use it check
logic, not speed: the ``table`` and ``table_file`` fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from focusformer_fast.nas.latency.build import build_table
from focusformer_fast.nas.latency.table import LatencyTable
from focusformer_fast.nas.latency.timing import TimingConfig
from focusformer_fast.space import SearchSpace

DIGITS = SearchSpace.preset("digits")
FAST = TimingConfig(warmup=1, min_reps=3, max_reps=3, max_time_s=0.05, rel_ci=0.5)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def table(one_thread) -> LatencyTable:
    return build_table(DIGITS, [1, 2], device="cpu", timing=FAST, chain=2, progress=False)


@pytest.fixture()
def table_file(table: LatencyTable, tmp_path: Path) -> Path:
    return table.save(tmp_path / "digits.json")
