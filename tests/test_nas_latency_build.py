"""Building latency tables (``nas.latency.build``): the timed pieces run the same forward as the models, a
table of the sliced ``torch`` backend builds with the dense table's block shapes, bad arguments are
refused."""

from __future__ import annotations

import pytest
import torch

from _latency_tables import table  # noqa: F401  (a fixture)
from _latency_tables import CPU, DIGITS, FAST
from focusformer_fast.nas.latency.build import _dense_pieces, _sliced_pieces, build_table, make_supernet, random_images
from focusformer_fast.nas.latency.table import LatencyTable
from focusformer_fast.space import Arch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pieces_run_the_same_forward_as_the_models() -> None:
    """The table cuts models where the subnet forward runs; a drift from it would bias the table."""
    images = random_images(DIGITS, 2, CPU, torch.float32)
    shape, k = (48, 3, 3.0), 2
    dense = _dense_pieces(DIGITS, shape, k, CPU, torch.float32)
    model = dense.forward
    x = dense.stem(images)
    for blk in model.blocks:
        x = blk(x)
    torch.testing.assert_close(model.head(model.norm(x)[:, 0]), model(images))

    net = make_supernet(DIGITS, CPU, torch.float32)
    sliced = _sliced_pieces(net, shape, k, "torch")
    arch = Arch(48, k, (3,) * k, (3.0,) * k)
    torch.testing.assert_close(sliced.forward(images), net(images, arch))
    torch.testing.assert_close(sliced.stem(images), net.embed(images, 48))


def test_sliced_backend_table_builds(table: LatencyTable) -> None:
    sliced = build_table(DIGITS, [1], device="cpu", backend="torch", timing=FAST, chain=2, progress=False)
    assert sliced.backend == "torch" and set(sliced.batches[1].blocks) == set(table.batches[1].blocks)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_sizes": [0]}, "batch size 0 is not allowed"),
    ({"batch_sizes": [1, 1]}, "distinct"),
    ({"dtype": "int8"}, "dtype='int8' is not supported; allowed: fp32, bf16, fp16"),
    ({"backend": "cuda"}, "backend='cuda' cannot run on cpu; allowed here: dense, auto"),
    ({"graph": True}, "graph=True needs a CUDA device"),
    ({"chain": 5}, r"chain=5 must be in \[1, 4\]"),
])
def test_build_table_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"batch_sizes": [1], "device": "cpu", "timing": FAST, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_table(DIGITS, args.pop("batch_sizes"), **args)
