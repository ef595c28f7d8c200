"""A space small enough to enumerate (168 archs) and its cost functions: FLOPs, params and a latency
table that is not monotone (a bigger block can be faster)."""

from __future__ import annotations

import itertools
import random

import torch

from focusformer_fast.nas.costs import make_cost_fn
from focusformer_fast.nas.latency.table import BatchTable, LatencyModel, LatencyTable, block_shapes
from focusformer_fast.space import Arch, SearchSpace

TINY = SearchSpace("tiny", (8, 16), (1.0, 2.0), (1, 2), (1, 2, 3), image_size=4, patch_size=2, in_chans=1,
                   num_classes=3, head_dim=4)
"""2 embeds x (4 + 16 + 64) block choices: 168 archs."""


def every_arch(space: SearchSpace) -> list[Arch]:
    return [Arch(e, d, hs, rs) for d in space.depths for e in space.embed_dims
            for rs in itertools.product(space.mlp_ratios, repeat=d)
            for hs in itertools.product(space.num_heads, repeat=d)]


def latency_model(space: SearchSpace, seed: int = 0) -> LatencyModel:
    """A latency table of random, non-monotone per-shape latencies (a bigger block can be faster)."""
    g = random.Random(seed)
    batch = BatchTable({e: g.uniform(0.1, 1.0) for e in space.embed_dims}, {e: g.uniform(0.1, 1.0) for e in space.embed_dims},
                       {s: g.uniform(0.2, 2.0) for s in block_shapes(space)})
    env = {"device_type": "cpu", "device_name": "test", "driver": "", "torch": torch.__version__, "cuda": None}
    return LatencyModel(LatencyTable(space, env, "float32", "torch", False, {1: batch}))


COSTS = {"flops": make_cost_fn(TINY, "flops"), "params": make_cost_fn(TINY, "params"),
         "latency": latency_model(TINY).cost}
