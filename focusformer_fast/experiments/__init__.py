"""Experiments that compare samplers: ``python -m focusformer_fast.experiments.compare``."""
