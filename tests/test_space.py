"""Search spaces: presets, Arch validation, sampling, and FLOPs/params against independent counts."""

import json
import random

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from focusformer_fast import Arch, SearchSpace, Supernet

# The presets of docs/method.md, written out independently of space.py.
PAPER_TABLE = {
    "autoformer-t": ((192, 216, 240), (3.5, 4.0), (3, 4), (12, 13, 14), 224, 16),
    "autoformer-s": ((320, 384, 448), (3.0, 3.5, 4.0), (5, 6, 7), (12, 13, 14), 224, 16),
    "autoformer-b": ((528, 576, 624), (3.0, 3.5, 4.0), (8, 9, 10), (14, 15, 16), 224, 16),
    "cifar-t": ((192, 216, 240), (3.5, 4.0), (3, 4), (12, 13, 14), 32, 4),
}


@pytest.mark.parametrize("name", sorted(PAPER_TABLE))
def test_presets_match_method_table(name):
    s = SearchSpace.preset(name)
    assert (s.embed_dims, s.mlp_ratios, s.num_heads, s.depths, s.image_size, s.patch_size) == PAPER_TABLE[name]
    assert s.head_dim == 64


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown search space 'tiny'.*autoformer-t"):
        SearchSpace.preset("tiny")


def test_flops_match_anchor_measurements():
    # Measured with an independent counter before this code existed: autoformer-t max 4.53 GFLOPs, min 2.33 G, autoformer-s max 14.4 G (2 FLOPs per MAC).
    t, s = SearchSpace.preset("autoformer-t"), SearchSpace.preset("autoformer-s")
    assert 2 * t.flops(t.largest()) / 1e9 == pytest.approx(4.53, abs=0.005)
    assert 2 * t.flops(t.smallest()) / 1e9 == pytest.approx(2.33, abs=0.005)
    assert 2 * s.flops(s.largest()) / 1e9 == pytest.approx(14.4, abs=0.05)


@pytest.mark.parametrize(
    "field, arch, pattern",
    [
        ("embed_dim", Arch(200, 2, (2, 2), (2.0, 2.0)), r"Arch.embed_dim=200 .*allowed: \[32, 48, 64\]"),
        ("depth", Arch(32, 5, (2,) * 5, (2.0,) * 5), r"Arch.depth=5 .*allowed: \[2, 3, 4\]"),
        ("num_heads", Arch(32, 2, (2, 7), (2.0, 2.0)), r"Arch.num_heads\[1\]=7 .*allowed: \[2, 3, 4\]"),
        ("mlp_ratio", Arch(32, 2, (2, 2), (2.0, 2.5)), r"Arch.mlp_ratio\[1\]=2.5 .*allowed: \[2.0, 3.0, 4.0\]"),
    ],
)
def test_validate_names_each_bad_field(field, arch, pattern):
    with pytest.raises(ValueError, match=pattern):
        SearchSpace.preset("digits").validate(arch)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(embed_dim=32.0, depth=2, num_heads=(2, 2), mlp_ratio=(2, 2)), TypeError, "embed_dim"),
        (dict(embed_dim=32, depth=True, num_heads=(2,), mlp_ratio=(2,)), TypeError, "depth"),
        (dict(embed_dim=32, depth=2, num_heads=(2, 2.5), mlp_ratio=(2, 2)), TypeError, "num_heads"),
        (dict(embed_dim=32, depth=2, num_heads=(2,), mlp_ratio=(2, 2)), ValueError, "num_heads has 1"),
        (dict(embed_dim=32, depth=2, num_heads=(2, 2), mlp_ratio=(2, 2, 2)), ValueError, "mlp_ratio has 3"),
    ],
)
def test_arch_rejects_malformed_fields(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        Arch(**kwargs)


def test_arch_json_round_trip_and_bad_keys():
    s = SearchSpace.preset("autoformer-s")
    rng = random.Random(3)
    for _ in range(20):
        a = s.sample(rng)
        assert Arch.from_json(a.to_json()) == a
        assert json.loads(a.to_json())["num_heads"] == list(a.num_heads)
    with pytest.raises(ValueError, match="exactly the keys"):
        Arch.from_dict({"embed_dim": 32, "depth": 2, "num_heads": [2, 2]})


def test_sampling_is_seeded_valid_and_covers_the_space():
    s = SearchSpace.preset("autoformer-t")
    a1 = [s.sample(random.Random(7)) for _ in range(3)]
    assert a1[0] == a1[1] == a1[2]
    rng = random.Random(0)
    archs = [s.validate(s.sample(rng)) for _ in range(300)]
    assert {a.depth for a in archs} == set(s.depths)
    assert {a.embed_dim for a in archs} == set(s.embed_dims)
    assert {h for a in archs for h in a.num_heads} == set(s.num_heads)
    assert {r for a in archs for r in a.mlp_ratio} == set(s.mlp_ratios)


def test_smallest_middle_largest_order():
    s = SearchSpace.preset("autoformer-b")
    lo, mid, hi = s.smallest(), s.middle(), s.largest()
    assert (lo.embed_dim, mid.embed_dim, hi.embed_dim) == (528, 576, 624)
    assert s.flops(lo) < s.flops(mid) < s.flops(hi)
    assert s.params(lo) < s.params(mid) < s.params(hi)


def _explicit_attention(q, k, v, **_):
    attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return attn.softmax(-1) @ v


@pytest.mark.parametrize("name", ["digits", "cifar-t", "autoformer-t"])
def test_flops_and_params_match_independent_counters(name, monkeypatch):
    space = SearchSpace.preset(name)
    net = Supernet(space)
    rng = random.Random(11)
    # Attention as explicit matmuls so the counter sees both attention products.
    monkeypatch.setattr(F, "scaled_dot_product_attention", _explicit_attention)
    for arch in (space.smallest(), space.largest(), space.sample(rng)):
        model = net.extract(arch)
        assert sum(p.numel() for p in model.parameters()) == space.params(arch)
        x = torch.randn(1, space.in_chans, space.image_size, space.image_size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        assert counter.get_total_flops() == 2 * space.flops(arch)


def test_space_dict_round_trip():
    s = SearchSpace.preset("cifar-t", num_classes=10)
    assert SearchSpace.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="unknown SearchSpace fields"):
        SearchSpace.from_dict({**s.to_dict(), "width": 3})
