"""A random digits subnet exported with :func:`focusformer_fast.models.export.save`: the ``exported`` fixture
of the export tests (the format, and the ONNX/pt2 command)."""

import random

import pytest
import torch

from focusformer_fast import SearchSpace, Supernet
from focusformer_fast.models import export


@pytest.fixture()
def exported(tmp_path):
    torch.manual_seed(0)
    space = SearchSpace.preset("digits")
    net = Supernet(space).eval()
    arch = space.sample(random.Random(5))
    model = net.extract(arch).eval()
    export.save(model, tmp_path / "m", extra={"val_acc": 0.5})
    return net, arch, tmp_path / "m"
