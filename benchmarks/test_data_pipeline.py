"""The input pipeline's CPU cost per image and what it can feed a GPU (pytest-benchmark), today's beside the new.

CPU cases, one pytest-benchmark group each; one timed call is one batch of 32 images through a
``DataLoader`` without worker processes, i.e. the work one worker process does (decode, crop,
resize, collate); figures are per image, on one thread:

* ``train-224``: 500x375 JPEG photographs (scikit-learn's two sample photos, cut to 4:3 at
  different places and resized, 64 training files) at 224. ``today``: what ``train`` ran before
  issue 20, timm's training transform on the decoded image (random-resized crop, flip, color
  jitter, float conversion and normalization on the CPU; the baseline); ``new``: the default
  pipeline now (the same draws, reduced-size JPEG decoding where the crop allows, uint8 out;
  jitter and normalization on the device); ``new-cache``: the same crops from the pre-resized
  uint8 cache (``--cache-data``); ``decode``: PIL's decode alone, for scale.
* ``eval-224``: the same files. ``today``: the whole image resized to 224x224 (no crop);
  ``timm``: the papers' protocol (resize to 256, center crop 224, bicubic) as timm's transform,
  normalized on the CPU; ``new``: that protocol, uint8 out; ``new-cache``: from the cache.
* ``train-small`` / ``eval-small``: 28x28 grayscale digits (PNG, 64 training files) at 8x8
  (``--space digits``).

``extra_info`` (kind ``data-pipeline``): ``case``, ``mode``, ``baseline`` (``today``), and when
timed ``ms_per_image``, ``ratio`` (median / the baseline's median, same run), ``ratio_min`` (the
same of the fastest calls), ``ratio_interleaved`` (median over 31 back-to-back pairs of calls,
this mode's / today's: the figure to trust on a machine whose load drifts),
``projected_img_s_16`` (16 cores each running a worker at this machine's cost),
``reference_img_s_16`` (the same at ``ratio_interleaved`` times today's 2.67 ms of issue 20's
machine) and ``consumes_img_s``: what autoformer-t at batch 128 takes, 3048 img/s for the eager
step (42 ms, H100, bf16) and 10667 for the fused one (12 ms). Targets (train-224, one core):
``new`` <= 1.5 ms/image and ``new-cache`` <= 0.5 ms/image where ``today`` is 2.67 ms, i.e.
ratios <= 0.56 and <= 0.19.

GPU case (``test_loader_on_gpu``, run by ``benchmarks/gpu_quick.sh``'s ``loader`` stage): the real
loaders with their CUDA defaults (worker processes, pinned memory, batches finished on the GPU) over
512 generated 500x375 JPEGs (each under 8 names) at 224, batch 128, from the files and from the
cache: delivered img/s,
and the step time when each batch is followed by a GPU sleep standing in for the 12 ms fused step
(what the loader adds to it). Target: img/s >= 1.2x the fused step's 10667.

    python -m pytest benchmarks/test_data_pipeline.py --benchmark-json=benchmarks/results/data_pipeline_cpu.json
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from focusformer_fast.data.datasets import load_dataset
from focusformer_fast.data.image_files import read_image
from focusformer_fast.data.loaders import make_loaders

BATCH = 32
STEP_BATCH = 128
STEP_MS = {"eager": 42.0, "fused": 12.0}  # autoformer-t, batch 128, bf16, H100
CONSUMES = {name: round(STEP_BATCH / (ms / 1e3)) for name, ms in STEP_MS.items()}
CORES = 16
TODAY_MS = {"train-224": 2.67, "eval-224": 2.50}  # issue 20's machine, one core
GRAY = ((0.449,), (0.226,))
RGB = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
MEDIANS: dict[tuple[str, str], float] = {}
MINIMA: dict[tuple[str, str], float] = {}
CALLS: dict[tuple[str, str], Callable[[], Any]] = {}


def _photos(root: Path, n: int, size: tuple[int, int] = (500, 375), splits=("train", "val")) -> None:
    """``n`` JPEG photographs of ``size`` in each of ``root/<split>/{a,b}``: the two sample photos, cut at
    different places and flipped, so no two files are the same."""
    samples = [Image.fromarray(a) for a in load_sample_images().images]  # 640x427 each
    for split, cls in itertools.product(splits, ("a", "b")):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            im = samples[k % 2]
            w = round(im.size[1] * size[0] / size[1])
            left = (k * 7) % (im.size[0] - w + 1)
            im = im.crop((left, 0, left + w, im.size[1])).resize(size, Image.BICUBIC)
            if k % 4 >= 2:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            im.save(root / split / cls / f"{k}.jpg", quality=90)


def _digits(root: Path, n: int) -> None:
    """``n`` 28x28 grayscale PNG digits in each of ``root/{train,val}/{a,b}``."""
    images = load_digits().images
    for split, cls in itertools.product(("train", "val"), ("a", "b")):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            pixels = (images[k] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).resize((28, 28), Image.BICUBIC).save(root / split / cls / f"{k}.png")


class _Today(Dataset):
    """Before issue 20: the whole file decoded, then a transform that ends in a normalized float tensor."""

    def __init__(self, paths: list[str], mode: str, transform) -> None:
        self.paths, self.mode, self.transform = paths, mode, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(read_image(self.paths[i], self.mode)), 0


def _cycle(loader) -> Callable[[], Any]:
    """A call that returns the loader's next batch, starting over when it runs out."""
    state = {"it": iter(loader)}

    def next_batch():
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            return next(state["it"])
    return next_batch


