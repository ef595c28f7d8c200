"""A new user's runs through ``python -m focusformer_fast.train``/``search``: resume rules, run
directories, stored paths (issue 12, items 1, 3, 6, 7)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from _newcomer import TINY, digit_pngs, metrics, run_info
from focusformer_fast import search, train
from focusformer_fast.utils.checkpoints import load_checkpoint, save_checkpoint
from focusformer_fast.training.runs import CHECKPOINT_NAME, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _cosine(step: int, total: int, lr: float = 1e-3, min_lr: float = 1e-5) -> float:
    """The LR after ``step`` updates of a cosine schedule over ``total`` steps without warm-up."""
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * step / total))


def test_stop_at_binds_one_invocation_and_steps_extends_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([*TINY, "--stop-at", "4", "--output", str(out)]) == 0
    assert read_checkpoint(out / CHECKPOINT_NAME)["step"] == 4
    assert train.main(["--resume", str(out)]) == 0  # base code: stops again at step 4
    assert read_checkpoint(out / CHECKPOINT_NAME)["step"] == 8 and (out / "results.json").is_file()
    capsys.readouterr()
    assert train.main(["--resume", str(out)]) == 2  # nothing left to do: said, not a silent new record
    assert "is complete (step 8 of 8)" in capsys.readouterr().err
    assert [r["step"] for r in run_info(out)["resumes"]] == [4]
    table = (out / "results.json").read_text()
    (out / "results.json").unlink()  # as if killed while making the final table
    assert train.main(["--resume", str(out)]) == 0 and (out / "results.json").read_text() == table
    capsys.readouterr()

    assert train.main(["--resume", str(out), "--steps", "12"]) == 0
    info = run_info(out)
    assert read_checkpoint(out / CHECKPOINT_NAME)["step"] == 12
    assert info["resumes"][-1]["steps"] == {"from": 8, "to": 12} and info["config"]["steps"] == 12
    lrs = {m["step"]: m["lr"] for m in metrics(out)}
    assert [lrs[k] for k in range(1, 9)] == pytest.approx([_cosine(k, 8) for k in range(1, 9)], rel=1e-9)
    assert [lrs[k] for k in range(9, 13)] == pytest.approx([_cosine(k, 12) for k in range(9, 13)], rel=1e-9)
    assert train.main(["--resume", str(out), "--steps", "10"]) == 2
    assert "--steps=10 cannot shorten the run" in capsys.readouterr().err


def test_two_runs_started_in_the_same_second_get_two_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, "_default_output", lambda cfg: Path("runs") / "same-second")
    assert train.main(TINY) == 0
    assert train.main(TINY) == 0  # base code: "already exists and is not empty"
    assert (tmp_path / "runs" / "same-second" / CHECKPOINT_NAME).is_file()
    assert (tmp_path / "runs" / "same-second-2" / CHECKPOINT_NAME).is_file()


def test_a_run_failing_before_its_first_checkpoint_leaves_no_directory(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError):  # an absurd learning rate: the loss is not finite within 8 steps
        train.main([*TINY, "--lr", "1e30", "--output", str(out)])
    assert not out.exists()
    assert train.main([*TINY, "--output", str(out)]) == 0  # the rerun is not blocked


def test_run_stores_resolved_paths_and_search_data_finds_a_moved_dataset(tmp_path, monkeypatch, capsys):
    digit_pngs(tmp_path / "work" / "imgs", per_class=20)
    monkeypatch.chdir(tmp_path / "work")
    assert train.main([*TINY, "--batch-size", "16", "--data", "imgs", "--output", "run"]) == 0
    cfg = run_info(tmp_path / "work" / "run")["config"]
    assert cfg["data"] == str(tmp_path / "work" / "imgs") and cfg["output"] == str(tmp_path / "work" / "run")

    monkeypatch.chdir(tmp_path)  # another directory: the stored path still names the data
    assert search.main(["work/run", "--device", "cpu"]) == 0
    shutil.move(tmp_path / "work" / "imgs", tmp_path / "moved")
    capsys.readouterr()
    assert search.main(["work/run", "--device", "cpu"]) == 2
    assert "give its new place with --data" in capsys.readouterr().err
    assert search.main(["work/run", "--device", "cpu", "--data", "moved"]) == 0


def test_a_checkpoint_from_before_the_newest_fields_still_resumes(tmp_path):
    out = tmp_path / "run"
    assert train.main([*TINY, "--stop-at", "4", "--output", str(out)]) == 0
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    for name in ("eval_every", "check_data", "strict_latency"):  # fields this change added
        del ckpt["config"][name]
    save_checkpoint(out / CHECKPOINT_NAME, ckpt)
    assert train.main(["--resume", str(out)]) == 0
    assert read_checkpoint(out / CHECKPOINT_NAME)["step"] == 8
