"""The export command, ``python -m focusformer_fast.export DIR --format onnx|pt2``.

Saving and loading an export is :mod:`focusformer_fast.models.export`.
"""
