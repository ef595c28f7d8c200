"""Helpers shared by the GPU benchmarks: their marks, the device and versions recorded with every
figure, and a skip for a backend that cannot run on this machine."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from focusformer_fast import ops

GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
# module marks of a GPU-only benchmark file: `pytestmark = GPU_ONLY`
GPU_ONLY = [
    pytest.mark.gpu,
    pytest.mark.skipif(not GPU, reason="needs a CUDA device (and TRITON_INTERPRET unset)"),
]


def environment(device: torch.device) -> dict[str, Any]:
    """Device, versions and the ops backends available on CUDA, for ``benchmark.extra_info``."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    props = torch.cuda.get_device_properties(device)
    return {
        "device": props.name, "capability": f"{props.major}.{props.minor}", "sm_count": props.multi_processor_count,
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
        "backends": ops.available_backends("cuda"),
    }


def require_backend(name: str) -> None:
    """Skip the calling benchmark, with the dispatcher's reason, when backend ``name`` cannot run."""
    try:
        with ops.set_backend(name):
            pass
    except ValueError as exc:
        pytest.skip(str(exc))
