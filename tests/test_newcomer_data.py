"""A new user's own images through ``python -m focusformer_fast.train`` (issue 12, items 3, 4, 5)."""

from __future__ import annotations

from pathlib import Path
import pytest
import torch

from _newcomer import TINY, digit_pngs
from focusformer_fast import train
from focusformer_fast.data.datasets import load_dataset
from focusformer_fast.training.runs import CHECKPOINT_NAME, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = [*TINY, "--batch-size", "16"]


def _damage(folder):
    """A text file named .png and a PNG cut in half, in class 0 of ``folder``."""
    (folder / "0" / "notes.png").write_text("not an image")
    whole = (folder / "0" / "0.png").read_bytes()
    (folder / "0" / "cut.png").write_bytes(whole[: len(whole) // 2])
    return {str(folder / "0" / "notes.png"), str(folder / "0" / "cut.png")}


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path, capsys):
    digit_pngs(tmp_path / "imgs", per_class=20)
    bad = _damage(tmp_path / "imgs")
    out = tmp_path / "run"
    assert train.main([*SMALL, "--data", str(tmp_path / "imgs"), "--output", str(out)]) == 0  # base: traceback
    listed = {line.split("\t")[0] for line in (out / "bad_images.txt").read_text().splitlines()}
    assert listed == bad
    err = capsys.readouterr().err
    assert f"warning: 2 unreadable image file(s) were skipped; listed in {out / 'bad_images.txt'}" in err


def test_check_data_refuses_with_the_list_and_writes_nothing(tmp_path, capsys):
    digit_pngs(tmp_path / "imgs", per_class=20)
    bad = _damage(tmp_path / "imgs")
    out = tmp_path / "run"
    assert train.main([*SMALL, "--check-data", "--data", str(tmp_path / "imgs"), "--output", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "2 image file(s) cannot be read" in err[0] and all(p in err[0] for p in bad)
    assert not out.exists()


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


def test_fewer_than_two_classes_is_an_error(tmp_path, capsys):
    digit_pngs(tmp_path / "imgs", per_class=20, classes=1)
    assert train.main([*SMALL, "--data", str(tmp_path / "imgs"), "--output", str(tmp_path / "run")]) == 2
    assert "has 1 class folder(s) (0); a classifier needs at least 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_tiny_val_split_warns_with_the_counts(tmp_path, capsys):
    digit_pngs(tmp_path / "imgs", per_class=20)
    assert train.main([*SMALL, "--data", str(tmp_path / "imgs"), "--output", str(tmp_path / "run")]) == 0
    warns = [ln for ln in capsys.readouterr().err.splitlines() if "val split" in ln]
    assert warns == ["warning: val split has 6 images for 3 classes (under 10 per class): the subnets it picks "
                     "are noisy; add images or raise --val-fraction (train 45, test 9 images)"]
