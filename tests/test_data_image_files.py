"""Image files read lazily (``data.image_files``): the decoded pixels are PIL's, in every mode conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _photos import photo
from focusformer_fast.data.image_files import EncodedImage

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("mode, saved", [("RGB", "RGB"), ("L", "L"), ("L", "RGB"), ("RGB", "CMYK")])
def test_decoded_pixels_are_pils(tmp_path, mode, saved):
    path = tmp_path / "photo.jpg"
    photo(1, (120, 90)).convert(saved).save(path, quality=90)
    pixels, k = EncodedImage(str(path), mode).pixels()
    want = np.array(Image.open(path).convert(mode))
    assert k == 1 and torch.equal(pixels, torch.from_numpy(want.reshape(90, 120, -1)).permute(2, 0, 1))