def _squash(size: int, mean, std):
    return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                      T.Normalize(mean, std)])


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[tuple[str, str], Callable[[], Any]]:
    root = tmp_path_factory.mktemp("data")
    _photos(root / "photos", 32)
    _digits(root / "digits", 32)
    calls = {}
    for case, folder, size, mode, norm in (("224", "photos", 224, "RGB", RGB), ("small", "digits", 8, "L", GRAY)):
        files = sorted(str(p) for p in (root / folder / "train").rglob("*.*"))
        calls[f"train-{case}", "today"] = _cycle(DataLoader(
            _Today(files, mode, create_transform(size, is_training=True, mean=norm[0], std=norm[1])),
            batch_size=BATCH, shuffle=True))
        calls[f"eval-{case}", "today"] = _cycle(DataLoader(_Today(files, mode, _squash(size, *norm)), batch_size=BATCH))
        if case == "224":
            calls["train-224", "decode"] = _cycle(DataLoader(_Today(files, mode, lambda im: 0), batch_size=BATCH))
            papers = create_transform(224, crop_pct=0.875, interpolation="bicubic")
            calls["eval-224", "timm"] = _cycle(DataLoader(_Today(files, mode, papers), batch_size=BATCH))
        for name, cache in (("new", None), ("new-cache", root / f"cache-{case}")):
            splits = load_dataset(str(root / folder), image_size=size, augment="auto", val_fraction=0.05,
                                  cache_dir=cache)
            loaders = make_loaders(splits, BATCH, seed=0)
            calls[f"train-{case}", name] = _cycle(loaders.train.loader)
            calls[f"eval-{case}", name] = _cycle(loaders.test.loader)
    CALLS.update(calls)
    return calls


CASES = [("train-224", "today"), ("train-224", "decode"), ("train-224", "new"), ("train-224", "new-cache"),
         ("eval-224", "today"), ("eval-224", "timm"), ("eval-224", "new"), ("eval-224", "new-cache"),
         ("train-small", "today"), ("train-small", "new"), ("train-small", "new-cache"),
         ("eval-small", "today"), ("eval-small", "new"), ("eval-small", "new-cache")]


def _interleaved_ratio(case: str, mode: str, pairs: int = 31) -> float:
    ratios = []
    for _ in range(pairs):
        times = []
        for m in ("today", mode):
            start = time.perf_counter()
            CALLS[case, m]()
            times.append(time.perf_counter() - start)
        ratios.append(times[1] / times[0])
    return statistics.median(ratios)


