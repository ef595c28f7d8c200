"""Backend selection (``ops.dispatch``): the environment variable and ``set_backend`` contexts and their
precedence, an unavailable backend named with the available ones, and an op a backend lacks runs the
reference."""

import pytest
import torch

from focusformer_fast import ops
from focusformer_fast.ops import dispatch, reference


def test_backend_selection_precedence(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert ops.current_backend() == "auto"
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert ops.current_backend() == "torch"
    with ops.set_backend("auto"):
        assert ops.current_backend() == "auto"
        with ops.set_backend("torch"):
            assert ops.current_backend() == "torch"
        assert ops.current_backend() == "auto"
    monkeypatch.setenv(dispatch.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="backend='fastest' is not a backend; allowed: auto, torch"):
        ops.current_backend()


def test_explicit_missing_backend_lists_available(monkeypatch):
    monkeypatch.setitem(
        dispatch._registry, "cuda",
        dispatch.Backend("cuda", object(), ("cuda",), lambda: (False, "no CUDA device")),
    )
    with pytest.raises(ValueError, match=r"backend 'cuda' is not available \(no CUDA device\); available: .*torch"):
        with ops.set_backend("cuda"):
            pass


def test_backend_without_an_op_falls_back_to_reference(monkeypatch):
    calls = []

    class OnlyNorm:
        @staticmethod
        def sliced_layernorm(x, w, b, eps):
            calls.append("norm")
            return reference.sliced_layernorm(x, w, b, eps)

    monkeypatch.setitem(dispatch._registry, "cuda", dispatch.Backend("cuda", OnlyNorm, ("cpu",), lambda: (True, "")))
    with ops.set_backend("cuda"):
        ops.sliced_layernorm(torch.randn(2, 4), torch.ones(4), torch.zeros(4))
        assert dispatch.resolve("sliced_attention", "cpu") is reference.sliced_attention
    assert calls == ["norm"]
