"""Triton kernels of the sliced ops (linear, LayerNorm, attention) and their ahead-of-time compilation for sm_90."""
