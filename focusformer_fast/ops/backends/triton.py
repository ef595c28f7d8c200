"""The ``triton`` backend: registered here, its ops loaded on first use.

The ops themselves (``torch.library`` ops defined with ``triton_op`` over the Triton kernels of
``focusformer_fast.ops.kernels``, with their fake kernels, autograd formulas and dtype rules) are in
:mod:`.triton_ops`. Defining them imports Triton and ``torch._inductor`` (over a second), so this
module registers the backend without them: the first attribute asked of it (``sliced_linear``,
when the backend is chosen and an op runs, or ``hasattr`` while resolving) imports
:mod:`.triton_ops` and answers from it.

The backend runs CUDA tensors, and CPU tensors too when ``TRITON_INTERPRET=1`` is set before
Triton is imported (Triton's interpreter: slow, and wrong for bfloat16 arithmetic).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from focusformer_fast.ops.dispatch import Backend, register_backend

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def __getattr__(name: str) -> Any:
    """The ops (and other names) of :mod:`.triton_ops`, imported when first asked for and kept here, so
    the dispatcher's lookup on every op call finds them without coming back."""
    if name.startswith("__"):
        raise AttributeError(name)
    from focusformer_fast.ops.backends import triton_ops

    try:
        value = getattr(triton_ops, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def _available() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        return False, f"triton cannot be imported ({type(exc).__name__}: {exc})"
    if not INTERPRET and not torch.cuda.is_available():
        return False, "no CUDA device, and TRITON_INTERPRET=1 (Triton's CPU interpreter) is not set"
    return True, ""


register_backend(Backend("triton", sys.modules[__name__], ("cpu", "cuda") if INTERPRET else ("cuda",), _available))
