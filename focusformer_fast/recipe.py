"""timm's training recipe, shared by supernet training and fine-tuning.

The pieces timm's own ``train.py`` and AutoFormer use, configured from plain numbers:

* :func:`mixup_and_loss`: timm's ``Mixup`` (mixup and/or cutmix, with label smoothing folded
  into the mixed soft targets) and the loss that goes with it (soft-target cross-entropy when
  mixing, label-smoothing cross-entropy or plain cross-entropy otherwise);
* :func:`random_erasing`: timm's ``RandomErasing`` on normalized batches (``mode="pixel"``);
* :func:`optimizer`: ``create_optimizer_v2`` (AdamW), which exempts from weight decay every 1-D
  parameter and what the model's ``no_weight_decay()`` names;
* :func:`cosine_schedule`: ``CosineLRScheduler`` stepped per optimizer update, with linear warmup.

EMA weights (``timm.utils.ModelEmaV3``) are built by the fine-tuning command itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def mixup_and_loss(mixup: float, cutmix: float, smoothing: float, num_classes: int) -> tuple[Callable | None, nn.Module]:
    """``(mix, loss)``: ``mix(images, labels) -> (images, soft targets [B, num_classes])`` or
    ``None`` when ``mixup`` and ``cutmix`` (Beta alphas) are both 0; ``loss(logits, targets)``."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup > 0 or cutmix > 0:
        return (Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=num_classes),
                SoftTargetCrossEntropy())
    if smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing)
    return None, nn.CrossEntropyLoss()


def random_erasing(probability: float, device: torch.device) -> Callable[[Tensor], Tensor] | None:
    """timm's per-image random erasing of a normalized batch ``[B, C, H, W]`` (erased boxes get
    per-pixel normal noise), applied to each image with ``probability``; ``None`` when 0."""
    if probability <= 0:
        return None
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(probability=probability, mode="pixel", device=str(device))


def optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over ``model``'s parameters through timm's ``create_optimizer_v2``: two groups, the
    1-D parameters and ``model.no_weight_decay()`` without weight decay, the rest with it."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay)


def cosine_schedule(opt: torch.optim.Optimizer, steps: int, warmup_steps: int, lr: float, min_lr: float):
    """timm's ``CosineLRScheduler`` over ``steps`` updates (call ``step_update(num_updates=k)``),
    warming up linearly from ``lr / 100`` over ``warmup_steps``."""
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(opt, t_initial=steps, lr_min=min_lr, warmup_t=warmup_steps, warmup_lr_init=lr * 0.01,
                             t_in_epochs=False)
