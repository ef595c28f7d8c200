"""timm's training recipe, shared by supernet training and fine-tuning.

The pieces timm's own ``train.py`` and AutoFormer use, configured from plain numbers:

* :func:`mixup_and_loss`: timm's ``Mixup`` (mixup and/or cutmix, with label smoothing folded
  into the mixed soft targets) and the loss that goes with it (soft-target cross-entropy when
  mixing, label-smoothing cross-entropy or plain cross-entropy otherwise);
* :func:`random_erasing`: timm's ``RandomErasing`` on normalized batches (``mode="pixel"``);
* :func:`optimizer`: ``create_optimizer_v2`` (AdamW), which exempts from weight decay every 1-D
  parameter and what the model's ``no_weight_decay()`` names;
* :func:`cosine_schedule`: ``CosineLRScheduler`` stepped per optimizer update, with linear warmup.

Its settings are :class:`RecipeOptions`, declared once here (names, checks, help) and shared by
both commands' configs and flags; :func:`build` makes every piece from them. EMA weights
(``timm.utils.ModelEmaV3``) are built by the fine-tuning command itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


def _option(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class RecipeOptions:
    """timm's recipe as config fields; each is also a flag of ``train`` and ``finetune`` (``--lr``, ...).

    ``metadata["help"]`` of each field is its flag's help text; a command states its own default
    (``finetune`` starts from other ones: :func:`recipe_field`).
    """

    lr: float = _option(1e-3, "peak AdamW learning rate")
    min_lr: float = _option(1e-5, "final learning rate of the cosine schedule")
    weight_decay: float = _option(0.05, "AdamW weight decay (none on norms, biases, CLS token, position embedding)")
    lr_warmup_steps: int | None = _option(None, "linear LR warm-up steps, from lr/100 (default: 5%% of the steps)")
    smoothing: float = _option(0.0, "label smoothing, >= 0 and < 1")
    mixup: float = _option(0.0, "mixup Beta alpha; 0 is off")
    cutmix: float = _option(0.0, "cutmix Beta alpha; 0 is off (with --mixup, timm switches per batch)")
    reprob: float = _option(0.0, "random erasing probability per image, in [0, 1]; 0 is off")
    drop_path: float = _option(0.0, "stochastic depth rate, >= 0 and < 1")
    clip_grad: float | None = _option(None, "clip the gradient norm to this value (default: none, off)")

    @classmethod
    def of(cls, obj: Any) -> "RecipeOptions":
        """The recipe options held by ``obj`` (any object with these fields, e.g. a command's config)."""
        return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field out of range (``lr=0.0 must be > 0``)."""
        for name in ("lr", "clip_grad"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name}={v!r} must be > 0")
        for name in ("min_lr", "weight_decay", "lr_warmup_steps", "mixup", "cutmix"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ValueError(f"{name}={v!r} must be >= 0")
        for name in ("smoothing", "drop_path"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{name}={v!r} must be >= 0 and < 1")
        if not 0 <= self.reprob <= 1:
            raise ValueError(f"reprob={self.reprob!r} must be >= 0 and <= 1")


def recipe_field(name: str, default: Any) -> Any:
    """The :class:`RecipeOptions` field ``name`` with another default, for a config that starts elsewhere."""
    return dataclasses.field(default=default, metadata=RecipeOptions.__dataclass_fields__[name].metadata)


class Recipe(NamedTuple):
    """Everything :func:`build` makes for one model."""

    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm CosineLRScheduler: step_update(num_updates=k)
    mix: Callable | None
    loss: nn.Module
    erase: Callable[[Tensor], Tensor] | None


def build(options: RecipeOptions, model: nn.Module, steps: int, num_classes: int, device: torch.device) -> Recipe:
    """Optimizer, schedule over ``steps`` (``options.lr_warmup_steps`` resolved), mixup/cutmix and loss,
    random erasing for ``model``, as :func:`optimizer`, :func:`cosine_schedule`, :func:`mixup_and_loss`
    and :func:`random_erasing` make them."""
    opt = optimizer(model, options.lr, options.weight_decay)
    schedule = cosine_schedule(opt, steps, options.lr_warmup_steps, options.lr, options.min_lr)
    mix, loss = mixup_and_loss(options.mixup, options.cutmix, options.smoothing, num_classes)
    return Recipe(opt, schedule, mix, loss, random_erasing(options.reprob, device))


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
