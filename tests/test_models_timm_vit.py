"""A subnet as a timm model (``models.timm_vit``): timm's local-dir loader builds an export as a
``FocusFormerViT`` whose logits equal ``export.load``'s and the supernet's; its weights carry timm's key
names; it keeps timm's API (features, head, a new classifier, gradient checkpointing, TorchScript)."""

import random

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from focusformer_fast import FocusFormerViT, SearchSpace, Supernet
from focusformer_fast.models import export


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
