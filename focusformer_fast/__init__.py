"""focusformer_fast: one-shot NAS of vision transformers with a budget-conditioned sampler.

Public entry points: :class:`SearchSpace` and :class:`Arch` (what a subnet is and costs),
:class:`Supernet` (the weight-sharing ViT), :mod:`focusformer_fast.ops` (sliced kernels and
backend selection) and :mod:`focusformer_fast.export` (standalone subnets, as timm models: :class:`FocusFormerViT`,
registered with timm as ``focusformer_vit``).

Importing the package is light: ``Supernet`` and ``FocusFormerViT`` load on first use, and timm
learns ``focusformer_vit`` when timm itself is imported (now, if it already is), so
``import focusformer_fast; timm.create_model("local-dir:DIR", pretrained=True)`` works in either
import order without a command paying for timm before it needs it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

from focusformer_fast.space import Arch, SearchSpace
from focusformer_fast.utils.version import __version__

__all__ = ["Arch", "FocusFormerViT", "SearchSpace", "Supernet", "__version__"]

_LAZY = {"Supernet": "models.supernet", "FocusFormerViT": "models.timm_vit"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_with_timm() -> None:
    try:
        importlib.import_module(f"{__name__}.models.timm_vit")
    except Exception as exc:  # a broken model file must not break the user's `import timm`
        warnings.warn(f"focusformer_fast could not register focusformer_vit with timm: {exc}", stacklevel=3)


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds ``timm`` through the other finders and registers ``focusformer_vit`` once timm has loaded."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_timm = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            exec_timm(module)
            _register_with_timm()

        spec.loader.exec_module = exec_module
        return spec


if "timm" in sys.modules:
    _register_with_timm()
elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTimmImport())
