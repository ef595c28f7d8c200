"""The package version, and the versions a run or a result records beside itself."""

from __future__ import annotations

import platform
from typing import Any

__version__ = "0.1.0"


def versions(device: Any = None) -> dict[str, Any]:
    """Python, torch, timm, numpy and package versions, the platform and ``device`` (with its
    CUDA name when it is a CUDA ``torch.device``): what a result depends on besides its config."""
    import numpy as np
    import timm
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": str(torch.__version__),
                            "timm": timm.__version__, "numpy": np.__version__, "focusformer_fast": __version__,
                            "platform": platform.platform()}
    if device is not None:
        info["device"] = str(device)
        if getattr(device, "type", None) == "cuda":
            info["device_name"] = torch.cuda.get_device_name(device)
    return info
