"""The timm training recipe of supernet training (``training.recipe``): weight-decay exemptions, cutmix and
random erasing passed to timm."""

from __future__ import annotations

import pytest
import timm.data.mixup
import timm.data.random_erasing
import torch

from focusformer_fast import SearchSpace, Supernet
from focusformer_fast.train import main
from focusformer_fast.training import recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def test_no_weight_decay_reaches_the_optimizers_param_groups():
    net = Supernet(SearchSpace.preset("digits"))
    opt = recipe.optimizer(net, lr=1e-3, weight_decay=0.05)
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert set(by_decay) == {0.0, 0.05}
    exempt = {id(p) for n, p in net.named_parameters() if n in ("cls_token", "pos_embed") or p.ndim == 1}
    assert by_decay[0.0] == exempt
    assert by_decay[0.05] == {id(p) for p in net.parameters()} - exempt
    assert {id(net.cls_token), id(net.pos_embed)} <= by_decay[0.0]


def test_train_passes_cutmix_and_reprob_to_timm(tmp_path, monkeypatch, capsys):
    seen = {"mixup": [], "erase": 0}
    mix_call, erase_call = timm.data.mixup.Mixup.__call__, timm.data.random_erasing.RandomErasing.__call__

    def spy_mix(self, x, target):
        seen["mixup"].append((self.mixup_alpha, self.cutmix_alpha, self.label_smoothing))
        return mix_call(self, x, target)

    def spy_erase(self, x):
        seen["erase"] += 1
        assert self.probability == 0.5 and self.mode == "pixel" and x.dim() == 4
        before = x.clone()
        out = erase_call(self, x)
        seen["changed"] = seen.get("changed", False) or not torch.equal(before, out)
        return out

    monkeypatch.setattr(timm.data.mixup.Mixup, "__call__", spy_mix)
    monkeypatch.setattr(timm.data.random_erasing.RandomErasing, "__call__", spy_erase)
    rc = main(["--steps", "3", "--batch-size", "32", "--cutmix", "1.0", "--reprob", "0.5", "--smoothing", "0.1",
               "--specialize-n", "2", "--num-budgets", "2", "--no-progress", "--output", str(tmp_path / "run")])
    assert rc == 0
    assert seen["mixup"] == [(0.0, 1.0, 0.1)] * 3
    assert seen["erase"] == 3 and seen["changed"]
