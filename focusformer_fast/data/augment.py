"""Which training augmentation a dataset gets (``--augment``), checked against the data, and why, in words."""

from __future__ import annotations

from dataclasses import dataclass

from focusformer_fast.data.transforms import CropRecipe, folder_recipe


@dataclass(frozen=True)
class AugmentChoice:
    """The training augmentation in force (a valid ``augment`` value, ``None`` for none) and why, in words."""

    augment: str | None
    reason: str

    @property
    def note(self) -> str:
        return f"augmentation {self.augment or 'none'}: {self.reason}"


_DIGITS_REASON = "the bundled 8x8 digits (their 1-px shifts cost ~30 points of val accuracy at 600 steps)"
_CIFAR_REASON = "CIFAR-100 photographs: the CIFAR recipe, random crops after padding by 1/8 and horizontal flips"
_POLICY_HINT = "a timm RandAugment string like 'rand-m9-mstd0.5-inc1'"


def _unsupported(augment: str, kind: str, allowed: str) -> ValueError:
    return ValueError(f"augment={augment!r} is not supported for {kind} data; allowed: auto, none, {allowed}")


def resolve_augment(kind: str, augment: str | None, images: tuple[str, tuple[int, int]] | None) -> AugmentChoice:
    """:func:`choose_augment` once the data is known: ``images`` is the folder's (mode, (width, height))."""
    if augment is None or augment == "none":
        return AugmentChoice(None, "none asked for")
    if not isinstance(augment, str):
        raise _unsupported(augment, kind, "basic")
    if kind == "digits":
        if augment not in ("auto", "basic"):
            raise _unsupported(augment, "the bundled digits", "basic (1-px shifts)")
        return AugmentChoice(None, _DIGITS_REASON) if augment == "auto" else AugmentChoice("basic", "asked for")
    policy = augment if augment.startswith("rand") else None
    if kind == "cifar100":
        if augment not in ("auto", "basic") and policy is None:
            raise _unsupported(augment, "CIFAR-100", f"basic, or {_POLICY_HINT}")
        reason = _CIFAR_REASON + (f", then RandAugment {policy}" if policy else "")
        return AugmentChoice("basic" if augment == "auto" else augment, reason)
    recipe, reason = CropRecipe.parse(augment), "asked for"
    if recipe is None and augment not in ("auto", "basic") and policy is None:
        raise _unsupported(augment, "image folder", f"basic, a crop recipe like 'crop0.08-flip-jitter0.4', or "
                                                    f"{_POLICY_HINT}")
    mode, native = images
    if recipe is None:
        recipe, reason = folder_recipe(1 if mode == "L" else 3, native, policy)
    if recipe.policy and mode == "L":
        raise ValueError(f"augment={augment!r}: RandAugment policies need RGB images; these are 1-channel")
    return AugmentChoice(str(recipe), reason)
