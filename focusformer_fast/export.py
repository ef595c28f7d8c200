"""Save and load standalone subnets (:class:`~focusformer_fast.vit.StandaloneViT`).

An exported subnet is a directory holding ``model.safetensors`` and ``config.json``. Loading
needs only this module and the dense ViT: neither the supernet nor the sliced ops.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .atomic_files import atomic_write, write_json_atomic
from .vit import StandaloneViT, ViTConfig

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save(model: StandaloneViT, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``directory`` as ``model.safetensors`` + ``config.json`` (each atomically).

    ``extra`` (e.g. costs and accuracy of the subnet) is stored under ``"extra"`` in the config.
    """
    from safetensors.torch import save as safetensors_bytes

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_NAME, lambda f: f.write(safetensors_bytes(tensors)))
    meta = {"format_version": FORMAT_VERSION, "config": model.config.to_dict(), "extra": extra or {}}
    write_json_atomic(out / CONFIG_NAME, meta)
    return out


def load(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> StandaloneViT:
    """Load a model written by :func:`save`; raises ``ValueError`` naming a missing or bad file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    cfg_path, w_path = d / CONFIG_NAME, d / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ValueError(f"exported model file {str(p)!r} does not exist")
    try:
        meta = json.loads(cfg_path.read_text())
        version = meta["format_version"]
        config = ViTConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"exported config {str(cfg_path)!r} is malformed: {exc}") from None
    if version != FORMAT_VERSION:
        raise ValueError(f"exported model {str(d)!r} has format_version={version}; this version reads {FORMAT_VERSION}")
    model = StandaloneViT(config)
    try:
        state = load_file(str(w_path), device=str(map_location))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError) as exc:
        raise ValueError(f"exported weights {str(w_path)!r} do not match config: {exc}".splitlines()[0]) from None
    return model.to(map_location)
