"""Loading of the compiled extension ``focusformer_fast._C``.

``_C`` registers the C++ CPU ops (and, when built with CUDA, the CUDA ops) in
``torch.ops.focusformer``. It is optional: when it cannot be imported, :func:`load`
warns once and returns False, the ``cpp`` backend reports itself unavailable, and the
``torch`` backend still works. Importing the package never needs ``_C``.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

_module: ModuleType | None = None
_error: str | None = None


def load() -> bool:
    """Import ``focusformer_fast._C`` (first call only); True if it is loaded."""
    global _module, _error
    if _module is None and _error is None:
        try:
            import torch  # noqa: F401  _C links against libtorch, which torch loads

            _module = importlib.import_module("focusformer_fast._C")
        except Exception as exc:  # ImportError, OSError (undefined symbol), RuntimeError from op registration
            _error = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"focusformer_fast._C could not be loaded ({_error}); the compiled cpp/cuda ops are off,"
                " the torch backend still works",
                RuntimeWarning,
                stacklevel=2,
            )
    return _module is not None


def load_error() -> str | None:
    """Why ``_C`` did not load, or None if it loaded or :func:`load` was not called yet."""
    return _error


def has_cuda_ops() -> bool:
    """True if ``_C`` loaded and was compiled with its CUDA kernels."""
    return load() and bool(_module.WITH_CUDA)
