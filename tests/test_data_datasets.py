"""Which dataset a ``--data`` value names, and the checks of ``load_dataset``'s arguments (``data.datasets``):
image sizes and policies the bundled digits refuse, a ``val_fraction`` out of range, one-line errors for a
path that is missing or holds no known layout."""

import pytest

from focusformer_fast.data.datasets import load_dataset


def test_digits_rejects_other_image_sizes_and_policies():
    with pytest.raises(ValueError, match="8x8"):
        load_dataset("digits", image_size=32)
    with pytest.raises(ValueError, match="augment"):
        load_dataset("digits", augment="rand-m9-mstd0.5")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_val_fraction_out_of_range_is_rejected(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=fraction)


def test_missing_path_is_a_one_line_value_error(tmp_path):
    path = str(tmp_path / "nope")
    with pytest.raises(ValueError) as err:
        load_dataset(path)
    message = str(err.value)
    assert path in message and "\n" not in message and "digits" in message


def test_directory_of_unknown_layout_is_a_value_error(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError) as err:
        load_dataset(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "ImageFolder" in str(err.value)
