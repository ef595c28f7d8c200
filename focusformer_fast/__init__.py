"""focusformer_fast: one-shot NAS of vision transformers with a budget-conditioned sampler.

Public entry points: :class:`SearchSpace` and :class:`Arch` (what a subnet is and costs),
:class:`Supernet` (the weight-sharing ViT), :mod:`focusformer_fast.ops` (sliced kernels and
backend selection) and :mod:`focusformer_fast.export` (standalone subnets, as timm models: :class:`FocusFormerViT`,
registered with timm as ``focusformer_vit`` on import).
"""

from .space import Arch, SearchSpace
from .supernet import Supernet
from .timm_vit import FocusFormerViT  # registers timm's "focusformer_vit"
from .version import __version__

__all__ = ["Arch", "FocusFormerViT", "SearchSpace", "Supernet", "__version__"]
