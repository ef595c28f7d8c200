"""The guard of the triton backend's test modules: they run on CUDA tensors, or on CPU tensors under
Triton's interpreter (``TRITON_INTERPRET=1``), and are skipped when neither is possible or the backend
is unavailable."""

import os

import pytest
import torch

from focusformer_fast.ops.backends import triton as triton_backend

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"


def require_triton() -> None:
    """Skip the calling test module (call it at module level) unless the triton backend can run here."""
    if not INTERPRET and not torch.cuda.is_available():
        pytest.skip("the triton backend needs a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)
    ok, why = triton_backend._available()
    if not ok:
        pytest.skip(f"the triton backend is unavailable: {why}", allow_module_level=True)
