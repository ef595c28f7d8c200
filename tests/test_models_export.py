"""Exported subnets (``models.export``): the safetensors + JSON round trip, loadable without the supernet;
clear errors on bad files and on the first format; the ``pretrained_cfg`` and record, and timm's eval
transform from that ``pretrained_cfg`` equal to the data's own (an image folder, photographs, small images).

That the directory is a timm model: ``tests/test_models_timm_vit.py``; the ONNX/pt2 command:
``tests/test_export.py``.
"""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from _digits28 import write as write_digits28
from _exports import exported  # noqa: F401  (a fixture)
from _photos import photo_folder
from focusformer_fast import SearchSpace, Supernet
from focusformer_fast.data.datasets import load_dataset
from focusformer_fast.data.device_batches import finish_one
from focusformer_fast.models import export


def test_round_trip_outputs_equal(exported):
    net, arch, path = exported
    x = torch.randn(3, 1, 8, 8)
    loaded = export.load(path)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x, arch), rtol=1e-5, atol=1e-5)
    record = json.loads((path / export.CONFIG_NAME).read_text())["focusformer"]
    assert record["format_version"] == export.FORMAT_VERSION and record["extra"] == {"val_acc": 0.5}
    assert record["arch"] == arch.to_dict()
    assert sorted(p.name for p in path.iterdir()) == [export.CONFIG_NAME, export.WEIGHTS_NAME]


def test_loads_in_a_process_without_the_supernet(exported):
    """As the README's predict.py loads one: ``from focusformer_fast import export``; the supernet and the
    sliced ops stay unimported."""
    _, _, path = exported
    code = (
        "import sys, torch\n"
        "from focusformer_fast import export\n"
        f"m = export.load({str(path)!r})\n"
        "print(m(torch.zeros(1, 1, 8, 8)).shape)\n"
        "print(sorted(n for n in ('focusformer_fast.models.supernet', 'focusformer_fast.ops') if n in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["torch.Size([1, 10])", "[]"]


def test_bad_files_give_clear_errors(exported, tmp_path):
    _, _, path = exported
    with pytest.raises(ValueError, match="does not exist"):
        export.load(tmp_path / "nowhere")
    (path / export.WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        export.load(path)
    meta = json.loads((path / export.CONFIG_NAME).read_text())
    meta["focusformer"]["format_version"] = 99
    (path / export.CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version=99"):
        export.load(path)
    (path / export.CONFIG_NAME).write_text("{")
    with pytest.raises(ValueError, match="malformed"):
        export.load(path)


def test_an_export_of_the_first_format_is_named_as_such(exported):
    _, _, path = exported
    (path / export.CONFIG_NAME).write_text(json.dumps({"format_version": 1, "config": {}, "extra": {}}))
    with pytest.raises(ValueError, match="format_version=1; this version reads 2"):
        export.load(path)
    (path / export.CONFIG_NAME).write_text(json.dumps({"focusformer": {"format_version": 2}, "num_classes": 10}))
    with pytest.raises(ValueError, match="malformed: no field 'architecture'"):
        export.load(path)


def test_pretrained_cfg_and_record(tmp_path):
    space = SearchSpace.preset("digits")
    data = load_dataset("digits", seed=1)
    arch = space.middle()
    d = export.save(Supernet(space).extract(arch), tmp_path / "m", extra={"val_acc": 0.5, "step": 7},
                    space=space, data=data)
    model = timm.create_model(f"local-dir:{d}", pretrained=True)
    for cfg in (model.pretrained_cfg, export.load(d).pretrained_cfg):
        assert tuple(cfg["input_size"]) == (1, 8, 8)
        assert tuple(cfg["mean"]) == pytest.approx(data.mean) and tuple(cfg["std"]) == pytest.approx(data.std)
        assert cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0
        assert cfg["label_names"] == [str(i) for i in range(10)] and cfg["num_classes"] == 10
    record = export.read_config(d)["focusformer"]
    assert record["arch"] == arch.to_dict() and record["space"]["name"] == "digits"
    assert record["flops"] == space.flops(arch) and record["params"] == space.params(arch)
    assert record["extra"] == {"val_acc": 0.5, "step": 7} and "torch" in record["versions"]
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    image = transform(Image.new("L", (8, 8), color=int(255 * data.mean[0])))
    assert image.shape == (1, 8, 8) and image.abs().max() < 0.02  # the mean pixel normalizes to ~0


def test_an_imagefolder_export_feeds_timm_like_training_and_names_its_classes(tmp_path):
    """timm's eval transform from the export's pretrained_cfg equals the data's own eval transform."""
    rng = np.random.default_rng(0)
    for name in ("bee", "ant"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for k in range(4):
            pixels = rng.integers(0, 256, size=(10, 14, 3), dtype=np.uint8)  # 14 wide, 10 high: not square
            Image.fromarray(pixels, "RGB").save(tmp_path / "imgs" / name / f"{k}.png")
    data = load_dataset(str(tmp_path / "imgs"), image_size=8, augment=None, val_fraction=0.25)
    space = dataclasses.replace(SearchSpace.preset("digits"), in_chans=3, num_classes=2)
    d = export.save(Supernet(space).extract(space.smallest()), tmp_path / "m", space=space, data=data)
    model = timm.create_model(f"local-dir:{d}", pretrained=True)
    assert model.pretrained_cfg["label_names"] == ["ant", "bee"]  # the folders, in label order
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    image = Image.open(tmp_path / "imgs" / "bee" / "0.png")
    torch.testing.assert_close(transform(image), finish_one(data.val.transform(image), data.mean, data.std),
                               atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """JPEG photographs, landscape 500x375, portrait 375x500 and 640x427, in train/ and val/."""
    root = tmp_path_factory.mktemp("photos")
    photo_folder(root, per_class=3, sizes=((500, 375), (375, 500), (640, 427)))
    return root


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind", ["photographs", "small"])
def test_the_exports_pretrained_cfg_gives_timm_the_eval_transform(tmp_path, photos, kind):
    if kind == "photographs":
        root, size, preset, protocol = photos, 224, "autoformer-t", ("center", 0.875, "bicubic")
    else:
        root, size, preset, protocol = tmp_path / "d28", 8, "digits", ("squash", 1.0, "bicubic")
        write_digits28(root, copies=1, per_class=5)
    splits = load_dataset(str(root), image_size=size, augment=None)
    space = dataclasses.replace(SearchSpace.preset(preset), in_chans=splits.in_chans, num_classes=splits.num_classes)
    d = export.save(Supernet(space).extract(space.smallest()), tmp_path / "m", space=space, data=splits)
    model = timm.create_model(f"local-dir:{d}", pretrained=True)
    assert tuple(model.pretrained_cfg[k] for k in ("crop_mode", "crop_pct", "interpolation")) == protocol
    transform = create_transform(**resolve_data_config(model=model))
    for k in range(len(splits.test)):
        path = splits.test.source.samples[int(splits.test.indices[k])][0]
        image = Image.open(path).convert("RGB" if splits.in_chans == 3 else "L")
        torch.testing.assert_close(transform(image), splits.test[k][0], atol=1e-6, rtol=0)
