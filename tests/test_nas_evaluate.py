"""Scoring a subnet on a split (``nas.evaluate``): the likelihood is the geometric mean of p(true class),
computed here by hand from fixed logits over batches of unequal size."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from focusformer_fast.nas.evaluate import accuracy, likelihood
from focusformer_fast.space import SearchSpace

# 5 images of 3 classes: each image's logits, and its label
LOGITS = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-3.0, 1.0, 4.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0]]
LABELS = [0, 1, 2, 1, 0]


class FixedLogits(nn.Module):
    """Returns row ``i`` of ``logits`` [n, classes] for an image that holds ``i``; records its mode."""

    def __init__(self, logits: list[list[float]]):
        super().__init__()
        self.logits = torch.tensor(logits)
        self.modes: list[bool] = []

    def forward(self, images: torch.Tensor, arch) -> torch.Tensor:
        self.modes.append(self.training)
        return self.logits[images.long()]


def _by_hand() -> float:
    """exp(mean log softmax(logits)[label]), from the definition."""
    logs = [row[y] - math.log(sum(math.exp(v) for v in row)) for row, y in zip(LOGITS, LABELS)]
    return math.exp(sum(logs) / len(logs))


def _batches():
    return [(torch.tensor([0, 1]), torch.tensor(LABELS[:2])), (torch.tensor([2, 3, 4]), torch.tensor(LABELS[2:]))]


def test_likelihood_is_the_geometric_mean_of_the_true_class_probability():
    net = FixedLogits(LOGITS).train()
    arch = SearchSpace.preset("digits").smallest()
    got = likelihood(net, arch, _batches(), torch.device("cpu"))
    assert got == pytest.approx(_by_hand(), rel=1e-6)
    assert 0.0 < got <= 1.0
    assert net.modes == [False, False] and net.training  # scored in eval mode, its mode restored
    assert accuracy(net, arch, _batches(), torch.device("cpu")) == pytest.approx(2 / 5)


def test_likelihood_of_confident_right_answers_tends_to_one_and_an_empty_split_is_refused():
    net = FixedLogits([[50.0, 0.0, 0.0], [2.0, 0.0, -1.0]])
    arch = SearchSpace.preset("digits").smallest()
    cpu = torch.device("cpu")
    assert likelihood(net, arch, [(torch.tensor([0]), torch.tensor([0]))], cpu) == pytest.approx(1.0)
    assert likelihood(net, arch, [(torch.tensor([1]), torch.tensor([0]))], cpu) < 1.0
    with pytest.raises(ValueError, match="empty split"):
        likelihood(net, arch, [], cpu)
