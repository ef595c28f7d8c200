"""Triton kernels for the sliced ops (filled by the Triton backend work)."""
