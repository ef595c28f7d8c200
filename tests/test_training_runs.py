"""A training run's space and data (``training.runs``), through ``train`` and ``search``: grayscale images at
the space's size train a one-channel stem unresized, images of another size are resized with a note, a space
the data does not fit names the spaces that do, a tiny val split warns with its counts; a run stores resolved
paths, and ``search --data`` finds its moved dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from _tiny_runs import TINY, digit_pngs, run_info
from focusformer_fast import search, train
from focusformer_fast.data.datasets import load_dataset
from focusformer_fast.training.runs import CHECKPOINT_NAME, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = [*TINY, "--batch-size", "16"]


@pytest.mark.parametrize("layout", ["class-folders", "train-val"])
def test_grayscale_images_at_size_train_a_one_channel_stem_unresized(tmp_path, layout, capsys):
    root = tmp_path / "imgs"
    if layout == "class-folders":
        written = digit_pngs(root, per_class=20)
    else:
        written = digit_pngs(root / "train", per_class=20)
        digit_pngs(root / "val", per_class=5, start=20)
    out = tmp_path / "run"
    assert train.main([*SMALL, "--data", str(root), "--output", str(out)]) == 0  # base: not a dataset / 3 channels
    assert "resizing" not in capsys.readouterr().err
    weights = read_checkpoint(out / CHECKPOINT_NAME)["supernet"]
    assert weights["patch_weight"].shape[1] == 1
    splits = load_dataset(str(root), image_size=8, augment=None)
    source = splits.val.source
    for k in range(len(splits.val)):  # eval images: the file's pixels, normalized, not resized or cropped
        path, _ = source.samples[int(splits.val.indices[k])]
        expected = (written[Path(path)] / 255.0 - splits.mean[0]) / splits.std[0]
        assert torch.allclose(splits.val[k][0], torch.from_numpy(expected).float()[None], atol=1e-6)


def test_images_of_another_size_are_resized_with_a_note(tmp_path, capsys):
    digit_pngs(tmp_path / "imgs", per_class=20, size=32, mode="RGB")
    assert train.main([*SMALL, "--data", str(tmp_path / "imgs"), "--output", str(tmp_path / "run")]) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "resizing" in ln]
    assert notes == ["note: images are 32x32; resizing them to 8x8 for --space digits (try --space cifar-t)"]
    assert read_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["supernet"]["patch_weight"].shape[1] == 3


def test_size_mismatch_names_the_spaces_that_fit(tmp_path, capsys):
    assert train.main([*TINY, "--space", "cifar-t", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --space cifar-t takes 32x32 images; data 'digits' is 8x8x1; try --space digits")


def test_a_tiny_val_split_warns_with_the_counts(tmp_path, capsys):
    digit_pngs(tmp_path / "imgs", per_class=20)
    assert train.main([*SMALL, "--data", str(tmp_path / "imgs"), "--output", str(tmp_path / "run")]) == 0
    warns = [ln for ln in capsys.readouterr().err.splitlines() if "val split" in ln]
    assert warns == ["warning: val split has 6 images for 3 classes (under 10 per class): the subnets it picks "
                     "are noisy; add images or raise --val-fraction (train 45, test 9 images)"]


def test_run_stores_resolved_paths_and_search_data_finds_a_moved_dataset(tmp_path, monkeypatch, capsys):
    digit_pngs(tmp_path / "work" / "imgs", per_class=20)
    monkeypatch.chdir(tmp_path / "work")
    assert train.main([*TINY, "--batch-size", "16", "--data", "imgs", "--output", "run"]) == 0
    cfg = run_info(tmp_path / "work" / "run")["config"]
    assert cfg["data"] == str(tmp_path / "work" / "imgs") and cfg["output"] == str(tmp_path / "work" / "run")

    monkeypatch.chdir(tmp_path)  # another directory: the stored path still names the data
    assert search.main(["work/run", "--device", "cpu"]) == 0
    shutil.move(tmp_path / "work" / "imgs", tmp_path / "moved")
    capsys.readouterr()
    assert search.main(["work/run", "--device", "cpu"]) == 2
    assert "give its new place with --data" in capsys.readouterr().err
    assert search.main(["work/run", "--device", "cpu", "--data", "moved"]) == 0
