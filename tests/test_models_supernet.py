"""Supernet (``models.supernet``): outputs equal the extracted standalone model's; gradients land exactly in
the used slices."""

import random

import pytest
import torch

from focusformer_fast import SearchSpace, Supernet, ops

ARCHS_PER_PRESET = {"digits": 4, "cifar-t": 2, "autoformer-t": 2, "autoformer-s": 1, "autoformer-b": 1}


def _images(space, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, space.in_chans, space.image_size, space.image_size, generator=g)


@pytest.mark.parametrize(
    "name, global_pool", [(name, "cls") for name in sorted(ARCHS_PER_PRESET)] + [("digits", "mean"), ("cifar-t", "mean")]
)
def test_supernet_equals_extracted_model(name, global_pool):
    torch.manual_seed(0)
    space = SearchSpace.preset(name)
    net = Supernet(space, global_pool=global_pool).eval()
    rng = random.Random(1)
    archs = [space.sample(rng) for _ in range(ARCHS_PER_PRESET[name])]
    for arch in archs:
        model = net.extract(arch).eval()
        for batch in (1, 3):
            x = _images(space, batch)
            with torch.no_grad(), ops.set_backend("torch"):
                torch.testing.assert_close(net(x, arch), model(x), rtol=1e-5, atol=1e-5)


def _slice_of(name, param, arch, space, block):
    """The index into super-parameter ``name`` that ``arch`` uses (independent of the supernet code)."""
    e = arch.embed_dim
    if block is None:
        return {
            "patch_weight": (slice(0, e),), "patch_bias": (slice(0, e),),
            "cls_token": (slice(None), slice(None), slice(0, e)),
            "pos_embed": (slice(None), slice(None), slice(0, e)),
            "norm_weight": (slice(0, e),), "norm_bias": (slice(0, e),),
            "head_weight": (slice(None), slice(0, e)), "head_bias": (slice(None),),
        }[name]
    inner = arch.num_heads[block] * space.head_dim
    inner_max = space.max_heads * space.head_dim
    m = int(e * arch.mlp_ratio[block])
    qkv_rows = torch.cat([torch.arange(g * inner_max, g * inner_max + inner) for g in range(3)])
    return {
        "norm1_weight": (slice(0, e),), "norm1_bias": (slice(0, e),),
        "norm2_weight": (slice(0, e),), "norm2_bias": (slice(0, e),),
        "qkv_weight": (qkv_rows[:, None], torch.arange(e)[None, :]), "qkv_bias": (qkv_rows,),
        "proj_weight": (slice(0, e), slice(0, inner)), "proj_bias": (slice(0, e),),
        "fc1_weight": (slice(0, m), slice(0, e)), "fc1_bias": (slice(0, m),),
        "fc2_weight": (slice(0, e), slice(0, m)), "fc2_bias": (slice(0, e),),
    }[name]


_STANDALONE_NAME = {
    "patch_weight": "patch_embed.weight", "patch_bias": "patch_embed.bias", "cls_token": "cls_token",
    "pos_embed": "pos_embed", "norm_weight": "norm.weight", "norm_bias": "norm.bias",
    "head_weight": "head.weight", "head_bias": "head.bias", "norm1_weight": "norm1.weight",
    "norm1_bias": "norm1.bias", "norm2_weight": "norm2.weight", "norm2_bias": "norm2.bias",
    "qkv_weight": "attn.qkv.weight", "qkv_bias": "attn.qkv.bias", "proj_weight": "attn.proj.weight",
    "proj_bias": "attn.proj.bias", "fc1_weight": "fc1.weight", "fc1_bias": "fc1.bias",
    "fc2_weight": "fc2.weight", "fc2_bias": "fc2.bias",
}


@pytest.mark.parametrize("name, seed", [("digits", 0), ("digits", 1), ("cifar-t", 2)])
def test_gradients_fill_exactly_the_used_slices(name, seed):
    torch.manual_seed(seed)
    space = SearchSpace.preset(name)
    net = Supernet(space)
    arch = space.sample(random.Random(seed))
    if arch.depth == space.max_depth:
        arch = space.smallest()
    model = net.extract(arch)
    x, y = _images(space, 3, seed), torch.tensor([1, 0, 2])
    with ops.set_backend("torch"):
        torch.nn.functional.cross_entropy(net(x, arch), y).backward()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    dense = dict(model.named_parameters())
    for pname, p in net.named_parameters():
        parts = pname.split(".")
        block = int(parts[1]) if parts[0] == "blocks" else None
        leaf = parts[-1]
        if block is not None and block >= arch.depth:
            assert p.grad is None or not p.grad.any(), f"{pname}: unused block received gradient"
            continue
        idx = _slice_of(leaf, p, arch, space, block)
        used = torch.zeros_like(p, dtype=torch.bool)
        used[idx] = True
        assert not p.grad[~used].any(), f"{pname}: gradient outside the used slice"
        dense_name = _STANDALONE_NAME[leaf] if block is None else f"blocks.{block}.{_STANDALONE_NAME[leaf]}"
        torch.testing.assert_close(p.grad[idx].reshape(dense[dense_name].shape), dense[dense_name].grad,
                                   rtol=1e-4, atol=1e-6, msg=pname)


def test_forward_does_not_copy_super_weights():
    space = SearchSpace.preset("digits")
    net = Supernet(space)
    arch = space.middle()
    before = {n: p.data_ptr() for n, p in net.named_parameters()}
    with torch.no_grad():
        net(_images(space, 2), arch)
    assert before == {n: p.data_ptr() for n, p in net.named_parameters()}


def test_drop_path_changes_training_output_only():
    torch.manual_seed(0)
    space = SearchSpace.preset("digits")
    net = Supernet(space, drop_path_rate=0.5)
    plain = Supernet(space)
    plain.load_state_dict(net.state_dict())
    arch, x = space.largest(), _images(space, 8)
    with torch.no_grad():
        net.eval(), plain.eval()
        torch.testing.assert_close(net(x, arch), plain(x, arch))
        net.train(), plain.train()
        assert not torch.allclose(net(x, arch), plain(x, arch))


def test_invalid_arch_and_options_raise():
    space = SearchSpace.preset("digits")
    net = Supernet(space)
    with pytest.raises(ValueError, match="embed_dim=40"):
        net(_images(space, 1), type(space.smallest())(40, 2, (2, 2), (2.0, 2.0)))
    with pytest.raises(ValueError, match="global_pool='max'"):
        Supernet(space, global_pool="max")
    assert Supernet(space, num_classes=7).head_weight.shape == (7, 64)
