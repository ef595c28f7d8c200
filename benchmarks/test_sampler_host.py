"""Host time the focus sampler adds to a training step, against an emulated GPU step, and its memory.

A training step on a GPU leaves the host idle while the GPU works; the sampler's ``next(step)``
and ``update(step, score)`` must fit in that idle time, or the GPU waits. This emulates the GPU
step with ``time.sleep`` (12 ms: autoformer-t, batch 128, bf16, fused, on an H100; 40 ms:
autoformer-b), gives the sampler an instant, informative score (so its reward estimator is
trusted and does all its work), and reports the host time added per step: the loop's wall time
minus the same loop's with the sampler calls left out, measured back to back.

The driver below uses only the public interface (``make_sampler``, ``SamplerOptions``, ``next``,
``update``, ``state_dict``), so it runs on any tree of this package; today's code against a new
one, back to back on one machine:

    PYTHONPATH=/path/to/old/tree python benchmarks/test_sampler_host.py host --space autoformer-t --gpu-ms 12
    PYTHONPATH=/path/to/new/tree python benchmarks/test_sampler_host.py host --space autoformer-t --gpu-ms 12
    PYTHONPATH=... python benchmarks/test_sampler_host.py memory --space autoformer-b --steps 10000

On a GPU (``benchmarks/gpu_quick.sh``, stage ``sampler``), ``train-e2e`` times the real thing: ``train``
on autoformer-t with ``--sampler focus`` and with ``--sampler uniform``, on a small folder of synthetic
224x224 images it writes first, one backend, a few dozen steps each, and reports the ratio of their
step times (from ``metrics.jsonl``) and of their wall times:

    python benchmarks/test_sampler_host.py train-e2e --out results/sampler_e2e.json

In CI (``--benchmark-disable``) the benchmark runs once, as a check that the loop works.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import torch

from focusformer_fast.nas.costs import budget_grid, make_cost_fn
from focusformer_fast.nas.sampler.factory import make_sampler
from focusformer_fast.nas.sampler.options import SamplerOptions
from focusformer_fast.space import SearchSpace

GPU_MS = {"autoformer-t": 12.0, "autoformer-b": 40.0}
"""Emulated GPU step per space (docs/method.md: the fused target at batch 128, bf16, H100)."""
TARGET_MS = {"autoformer-t": 0.25, "autoformer-b": 0.8}
"""Host time the sampler may add per step (2% of the step)."""


def _setup(space_name: str, seed: int):
    space = SearchSpace.preset(space_name)
    cost = make_cost_fn(space, "flops")
    params = make_cost_fn(space, "params")
    lo, hi = math.log(params(space.smallest())), math.log(params(space.largest()))
    noise = random.Random(f"{seed}:noise")

    def score(archs):  # instant; informative (capacity helps) with a 256-image val batch's noise
        return [0.6 + 0.3 * (math.log(params(a)) - lo) / (hi - lo) + noise.gauss(0.0, 0.02) for a in archs]

    sampler = make_sampler("focus", space, cost, budget_grid(space, cost), seed=seed,
                           options=SamplerOptions(sampler_warmup=0))
    return sampler, score


def _loop(sampler, score, steps: range, gpu_s: float, calls: bool) -> tuple[float, float]:
    """Wall seconds of the loop, and seconds spent inside ``next`` and ``update``."""
    t0 = time.perf_counter()
    inside = 0.0
    for step in steps:
        if calls:
            t = time.perf_counter()
            sampler.next(step)
            inside += time.perf_counter() - t
        time.sleep(gpu_s)
        if calls:
            t = time.perf_counter()
            sampler.update(step, score)
            inside += time.perf_counter() - t
    return time.perf_counter() - t0, inside


def host_time(space_name: str, gpu_ms: float, steps: int = 200, warm: int = 20, seed: int = 0) -> dict[str, Any]:
    """Host ms added per step by ``next`` + ``update`` (default options) to a ``gpu_ms`` step:
    ``added_ms_per_step``, the loop's wall time minus the sleep-only loop's; ``calls_ms_per_step``,
    the part spent inside the two calls on the trainer's thread (the rest is waiting for a CPU or
    the GIL while other threads or processes run).

    ``warm`` steps run first (the first rounds draw synchronously); the loop without the sampler
    calls runs right after the loop with them, over the same number of steps.
    """
    torch.set_num_threads(1)
    sampler, score = _setup(space_name, seed)
    gpu_s = gpu_ms / 1e3
    gc.collect()
    gc.freeze()  # as train's loop does (run_loop.frozen_heap): full collections scan only what the loop made
    try:
        _loop(sampler, score, range(warm), gpu_s, True)
        with_calls, inside = _loop(sampler, score, range(warm, warm + steps), gpu_s, True)
        without, _ = _loop(sampler, score, range(steps), gpu_s, False)
    finally:
        gc.unfreeze()
    added = (with_calls - without) / steps * 1e3
    return {"space": space_name, "gpu_ms": gpu_ms, "steps": steps, "added_ms_per_step": round(added, 3),
            "added_share_of_step": round(added / gpu_ms, 4), "calls_ms_per_step": round(inside / steps * 1e3, 3),
            "wall_s_with_sampler": round(with_calls, 3),
            "wall_s_sleep_only": round(without, 3), "torch": torch.__version__}


def memory(space_name: str, steps: int, seed: int = 0) -> dict[str, Any]:
    """The sampler's memory after ``steps`` steps without a GPU step: Python heap growth (tracemalloc)
    since the sampler was built, and the size of its pickled state (what a checkpoint stores)."""
    torch.set_num_threads(1)
    tracemalloc.start()
    sampler, score = _setup(space_name, seed)
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    curve = []
    for step in range(steps):
        sampler.next(step)
        sampler.update(step, score)
        if (step + 1) % max(steps // 10, 1) == 0:
            curve.append([step + 1, round((tracemalloc.get_traced_memory()[0] - before) / 2**20, 2)])
    state = pickle.dumps(sampler.state_dict())
    now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"space": space_name, "steps": steps, "heap_growth_mib": round((now - before) / 2**20, 2),
            "heap_peak_mib": round(peak / 2**20, 2), "state_pickle_mib": round(len(state) / 2**20, 3),
            "growth_curve_mib": curve, "seconds": round(time.perf_counter() - t0, 1)}


def synthetic_images(root: Path, classes: int = 2, per_class: int = 160, size: int = 224, seed: int = 0) -> Path:
    """An ImageFolder of smooth random RGB PNGs (cheap to decode): ``root/<class>/<k>.png``."""
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            small = g.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize((size, size), Image.BILINEAR).save(root / f"c{c}" / f"{k}.png")
    return root


def _step_ms(metrics: Path, skip: int) -> float:
    """Median ms per step over the logged windows after the first ``skip`` steps (img/s and batch size)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rates = sorted(r["img_per_s"] for r in rows if r.get("step", 0) > skip and r.get("img_per_s"))
    return 1e3 / rates[len(rates) // 2] if rates else float("nan")


def train_e2e(steps: int = 40, batch: int = 128, backend: str = "torch", workers: int = 8) -> dict[str, Any]:
    """``train`` on autoformer-t, ``--sampler uniform`` then ``focus`` (no warm-up: the sampler works from
    the first step), same data, seed and flags; their step and wall times and the ratios focus / uniform."""
    out: dict[str, Any] = {"steps": steps, "batch_size": batch, "backend": backend, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_images(Path(tmp) / "images")
        for sampler in ("uniform", "focus"):
            run = Path(tmp) / sampler
            cmd = [sys.executable, "-m", "focusformer_fast.train", "--data", str(data), "--space", "autoformer-t",
                   "--augment", "none", "--steps", str(steps), "--batch-size", str(batch), "--backend", backend,
                   "--num-workers", str(workers), "--sampler", sampler, "--sampler-warmup", "0",
                   "--log-every", "10", "--eval-every", str(10 * steps), "--checkpoint-every", str(10 * steps),
                   "--specialize-n", "2", "--no-progress", "--output", str(run)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"train --sampler {sampler} failed: {proc.stderr[-2000:]}")
            out["runs"][sampler] = {"wall_s": round(wall, 2), "step_ms": round(_step_ms(run / "metrics.jsonl", 10), 3)}
    u, f = out["runs"]["uniform"], out["runs"]["focus"]
    out["step_ratio"] = round(f["step_ms"] / u["step_ms"], 4)
    out["wall_ratio"] = round(f["wall_s"] / u["wall_s"], 4)
    out["torch"] = torch.__version__
    out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return out


def test_sampler_host_time(benchmark):
    """``next`` + ``update`` against a 12 ms emulated autoformer-t step; the added ms in ``extra_info``."""
    result = benchmark.pedantic(host_time, args=("autoformer-t", GPU_MS["autoformer-t"]),
                                kwargs={"steps": 40, "warm": 10}, rounds=1, iterations=1)
    benchmark.extra_info.update(result, target_ms=TARGET_MS["autoformer-t"])
    assert result["wall_s_sleep_only"] >= 40 * GPU_MS["autoformer-t"] / 1e3


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="host time and memory of the focus sampler (JSON on stdout)")
    p.add_argument("what", choices=("host", "memory", "train-e2e"))
    p.add_argument("--space", default="autoformer-t", choices=sorted(GPU_MS))
    p.add_argument("--gpu-ms", type=float, help="emulated GPU step (default: the space's, 12 or 40)")
    p.add_argument("--steps", type=int, help="steps timed (host, default 200) or simulated (memory, default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="train-e2e: also write the JSON here")
    a = p.parse_args(argv)
    if a.what == "train-e2e":
        out = train_e2e(a.steps or 40)
        if a.out:
            Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    elif a.what == "host":
        out = host_time(a.space, a.gpu_ms or GPU_MS[a.space], a.steps or 200, seed=a.seed)
    else:
        out = memory(a.space, a.steps or 10_000, a.seed)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
