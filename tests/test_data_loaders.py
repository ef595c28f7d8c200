"""DataLoaders (``data.loaders``): the train order is reproducible per seed and epoch and covers the train
split once an epoch, eval loaders keep the order and every sample, augmented batches repeat with worker
processes, and the distributed train order is ``DistributedSampler``'s."""

import pytest
import torch
from sklearn.datasets import load_digits

from focusformer_fast.data.datasets import load_dataset
from focusformer_fast.data.loaders import make_loaders
from focusformer_fast.data.options import LoaderOptions


@pytest.fixture(scope="module")
def raw_digits():
    bunch = load_digits()
    return bunch.images / 16.0, bunch.target


def _epoch_labels(loader) -> list[int]:
    return [y for _, labels in loader for y in labels.tolist()]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, augment=None)


def test_train_loader_order_is_reproducible_per_seed_and_epoch(digits):
    a, b, c = (make_loaders(digits, 64, seed=s) for s in (0, 0, 1))
    first = _epoch_labels(a.train)
    assert first == _epoch_labels(b.train)
    assert first != _epoch_labels(c.train)
    a.set_epoch(3)
    fresh = make_loaders(digits, 64, seed=0)
    fresh.set_epoch(3)
    third = _epoch_labels(a.train)
    assert third == _epoch_labels(fresh.train) and third != first


def test_train_loader_covers_train_split_once_per_epoch(digits, raw_digits):
    _, target = raw_digits
    loaders = make_loaders(digits, 100, seed=0, drop_last=False)
    assert sorted(_epoch_labels(loaders.train)) == sorted(target[digits.train.indices].tolist())
    dropped = make_loaders(digits, 100, seed=0)
    sizes = [len(labels) for _, labels in dropped.train]
    assert sizes == [100] * (len(digits.train) // 100)


def test_eval_loaders_keep_order_and_every_sample(digits, raw_digits):
    _, target = raw_digits
    loaders = make_loaders(digits, 64, seed=0)
    assert _epoch_labels(loaders.val) == target[digits.val.indices].tolist()
    assert _epoch_labels(loaders.test) == target[digits.test.indices].tolist()
    images, _ = next(iter(loaders.val))
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.float32


def test_augmented_batches_reproducible_with_workers():
    splits = load_dataset("digits", seed=0, augment="basic")
    a, b = (make_loaders(splits, 128, seed=4, options=LoaderOptions(num_workers=2)) for _ in range(2))
    for (xa, ya), (xb, yb) in zip(a.train, b.train):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_distributed_train_order_follows_distributed_sampler(digits, tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loaders = make_loaders(digits, 1, seed=9, distributed=True, drop_last=False)
        loaders.set_epoch(2)
        order = torch.randperm(len(digits.train), generator=torch.Generator().manual_seed(9 + 2)).tolist()
        labels = load_digits().target
        assert _epoch_labels(loaders.train) == labels[digits.train.indices[order]].tolist()
        assert _epoch_labels(loaders.val) == labels[digits.val.indices].tolist()
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_without_process_group_is_a_value_error(digits):
    with pytest.raises(ValueError, match="process group"):
        make_loaders(digits, 8, seed=0, distributed=True)
