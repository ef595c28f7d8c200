"""Stand-alone training of one subnet from scratch: the reference for supernet ranking (Kendall τ)."""

from __future__ import annotations

import torch
from torch import nn

from focusformer_fast.data.loaders import make_loaders
from focusformer_fast.data.splits import DataSplits
from focusformer_fast.models.vit import StandaloneViT
from focusformer_fast.space import Arch, SearchSpace


@torch.no_grad()
def _accuracy(model: nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += int((model(images).argmax(dim=-1) == labels).sum())
        total += labels.numel()
    return correct / total


def train_standalone(space: SearchSpace, arch: Arch, splits: DataSplits, *, steps: int, seed: int,
                     batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.05) -> dict[str, float]:
    """Train ``arch`` as a dense model from a fresh seeded init; CPU.

    Same recipe as the supernet (timm AdamW, cosine with 5% warm-up, cross-entropy, the
    splits' transforms). Returns ``{"val_acc", "test_acc"}`` in [0, 1].
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    torch.manual_seed(seed)
    model = StandaloneViT.from_arch(space, arch).train()
    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=steps, lr_min=1e-5, warmup_t=steps // 20,
                                  warmup_lr_init=lr * 0.01, t_in_epochs=False)
    loaders = make_loaders(splits, batch_size, seed=seed)
    loss_fn = nn.CrossEntropyLoss()
    step, epoch = 0, 0
    while step < steps:
        loaders.set_epoch(epoch)
        for images, labels in loaders.train:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), labels).backward()
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
            if step == steps:
                break
        epoch += 1
    eval_loaders = make_loaders(splits, 512, seed=seed)
    return {"val_acc": _accuracy(model, eval_loaders.val), "test_acc": _accuracy(model, eval_loaders.test)}
