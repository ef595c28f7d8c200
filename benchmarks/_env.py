"""Helpers shared by the GPU benchmarks: the device and versions recorded with every figure, and
a skip for a backend that cannot run on this machine."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from focusformer_fast import ops


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
