"""The data layer's options (``data.options``): loader workers and pinned memory resolved for a GPU (the
node's cores shared among its ranks) and for a CPU; persistent workers."""

from __future__ import annotations

import os

import pytest

from focusformer_fast.data.datasets import load_dataset
from focusformer_fast.data.loaders import make_loaders
from focusformer_fast.data.options import LoaderOptions

pytestmark = pytest.mark.usefixtures("one_thread")


def test_loader_defaults_for_a_gpu_and_for_a_cpu(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert LoaderOptions().resolved("cuda") == {"num_workers": 15, "pin_memory": True}
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four ranks on the node share its cores
    assert LoaderOptions().resolved("cuda:1") == {"num_workers": 3, "pin_memory": True}
    assert LoaderOptions().resolved("cpu") == {"num_workers": 0, "pin_memory": False}
    assert LoaderOptions(num_workers=2, pin_memory=False).resolved("cuda") == {"num_workers": 2, "pin_memory": False}
    assert LoaderOptions(pin_memory=True).resolved("cpu")["pin_memory"] is False  # it serves CUDA copies only
    loaders = make_loaders(load_dataset("digits"), 8, seed=0, options=LoaderOptions(num_workers=1))
    assert loaders.train.loader.persistent_workers and loaders.train.loader.num_workers == 1
