"""Scoring a subnet with the supernet's shared weights: top-1 accuracy and likelihood on a split.

Runs in eval mode (the caller's mode restored), in bf16 autocast on CUDA; with
``distributed=True`` the counts are summed over the ranks of the process group.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from focusformer_fast.space import Arch

Batches = Iterable[tuple[Tensor, Tensor]]


@torch.no_grad()
def evaluate(net: nn.Module, arch: Arch, batches: Batches, device: torch.device) -> tuple[int, float, int]:
    """(correct top-1 predictions, summed cross-entropy in nats, samples) of ``arch`` over ``batches``.

    Runs ``net`` in eval mode (restoring its mode after), in bf16 autocast on CUDA.
    """
    was_training = net.training
    net.eval()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    correct, nll, total = 0, 0.0, 0
    try:
        for images, labels in batches:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with amp:
                logits = net(images, arch)
            correct += int((logits.argmax(dim=-1) == labels).sum())
            nll += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            total += labels.numel()
    finally:
        net.train(was_training)
    return correct, nll, total


def _reduced(net: nn.Module, arch: Arch, batches: Batches, device: torch.device, distributed: bool):
    correct, nll, total = evaluate(net, arch, batches, device)
    if distributed:
        sums = torch.tensor([correct, nll, total], dtype=torch.float64)
        dist.all_reduce(sums)
        correct, nll, total = int(sums[0]), float(sums[1]), int(sums[2])
    if total == 0:
        raise ValueError("cannot score a subnet on an empty split")
    return correct, nll, total


def accuracy(net: nn.Module, arch: Arch, batches: Batches, device: torch.device, *, distributed: bool = False) -> float:
    """Top-1 accuracy in [0, 1] of ``arch`` on ``batches``; summed over ranks when ``distributed``."""
    correct, _, total = _reduced(net, arch, batches, device, distributed)
    return correct / total


def accuracy_and_loss(net: nn.Module, arch: Arch, batches: Batches, device: torch.device, *,
                      distributed: bool = False) -> tuple[float, float]:
    """(top-1 accuracy in [0, 1], mean cross-entropy in nats) of ``arch`` on ``batches``, in one pass."""
    correct, nll, total = _reduced(net, arch, batches, device, distributed)
    return correct / total, nll / total


def likelihood(net: nn.Module, arch: Arch, batches: Batches, device: torch.device, *,
               distributed: bool = False) -> float:
    """``exp(-mean cross-entropy)`` in (0, 1]: the geometric mean of p(true class); a smooth accuracy."""
    _, nll, total = _reduced(net, arch, batches, device, distributed)
    return math.exp(-nll / total)
