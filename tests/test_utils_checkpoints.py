"""Checkpoint files: checksums verified on load, the previous checkpoint kept, no temporary files left."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from focusformer_fast.train import main, run
from focusformer_fast.training.config import TrainConfig
from focusformer_fast.training.runs import CHECKPOINT_NAME
from focusformer_fast.utils.checkpoints import (CheckpointError, load_checkpoint, previous_path,
                                                remove_stale_temporaries, save_checkpoint)

pytestmark = pytest.mark.usefixtures("one_thread")


def _flip(path: Path, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of ``path`` (inside a tensor for any sizeable checkpoint)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + count] = bytes(b ^ 0xFF for b in data[mid:mid + count])
    path.write_bytes(bytes(data))


def test_round_trip_and_previous_is_kept(tmp_path):
    path = tmp_path / "checkpoint.pt"
    first = {"step": 1, "w": torch.arange(1000.0)}
    save_checkpoint(path, first)
    assert not previous_path(path).exists()
    second = {"step": 2, "w": torch.arange(1000.0) * 2}
    save_checkpoint(path, second)
    assert previous_path(path) == tmp_path / "checkpoint.prev.pt"
    for p, want in ((path, second), (previous_path(path), first)):
        got = load_checkpoint(p)
        assert got["step"] == want["step"] and torch.equal(got["w"], want["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign"])
def test_damaged_file_is_refused_naming_it_and_the_previous_one(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"w": torch.randn(4096)})
    save_checkpoint(path, {"w": torch.randn(4096)})
    if damage == "flip":
        _flip(path)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        torch.save({"w": torch.randn(4)}, path)  # a plain torch file: no header, no checksum
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert f"--resume {previous_path(path)}" in msg
    assert "damaged" in msg if damage in ("flip", "truncate") else "not a focusformer_fast checkpoint" in msg


def test_temporaries_of_a_killed_write_are_removed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})
    stale = [tmp_path / ".checkpoint.pt.abc123.tmp", tmp_path / ".checkpoint.prev.pt.link.tmp"]
    for s in stale:
        s.write_bytes(b"half a checkpoint")
    assert load_checkpoint(path) == {"step": 1}
    assert not any(s.exists() for s in stale)
    stale[0].write_bytes(b"half a checkpoint")
    save_checkpoint(path, {"step": 2})
    assert not stale[0].exists() and remove_stale_temporaries(path) == []


def _config(out: Path, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(steps=12, batch_size=256, sampler_warmup=2, update_every=2, reward_batch_size=64,
                                 specialize_n=2, checkpoint_every=4, output=str(out), progress=False), **kw})


def test_damaged_latest_checkpoint_refused_by_resume_and_previous_one_resumes_exactly(tmp_path, capsys):
    full = run(_config(tmp_path / "full"))
    part = run(_config(tmp_path / "part", stop_at=10))  # checkpoints at steps 4, 8 and 10
    assert part.step == 10
    latest = tmp_path / "part" / CHECKPOINT_NAME
    _flip(latest)
    capsys.readouterr()
    assert main(["--resume", str(tmp_path / "part")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(latest) in err[0]
    assert f"--resume {previous_path(latest)}" in err[0]
    resumed = run(TrainConfig(resume=str(previous_path(latest)), stop_at=12, progress=False))
    assert resumed.step == 12 and resumed.losses == full.losses[8:]
    for name, t in full.net.state_dict().items():
        assert torch.equal(t, resumed.net.state_dict()[name]), name
