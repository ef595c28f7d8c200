"""A run's directory through the real commands (``training.run_directory``).

SIGTERM at an arbitrary step checkpoints that step and exits 143; resuming gives the uninterrupted run's
weights bit for bit (CPU, one thread). The command a stopped ``--auto-resume`` run suggests continues it.
``kill -9`` before the first checkpoint leaves no dead end. ``--auto-resume`` serves the first launch, a
relaunch after a kill, a finished run, and a damaged latest checkpoint. A directory held by a live run is
refused to a second one; two runs started in the same second get two directories; a run failing before its
first checkpoint leaves none.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _child_runs import FLAGS, REPO, assert_equal, finish, launch, logged_steps, signal_after, wait_for, weights
from _tiny_runs import TINY
from focusformer_fast import train
from focusformer_fast.training.runs import CHECKPOINT_NAME
from focusformer_fast.utils.checkpoints import load_checkpoint, previous_path

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final supernet weights of the run with :data:`FLAGS`, never stopped."""
    out = tmp_path_factory.mktemp("full") / "run"
    assert train.main([*FLAGS, "--output", str(out)]) == 0
    return weights(out)


def test_sigterm_checkpoints_the_step_and_resume_is_bit_exact(tmp_path, uninterrupted, capsys):
    out = tmp_path / "run"
    proc = launch([*FLAGS, "--checkpoint-every", "1000", "--output", str(out)], tmp_path)
    signal_after(proc, out, 3, signal.SIGTERM)
    rc, _, err = finish(proc)
    assert rc == 128 + signal.SIGTERM, err  # base code: killed at once, no checkpoint
    step = load_checkpoint(out / CHECKPOINT_NAME)["step"]
    assert 3 <= step < 30
    assert f"stopped by SIGTERM after step {step} of 30" in err
    assert f"continue with: python -m focusformer_fast.train --resume {out}" in err
    assert train.main(["--resume", str(out)]) == 0
    assert f"resuming {out} from step {step} of 30" in capsys.readouterr().err
    assert_equal(weights(out), uninterrupted)


def test_the_command_an_auto_resume_run_suggests_when_stopped_continues_it(tmp_path, uninterrupted):
    """Stopped under --auto-resume with flags of its own, a run suggests its own command line: a bare
    ``--auto-resume --output RUN`` would be refused as another command (its --steps, ...)."""
    out = tmp_path / "run"
    proc = launch([*FLAGS, "--auto-resume", "--checkpoint-every", "1000", "--output", str(out)], tmp_path)
    signal_after(proc, out, 3, signal.SIGTERM)
    rc, _, err = finish(proc)
    assert rc == 128 + signal.SIGTERM, err
    suggested = err.split("continue with: ")[1].splitlines()[0]
    assert suggested.startswith("python -m focusformer_fast.train ")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    again = subprocess.run([sys.executable, *shlex.split(suggested)[1:]], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert_equal(weights(out), uninterrupted)


def test_kill_9_before_the_first_checkpoint_is_no_dead_end(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY, "--steps", "40", "--checkpoint-every", "1000", "--output", str(out)]
    proc = launch(args, tmp_path)
    signal_after(proc, out, 2, signal.SIGKILL)
    proc.wait()
    assert not (out / CHECKPOINT_NAME).exists()
    assert train.main(["--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "has no checkpoint: it was stopped before its first one" in err  # base code: "does not exist"
    assert f"start it over with python -m focusformer_fast.train {' '.join(args)}" in err
    assert train.main(args) == 0  # base code: "already exists and is not empty"
    assert f"reclaiming {out}" in capsys.readouterr().err
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 40


def test_auto_resume_starts_continues_after_a_kill_and_ends_on_a_finished_run(tmp_path, uninterrupted, capsys):
    out = tmp_path / "run"
    args = [*FLAGS, "--checkpoint-every", "4", "--auto-resume", "--output", str(out)]
    proc = launch(args, tmp_path)  # base code: --auto-resume is not a flag
    signal_after(proc, out, 6, signal.SIGKILL, checkpointed=True)
    proc.wait()
    step = load_checkpoint(out / CHECKPOINT_NAME)["step"]
    assert step % 4 == 0 and step < 30
    assert train.main(args) == 0  # the same command line, relaunched
    assert f"resuming {out} from step {step} of 30" in capsys.readouterr().err
    assert_equal(weights(out), uninterrupted)
    done = (out / CHECKPOINT_NAME).stat().st_mtime_ns
    assert train.main(args) == 0
    assert f"run {out} is complete (step 30 of 30); nothing to do" in capsys.readouterr().err
    assert (out / CHECKPOINT_NAME).stat().st_mtime_ns == done
    assert train.main([*args, "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "--auto-resume: this command differs" in err and "--lr=0.01 (the run was started with 0.001)" in err


def test_auto_resume_continues_from_the_previous_checkpoint_when_the_latest_is_damaged(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY, "--steps", "12", "--checkpoint-every", "4", "--auto-resume", "--output", str(out)]
    assert train.main([*args, "--stop-at", "8"]) == 0
    latest = out / CHECKPOINT_NAME
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    capsys.readouterr()
    assert train.main(args) == 0
    err = capsys.readouterr().err
    assert f"continuing from the previous one, {previous_path(latest)} (step 4)" in err
    assert f"resuming {out} from step 4 of 12" in err
    aside = [p for p in out.iterdir() if p.name.startswith("checkpoint.set-aside-")]
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(data)  # the damaged file is kept, not overwritten
    assert load_checkpoint(latest)["step"] == 12


def test_a_second_process_cannot_run_a_held_directory(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY, "--steps", "400", "--checkpoint-every", "1000", "--output", str(out)]
    first = launch(args, tmp_path)
    wait_for(lambda: logged_steps(out) >= 1, first)
    try:
        assert train.main(args) == 2  # reclaiming it would clobber a live run before its first checkpoint
    finally:
        first.kill()
        first.wait()
    assert f"is in use by pid {first.pid} on" in capsys.readouterr().err


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
