"""An export is a timm model: timm's local-dir loader builds it, and its logits equal the supernet's."""

import dataclasses
import random

import numpy as np

import pytest
import timm
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from focusformer_fast import FocusFormerViT, SearchSpace, Supernet
from focusformer_fast.models import export
from focusformer_fast.data.datasets import load_dataset
from focusformer_fast.data.device_batches import finish_one


def _archs(space):
    """Smallest, largest and a random mixed-width arch (digits); cifar-t's 14-block models take seconds
    each to build on CPU, so there only the two extremes."""
    archs = [space.smallest(), space.largest()]
    return archs if space.name == "cifar-t" else archs + [space.sample(random.Random(3))]


@pytest.mark.parametrize("preset,pool", [("digits", "cls"), ("digits", "mean"), ("cifar-t", "cls")])
def test_timm_local_dir_logits_equal_export_load_and_supernet(tmp_path, preset, pool):
    torch.manual_seed(0)
    space = SearchSpace.preset(preset)
    net = Supernet(space, global_pool=pool).eval()
    x = torch.randn(2, space.in_chans, space.image_size, space.image_size)
    for i, arch in enumerate(_archs(space)):
        d = export.save(net.extract(arch), tmp_path / f"m{i}", space=space)
        via_timm = timm.create_model(f"local-dir:{d}", pretrained=True).eval()
        loaded = export.load(d)
        assert isinstance(via_timm, VisionTransformer) and type(via_timm) is FocusFormerViT
        assert not loaded.training
        with torch.no_grad():
            want = net(x, arch)
            torch.testing.assert_close(via_timm(x), want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(loaded(x), want, rtol=1e-5, atol=1e-5)
        assert [b.attn.num_heads for b in via_timm.blocks] == list(arch.num_heads)
        assert [b.mlp.fc1.out_features for b in via_timm.blocks] == [arch.mlp_hidden(j) for j in range(arch.depth)]
        assert sum(p.numel() for p in via_timm.parameters()) == space.params(arch)


def test_weights_carry_timm_key_names(tmp_path):
    from safetensors.torch import load_file

    space = SearchSpace.preset("digits")
    d = export.save(Supernet(space).extract(space.largest()), tmp_path / "m")
    keys = set(load_file(str(d / export.WEIGHTS_NAME)))
    reference = set(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=space.largest().depth).state_dict())
    assert keys == reference


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


def test_timm_model_api(tmp_path):
    torch.manual_seed(0)
    space = SearchSpace.preset("digits")
    net = Supernet(space)
    arch = space.sample(random.Random(1))
    model = export.load(export.save(net.extract(arch), tmp_path / "m"))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (3, space.num_tokens, arch.embed_dim)
        torch.testing.assert_close(model.forward_head(feats), net.eval()(x, arch), rtol=1e-5, atol=1e-5)
        assert model.forward_head(feats, pre_logits=True).shape == (3, arch.embed_dim)
    model.reset_classifier(5)
    assert model(x).shape == (3, 5)
    model.train()
    model.set_grad_checkpointing(True)
    loss = model(x).square().sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_new_head_through_timm_and_torchscript(tmp_path):
    torch.manual_seed(0)
    space = SearchSpace.preset("digits")
    net = Supernet(space).eval()
    arch = space.sample(random.Random(2))
    d = export.save(net.extract(arch), tmp_path / "m")
    x = torch.randn(2, 1, 8, 8)
    five = timm.create_model(f"local-dir:{d}", pretrained=True, num_classes=5).eval()
    assert five.head.out_features == 5 and five(x).shape == (2, 5)
    with torch.no_grad():
        torch.testing.assert_close(five.forward_features(x), export.load(d).forward_features(x))
        scripted = torch.jit.script(export.load(d))
        torch.testing.assert_close(scripted(x), net(x, arch), rtol=1e-5, atol=1e-5)
