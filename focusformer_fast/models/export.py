"""Save and load exported subnets: a directory timm loads as it is.

An export directory holds

* ``model.safetensors``: the weights under timm's names (``patch_embed.proj.weight``,
  ``blocks.0.mlp.fc1.weight``, ...);
* ``config.json`` in timm's local-dir format: ``architecture`` (``focusformer_vit``),
  ``num_classes``, ``num_features``, ``model_args`` (per-block ``num_heads`` and ``mlp_hidden``,
  ``head_dim``, ``embed_dim``, ``img_size``, ...), ``pretrained_cfg`` (``input_size``, ``mean``,
  ``std``, ``interpolation``, ``crop_pct``, ``label_names``, ...), and our own record under
  ``"focusformer"``: format version, arch, space, FLOPs (MACs) and params when the space is
  known, and ``extra`` (cost, latency, val/test accuracy, the run and step it came from), with
  the versions that wrote it.

So, after ``import focusformer_fast`` (which registers the architecture with timm),
``timm.create_model('local-dir:DIR', pretrained=True)`` builds the model and loads its weights;
:func:`load` builds the same :class:`~focusformer_fast.models.timm_vit.FocusFormerViT` without timm's
factory. Loading needs neither the supernet nor the sliced ops. ``python -m
focusformer_fast.export DIR --format onnx|pt2`` converts a directory for deployment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from focusformer_fast.models.vit import StandaloneViT
from focusformer_fast.space import Arch, SearchSpace
from focusformer_fast.utils.atomic_files import atomic_write, write_json_atomic
from focusformer_fast.utils.version import versions

if TYPE_CHECKING:
    from focusformer_fast.models.timm_vit import FocusFormerViT

FORMAT_VERSION = 2
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
RECORD_KEY = "focusformer"


def preprocessing(data: Any | None, in_chans: int, image_size: int, num_classes: int) -> dict[str, Any]:
    """The ``pretrained_cfg`` fields describing the model's input, from a
    :class:`~focusformer_fast.data.splits.DataSplits`.

    ``mean``/``std`` are the data's normalization; ``crop_pct``, ``crop_mode`` and
    ``interpolation`` those of its eval transform, as the data reports them (digits and CIFAR-100 at
    their size: nothing to do; an image folder of photographs: timm's resize and center crop at
    0.875; of small images: a bicubic resize of the whole image, which timm calls ``squash``), so
    ``timm.data.create_transform(**resolve_data_config(model=m))`` is that transform. Without
    ``data`` the model is recorded as taking already-normalized images (mean 0, std 1).
    ``label_names`` are the data's class names when it has them, else the class indices as
    strings (the digits' own names).
    """
    mean = tuple(data.mean) if data is not None else (0.0,) * in_chans
    std = tuple(data.std) if data is not None else (1.0,) * in_chans
    names = getattr(data, "label_names", None) or [str(i) for i in range(num_classes)]
    return {"input_size": [in_chans, image_size, image_size], "mean": list(mean), "std": list(std),
            "interpolation": getattr(data, "interpolation", "bilinear"), "crop_pct": getattr(data, "crop_pct", 1.0),
            "crop_mode": getattr(data, "crop_mode", "center"),
            "label_names": list(names), "num_classes": num_classes, "first_conv": "patch_embed.proj",
            "classifier": "head", "fixed_input_size": True}


def _as_timm(model: nn.Module) -> FocusFormerViT:
    # timm: only when a model is saved or loaded
    from focusformer_fast.models.timm_vit import FocusFormerViT, from_standalone

    if isinstance(model, FocusFormerViT):
        return model
    if isinstance(model, StandaloneViT):
        return from_standalone(model)
    raise TypeError(f"cannot export a {type(model).__name__}; expected StandaloneViT or FocusFormerViT")


def _model_args_of(model: FocusFormerViT) -> dict[str, Any]:
    pe = model.patch_embed
    return {"img_size": pe.img_size[0], "patch_size": pe.patch_size[0], "in_chans": model.in_chans,
            "embed_dim": model.embed_dim, "num_heads": list(model.block_heads),
            "mlp_hidden": list(model.block_mlp_hidden), "head_dim": model.head_dim, "global_pool": model.global_pool}


def arch_of(args: dict[str, Any]) -> Arch:
    """The :class:`Arch` a ``model_args`` dict describes."""
    e = args["embed_dim"]
    return Arch(e, len(args["num_heads"]), tuple(args["num_heads"]), tuple(m / e for m in args["mlp_hidden"]))


def save(model: nn.Module, directory: str | os.PathLike, extra: dict[str, Any] | None = None, *,
         space: SearchSpace | None = None, data: Any | None = None) -> Path:
    """Write ``model`` to ``directory`` as ``model.safetensors`` + ``config.json`` (each atomically).

    Args:
        model: a :class:`StandaloneViT` (e.g. ``Supernet.extract(arch)``) or a :class:`FocusFormerViT`.
        extra: what else to record about the subnet (cost, latency, accuracy, run, step), under
            ``config.json["focusformer"]["extra"]``.
        space: the search space it came from: records the space and the subnet's FLOPs and params.
        data: the :class:`~focusformer_fast.data.splits.DataSplits` it was trained on: its normalization
            and class names go into ``pretrained_cfg``.
    """
    from safetensors.torch import save as safetensors_bytes

    from focusformer_fast.models.timm_vit import ARCHITECTURE, model_args

    timm_model = _as_timm(model)
    args = model_args(model.config) if isinstance(model, StandaloneViT) else _model_args_of(timm_model)
    arch = model.config.arch if isinstance(model, StandaloneViT) else arch_of(args)
    num_classes = timm_model.num_classes
    record: dict[str, Any] = {"format_version": FORMAT_VERSION, "arch": arch.to_dict()}
    if space is not None:
        record.update(space=space.to_dict(), flops=space.flops(arch), params=space.params(arch))
    if extra and extra.get("metric") == "latency" and "cost" in extra:
        record["latency_ms"] = extra["cost"]  # predicted by the run's latency table
    record.update(extra=extra or {}, versions=versions())
    meta = {"architecture": ARCHITECTURE, "num_classes": num_classes, "num_features": timm_model.num_features,
            "model_args": args,
            "pretrained_cfg": preprocessing(data, args["in_chans"], args["img_size"], num_classes),
            RECORD_KEY: record}
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in timm_model.state_dict().items()}
    atomic_write(out / WEIGHTS_NAME, lambda f: f.write(safetensors_bytes(tensors)))
    write_json_atomic(out / CONFIG_NAME, meta)
    return out


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of an export directory, checked; ``ValueError`` naming a missing or bad file."""
    from focusformer_fast.models.timm_vit import ARCHITECTURE

    d = Path(directory)
    cfg_path, w_path = d / CONFIG_NAME, d / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ValueError(f"exported model file {str(p)!r} does not exist")
    try:
        meta = json.loads(cfg_path.read_text())
        # format 1 (before timm's layout) kept its version at the top level
        version = meta[RECORD_KEY]["format_version"] if RECORD_KEY in meta else meta["format_version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"exported config {str(cfg_path)!r} is malformed: {exc}") from None
    if version != FORMAT_VERSION:
        raise ValueError(f"exported model {str(d)!r} has format_version={version}; this version reads "
                         f"{FORMAT_VERSION} (export it again with search --export)")
    missing = [k for k in ("architecture", "num_classes", "model_args", "pretrained_cfg") if k not in meta]
    if missing or meta["architecture"] != ARCHITECTURE:
        what = f"no field {missing[0]!r}" if missing else f"architecture {meta['architecture']!r} is not {ARCHITECTURE!r}"
        raise ValueError(f"exported config {str(cfg_path)!r} is malformed: {what}")
    return meta


def load(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> FocusFormerViT:
    """The model :func:`save` wrote to ``directory``, in eval mode on ``map_location``.

    It is the model ``timm.create_model('local-dir:DIR', pretrained=True)`` builds, with
    ``pretrained_cfg`` set from the config. Raises ``ValueError`` naming a missing or bad file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from focusformer_fast.models.timm_vit import ARCHITECTURE, FocusFormerViT

    meta = read_config(directory)
    w_path = Path(directory) / WEIGHTS_NAME
    try:
        model = FocusFormerViT(num_classes=meta["num_classes"], **meta["model_args"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"exported config {str(Path(directory) / CONFIG_NAME)!r} is malformed: {exc}") from None
    try:
        model.load_state_dict(load_file(str(w_path), device="cpu"))
    except (SafetensorError, RuntimeError) as exc:
        raise ValueError(f"exported weights {str(w_path)!r} do not match config: {exc}".splitlines()[0]) from None
    cfg = meta["pretrained_cfg"]
    model.pretrained_cfg = model.default_cfg = {"architecture": ARCHITECTURE, **cfg, "input_size": tuple(cfg["input_size"]),
                                                "file": str(directory), "source": "local-dir"}
    return model.to(map_location).eval()


__all__ = ["CONFIG_NAME", "FORMAT_VERSION", "WEIGHTS_NAME", "arch_of", "load", "preprocessing", "read_config", "save"]
