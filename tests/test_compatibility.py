"""Files written by main at 42bf7be, before the package tree moved into subpackages, still load and
continue: a stopped training run (checkpoint with supernet and sampler), an export, and a stopped
fine-tuning run (``tests/fixtures/main_42bf7be/README.md`` says how each was written). A training
checkpoint without the trainer's newest config fields resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from _tiny_runs import TINY
from focusformer_fast import finetune, train
from focusformer_fast.training.runs import CHECKPOINT_NAME, read_checkpoint
from focusformer_fast.utils.checkpoints import load_checkpoint, save_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "main_42bf7be"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def old_files(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURES, tmp_path / "old")
    return tmp_path / "old"


def test_an_old_export_loads_as_the_same_timm_model(old_files):
    import timm

    from focusformer_fast.models.export import load

    expected = torch.tensor(json.loads((old_files / "export_logits.json").read_text())["logits"])
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    for model in (load(old_files / "export"), timm.create_model(f"local-dir:{old_files / 'export'}", pretrained=True)):
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x)[0], expected, rtol=0, atol=2e-6)


def _assert_same(a, b, where: str = "sampler") -> None:
    """``a`` and ``b`` (nested dicts, lists, tuples, tensors, plain values) are equal, tensors bit for bit."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), where
        for key in b:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(b, (list, tuple)):
        assert isinstance(a, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(b, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where


def test_an_old_training_run_loads_with_its_weights_and_sampler(old_files):
    from focusformer_fast.training.runs import load_run
    from focusformer_fast.utils.checkpoints import load_checkpoint

    raw = load_checkpoint(old_files / "train_run" / "checkpoint.pt")
    run = load_run(old_files / "train_run")
    assert run.step == 4
    state = run.net.state_dict()
    assert state.keys() == raw["supernet"].keys()
    for name, tensor in raw["supernet"].items():
        assert torch.equal(state[name], tensor), name
    _assert_same(run.sampler.state_dict(), raw["sampler"])


def test_an_old_training_run_continues_to_its_last_step(old_files, capsys):
    assert train.main(["--resume", str(old_files / "train_run"), "--threads", "1"]) == 0
    lines = (old_files / "train_run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines if '"step"' in line][-1] == 8
    assert (old_files / "train_run" / "results.json").is_file()


def test_an_old_finetuning_run_continues_and_exports(old_files, capsys):
    assert finetune.main(["--resume", str(old_files / "finetune_run"), "--threads", "1", "--no-progress"]) == 0
    assert (old_files / "finetune_run" / "export" / "model.safetensors").is_file()


def test_a_checkpoint_from_before_the_newest_fields_still_resumes(tmp_path):
    out = tmp_path / "run"
    assert train.main([*TINY, "--stop-at", "4", "--output", str(out)]) == 0
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    for name in ("eval_every", "check_data", "strict_latency"):  # fields this change added
        del ckpt["config"][name]
    save_checkpoint(out / CHECKPOINT_NAME, ckpt)
    assert train.main(["--resume", str(out)]) == 0
    assert read_checkpoint(out / CHECKPOINT_NAME)["step"] == 8
