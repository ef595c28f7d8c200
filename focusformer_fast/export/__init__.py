"""An exported subnet, for its users: ``load(dir)`` / ``save(model, dir)`` (:mod:`focusformer_fast.models.export`),
and the command that converts one, ``python -m focusformer_fast.export DIR --format onnx|pt2``.

``from focusformer_fast import export; export.load("models/budget-1M")`` needs neither the supernet nor the
sliced ops.
"""

from focusformer_fast.models.export import CONFIG_NAME, WEIGHTS_NAME, load, read_config, save

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "load", "read_config", "save"]
