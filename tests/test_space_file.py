"""A search space for the user's images (``space`` files): ``--space FILE.yaml|json`` through the commands.

28x28 grayscale digits (the bundled 8x8 ones, upsampled): train on a space file at their size,
then search, export, profile and fine-tune from the run alone (the file gone), and timm builds the
export for (N, 1, 28, 28) inputs. Bad files are one-line errors naming the field.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch

from _tiny_runs import TINY, digit_pngs, run_info
from focusformer_fast import finetune, profile, search, train
from focusformer_fast.models import export
from focusformer_fast.space import SearchSpace
from focusformer_fast.training.runs import CHECKPOINT_NAME
from focusformer_fast.utils.checkpoints import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
FAST_TIMING = ["--warmup", "0", "--min-reps", "1", "--max-reps", "1", "--max-time", "0.01"]


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def digits28(tmp_path_factory):
    root = tmp_path_factory.mktemp("d28")
    digit_pngs(root / "imgs", per_class=30, classes=3, size=28)
    return root


def test_a_space_file_at_the_images_size_serves_train_search_export_profile_and_finetune(digits28, tmp_path, capsys):
    space_file = tmp_path / "my28.yaml"
    space_file.write_text("preset: digits\nimage_size: 28\npatch_size: 4\nembed_dims: [32, 48]\n")
    run = tmp_path / "run"
    assert train.main([*TINY, "--batch-size", "16", "--data", str(digits28 / "imgs"), "--space", str(space_file),
                       "--output", str(run)]) == 0  # base code: "--space='.../my28.yaml' is unknown"
    assert "resizing" not in capsys.readouterr().err
    want = SearchSpace("my28", (32, 48), (2.0, 3.0, 4.0), (2, 3, 4), (2, 3, 4), image_size=28, patch_size=4,
                       in_chans=1, num_classes=3, head_dim=16)
    assert SearchSpace.from_dict(run_info(run)["space"]) == want
    assert SearchSpace.from_dict(load_checkpoint(run / CHECKPOINT_NAME)["space"]) == want
    space_file.unlink()  # from here on the run alone

    assert search.main([str(run), "--budget", "2M", "--export", str(tmp_path / "models")]) == 0
    subnet = tmp_path / "models" / "budget-2M"
    model = timm.create_model(f"local-dir:{subnet}", pretrained=True).eval()
    assert tuple(model.pretrained_cfg["input_size"]) == (1, 28, 28)
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)
    record = export.read_config(subnet)["focusformer"]
    assert SearchSpace.from_dict(record["space"]) == want

    capsys.readouterr()
    assert profile.main(["--space", str(run), "--arch", "smallest", "--device", "cpu", "--batch-sizes", "1",
                         *FAST_TIMING]) == 0
    assert "e32-d2-h[2,2]-r[2,2] batch 1 dense" in capsys.readouterr().out

    ft = tmp_path / "ft"
    assert finetune.main([str(subnet), "--data", str(digits28 / "imgs"), "--steps", "2", "--batch-size", "16",
                          "--no-progress", "--output", str(ft)]) == 0
    assert json.loads((ft / "results.json").read_text())["steps"] == 2


def test_images_far_from_the_presets_size_get_a_note_suggesting_a_space_file(digits28, tmp_path, capsys):
    assert train.main([*TINY, "--data", str(digits28 / "imgs"), "--output", str(tmp_path / "r")]) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note: images are 28x28")]
    assert notes and "give --space FILE.yaml with image_size: 28" in notes[0]


@pytest.mark.parametrize("text, says", [
    ("preset: digits\nimage_size: 30\npatch_size: 4\n", "image_size=30 must be a multiple of patch_size=4"),
    ("preset: digits\nnum_classes: 3\n", "num_classes=3 comes from the data; remove it"),
    ("preset: digits\ndepths: [2, 2]\n", "depths=[2, 2] must be a non-empty list of distinct positive integers"),
    ("preset: digits\nmlp_ratios: []\n", "mlp_ratios=[] must be a non-empty list of distinct positive numbers"),
    ("preset: digits\nhead_dim: 0\n", "head_dim=0 must be a positive integer"),
    ("preset: digit\n", "preset='digit' is unknown; allowed: autoformer-t"),
    ("preset: digits\ncolour: 1\n", "unknown field 'colour'; allowed: preset, name, embed_dims"),
    ("image_size: 28\npatch_size: 4\n", "field 'embed_dims' is missing (or give preset: NAME"),
    ("- 1\n", "must hold a mapping of field: value"),
    ("preset: [digits\n", "is not valid YAML"),
])
def test_a_space_file_with_a_bad_field_is_one_line_naming_it(tmp_path, capsys, text, says):
    space_file = tmp_path / "bad.yaml"
    space_file.write_text(text)
    assert train.main(["--space", str(space_file), "--output", str(tmp_path / "run")]) == 2
    error = _error(capsys)
    assert error.startswith(f"error: --space: space file {str(space_file)!r}") and says in error, error
    assert not (tmp_path / "run").exists()


def test_a_space_file_that_fixes_channels_refuses_other_data(tmp_path, capsys):
    space_file = tmp_path / "rgb.json"
    space_file.write_text(json.dumps({"preset": "digits", "in_chans": 3}))
    assert train.main([*TINY, "--space", str(space_file), "--output", str(tmp_path / "run")]) == 2
    assert "has in_chans=3; data 'digits' has 1-channel images" in _error(capsys)