@pytest.mark.parametrize("case, mode", CASES, ids=[f"{c}-{m}" for c, m in CASES])
def test_pipeline_cpu(benchmark, pipelines, one_thread_benchmark, case, mode):
    call = pipelines[case, mode]
    call()  # warm: files in the page cache, the cache mapped
    benchmark.group = case
    benchmark.extra_info.update(kind="data-pipeline", case=case, mode=mode, baseline="today", images=BATCH,
                                consumes_img_s=CONSUMES, device="cpu, 1 thread")
    benchmark.pedantic(call, rounds=12, iterations=1, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: ran once, as a check
        return
    stats = benchmark.stats.stats
    MEDIANS[case, mode] = stats.median
    MINIMA[case, mode] = stats.min
    ms = stats.median * 1e3 / BATCH
    benchmark.extra_info.update(ms_per_image=round(ms, 4), projected_img_s_16=round(CORES * 1e3 / ms))
    if mode != "today" and (case, "today") in MEDIANS:
        interleaved = _interleaved_ratio(case, mode)
        benchmark.extra_info.update(ratio=round(stats.median / MEDIANS[case, "today"], 3),
                                    ratio_min=round(stats.min / MINIMA[case, "today"], 3),
                                    ratio_interleaved=round(interleaved, 3))
        if case in TODAY_MS:
            benchmark.extra_info["reference_img_s_16"] = round(CORES * 1e3 / (interleaved * TODAY_MS[case]))


@pytest.fixture(scope="module")
def one_thread_benchmark():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("source", ["files", "cache"])
def test_loader_on_gpu(benchmark, tmp_path_factory, source):
    root = tmp_path_factory.getbasetemp() / "gpu-photos"
    if not root.exists():  # 512 JPEGs, seen 8 times under 16 class folders: 4096 files, 27 batches an epoch
        _photos(root, 256, splits=("train",))
        for k, cls in itertools.product(range(7), ("a", "b")):
            (root / "train" / f"{cls}{k}").symlink_to(root / "train" / cls, target_is_directory=True)
    device = torch.device("cuda")
    splits = load_dataset(str(root), image_size=224, augment="auto", val_fraction=0.01,
                          cache_dir=root.parent / "gpu-cache" if source == "cache" else None)
    loaders = make_loaders(splits, STEP_BATCH, seed=0, device=device)
    batches = _cycle(loaders.train)
    for _ in range(3):  # workers started, first batches through
        batches()
    torch.cuda.synchronize()

    def steps(n: int, sleep_cycles: int = 0) -> float:
        start = time.perf_counter()
        for _ in range(n):
            images, _ = batches()
            if sleep_cycles:
                torch.cuda._sleep(sleep_cycles)
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / n

    start = time.perf_counter()
    torch.cuda._sleep(100_000_000)
    torch.cuda.synchronize()
    cycles_per_ms = 100_000_000 / ((time.perf_counter() - start) * 1e3)
    benchmark.pedantic(lambda: steps(4), rounds=3, iterations=1)
    per_batch = steps(12)
    with_step = steps(12, int(STEP_MS["fused"] * cycles_per_ms))
    img_s = STEP_BATCH / per_batch
    benchmark.extra_info.update(
        kind="data-loader", source=source, workers=loaders.train.loader.num_workers,
        pin_memory=loaders.train.loader.pin_memory, img_s=round(img_s), consumes_img_s=CONSUMES,
        ratio_to_fused=round(img_s / CONSUMES["fused"], 3), target_ratio=1.2,
        fused_step_with_loader_ms=round(with_step * 1e3, 3),
        added_share_of_fused_step=round(with_step * 1e3 / STEP_MS["fused"] - 1, 3),
        device=torch.cuda.get_device_name(device), torch=torch.__version__)
    print(f"loader ({source}): {img_s:.0f} img/s with {loaders.train.loader.num_workers} workers "
          f"({img_s / CONSUMES['fused']:.2f}x the fused step's {CONSUMES['fused']}); 12 ms step + loader: "
          f"{with_step * 1e3:.2f} ms")
