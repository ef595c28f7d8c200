"""Runs that survive what clusters do to them (issue 19, items 1-3), through the real commands.

SIGTERM at an arbitrary step checkpoints that step and exits 143; resuming gives the uninterrupted
run's weights bit for bit (CPU, one thread). ``kill -9`` before the first checkpoint leaves no dead
end. ``--auto-resume`` serves the first launch, a relaunch after a kill, and a finished run.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _newcomer import TINY
from focusformer_fast import train
from focusformer_fast.utils.checkpoints import load_checkpoint, previous_path
from focusformer_fast.training.run_loop import AGREE_EVERY
from focusformer_fast.training.runs import CHECKPOINT_NAME

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
# 30 steps of 32 images with every source of randomness on (augmentation, mixup, drop path, the sampler)
FLAGS = ["--steps", "30", "--batch-size", "32", "--reward-batch-size", "64", "--specialize-n", "2", "--log-every", "1",
         "--sampler-warmup", "2", "--update-every", "2", "--epsilon", "0.3", "--num-budgets", "2", "--augment", "basic",
         "--mixup", "0.2", "--drop-path", "0.1", "--threads", "1", "--no-progress"]


def _launch(args: list[str], cwd: Path, command: str = "train") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", f"focusformer_fast.{command}", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_steps(out: Path) -> int:
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _signal_after(proc: subprocess.Popen, out: Path, steps: int, signum: int, checkpointed: bool = False) -> None:
    """Send ``signum`` once ``out`` logged ``steps`` steps (and has a checkpoint, if ``checkpointed``): the
    process is frozen (SIGSTOP) while it is sent, so it lands a few steps later, however fast the steps are."""
    _wait_for(lambda: _logged_steps(out) >= steps and (out / CHECKPOINT_NAME).is_file() >= checkpointed, proc)
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _environ(pid: int) -> dict[str, str]:
    pairs = (kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
    return dict(pairs)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    return ckpt.get("supernet", ckpt.get("model"))


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _finish(proc: subprocess.Popen, timeout: float = 300.0) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final supernet weights of the run with :data:`FLAGS`, never stopped."""
    out = tmp_path_factory.mktemp("full") / "run"
    assert train.main([*FLAGS, "--output", str(out)]) == 0
    return _weights(out)


def test_sigterm_checkpoints_the_step_and_resume_is_bit_exact(tmp_path, uninterrupted, capsys):
    out = tmp_path / "run"
    proc = _launch([*FLAGS, "--checkpoint-every", "1000", "--output", str(out)], tmp_path)
    _signal_after(proc, out, 3, signal.SIGTERM)
    rc, _, err = _finish(proc)
    assert rc == 128 + signal.SIGTERM, err  # base code: killed at once, no checkpoint
    step = load_checkpoint(out / CHECKPOINT_NAME)["step"]
    assert 3 <= step < 30
    assert f"stopped by SIGTERM after step {step} of 30" in err
    assert f"continue with: python -m focusformer_fast.train --resume {out}" in err
    assert train.main(["--resume", str(out)]) == 0
    assert f"resuming {out} from step {step} of 30" in capsys.readouterr().err
    _assert_equal(_weights(out), uninterrupted)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_with_loader_workers_checkpoints_the_step(tmp_path, signum, capsys):
    """SLURM (preemption, scancel) and Ctrl-C in a terminal signal every process of the job, the
    DataLoader workers too; the run still stops after its step with a checkpoint, and resumes."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "focusformer_fast.train", *FLAGS, "--num-workers", "2",
                             "--checkpoint-every", "1000", "--output", str(out)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for(lambda: _logged_steps(out) >= 3 and len(_children(proc.pid)) >= 2, proc)
    os.killpg(proc.pid, signal.SIGSTOP)
    os.killpg(proc.pid, signum)
    os.killpg(proc.pid, signal.SIGCONT)
    rc, _, err = _finish(proc)
    assert rc == 128 + signum, err  # SIGTERM on the base code: a worker killed by it, a traceback, exit 1
    step = load_checkpoint(out / CHECKPOINT_NAME)["step"]
    assert 3 <= step < 30 and f"stopped by {signal.Signals(signum).name} after step {step} of 30" in err
    assert train.main(["--resume", str(out)]) == 0
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 30


def test_the_command_an_auto_resume_run_suggests_when_stopped_continues_it(tmp_path, uninterrupted):
    """Stopped under --auto-resume with flags of its own, a run suggests its own command line: a bare
    ``--auto-resume --output RUN`` would be refused as another command (its --steps, ...)."""
    out = tmp_path / "run"
    proc = _launch([*FLAGS, "--auto-resume", "--checkpoint-every", "1000", "--output", str(out)], tmp_path)
    _signal_after(proc, out, 3, signal.SIGTERM)
    rc, _, err = _finish(proc)
    assert rc == 128 + signal.SIGTERM, err
    suggested = err.split("continue with: ")[1].splitlines()[0]
    assert suggested.startswith("python -m focusformer_fast.train ")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    again = subprocess.run([sys.executable, *shlex.split(suggested)[1:]], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    _assert_equal(_weights(out), uninterrupted)


def test_kill_9_before_the_first_checkpoint_is_no_dead_end(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY, "--steps", "40", "--checkpoint-every", "1000", "--output", str(out)]
    proc = _launch(args, tmp_path)
    _signal_after(proc, out, 2, signal.SIGKILL)
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
    proc = _launch(args, tmp_path)  # base code: --auto-resume is not a flag
    _signal_after(proc, out, 6, signal.SIGKILL, checkpointed=True)
    proc.wait()
    step = load_checkpoint(out / CHECKPOINT_NAME)["step"]
    assert step % 4 == 0 and step < 30
    assert train.main(args) == 0  # the same command line, relaunched
    assert f"resuming {out} from step {step} of 30" in capsys.readouterr().err
    _assert_equal(_weights(out), uninterrupted)
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
    first = _launch(args, tmp_path)
    _wait_for(lambda: _logged_steps(out) >= 1, first)
    try:
        assert train.main(args) == 2  # reclaiming it would clobber a live run before its first checkpoint
    finally:
        first.kill()
        first.wait()
    assert f"is in use by pid {first.pid} on" in capsys.readouterr().err


def test_sigterm_to_one_rank_then_torchrun_stops_every_rank_after_the_same_step_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
                             "focusformer_fast.train", *TINY, "--steps", "400", "--checkpoint-every", "1000",
                             "--device", "cpu", "--output", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _logged_steps(out) >= 3, proc, timeout=300)
    ranks = {int(_environ(pid)["RANK"]): pid for pid in _children(proc.pid) if "RANK" in _environ(pid)}
    os.kill(ranks[1], signal.SIGTERM)  # rank 1 first: rank 0 must stop with it, after the same step
    proc.send_signal(signal.SIGTERM)  # then torchrun, which forwards it: rank 1's repeat is the same request
    _, err = proc.communicate(timeout=300)
    assert "Received 15 death signal, shutting down workers" in err
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert 3 <= ckpt["step"] < 400 and ckpt["step"] % AGREE_EVERY == 0  # the ranks agree every AGREE_EVERY steps
    assert f"stopped by SIGTERM after step {ckpt['step']} of 400" in err
    assert json.loads((out / "run.json").read_text())["world_size"] == 2


# -- finetune: the same run layer ------------------------------------------------------------------
FT_FLAGS = ["--steps", "60", "--batch-size", "32", "--mixup", "0.3", "--reprob", "0.25", "--drop-path", "0.1",
            "--ema-decay", "0.9", "--log-every", "1", "--checkpoint-every", "1000", "--no-progress"]


@pytest.fixture(scope="module")
def subnet(tmp_path_factory) -> Path:
    """A subnet exported from a 10-step supernet run."""
    root = tmp_path_factory.mktemp("subnet")
    assert train.main([*TINY, "--steps", "10", "--output", str(root / "run")]) == 0
    from focusformer_fast import search

    assert search.main([str(root / "run"), "--budget", "3M", "--export", str(root / "models")]) == 0
    return root / "models" / "budget-3M"


def test_finetune_sigterm_then_resume_equals_the_uninterrupted_run(tmp_path, subnet, capsys):
    from focusformer_fast import finetune

    assert finetune.main([str(subnet), *FT_FLAGS, "--output", str(tmp_path / "full")]) == 0
    out = tmp_path / "part"
    proc = _launch([str(subnet), *FT_FLAGS, "--output", str(out)], tmp_path, command="finetune")
    _signal_after(proc, out, 3, signal.SIGINT)
    rc, _, err = _finish(proc)
    assert rc == 128 + signal.SIGINT, err  # base code: KeyboardInterrupt, no checkpoint
    step = load_checkpoint(out / CHECKPOINT_NAME)["step"]
    assert 3 <= step < 60 and f"stopped by SIGINT after step {step} of 60" in err
    capsys.readouterr()
    assert finetune.main(["--resume", str(out)]) == 0
    for key in ("model", "ema"):
        _assert_equal(load_checkpoint(out / CHECKPOINT_NAME)[key], load_checkpoint(tmp_path / "full" / CHECKPOINT_NAME)[key])
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()


def test_finetune_stopped_under_auto_resume_continues_with_the_command_it_suggests(tmp_path, subnet, capsys):
    from focusformer_fast import finetune

    assert finetune.main([str(subnet), *FT_FLAGS, "--output", str(tmp_path / "full")]) == 0
    out = tmp_path / "part"
    proc = _launch([str(subnet), *FT_FLAGS, "--auto-resume", "--output", str(out)], tmp_path, command="finetune")
    _signal_after(proc, out, 3, signal.SIGTERM)
    rc, _, err = _finish(proc)
    assert rc == 128 + signal.SIGTERM, err
    suggested = shlex.split(err.split("continue with: ")[1].splitlines()[0])
    assert suggested[:3] == ["python", "-m", "focusformer_fast.finetune"]
    capsys.readouterr()
    assert finetune.main(suggested[3:]) == 0  # before: TypeError (resume given twice)
    for key in ("model", "ema"):
        _assert_equal(load_checkpoint(out / CHECKPOINT_NAME)[key], load_checkpoint(tmp_path / "full" / CHECKPOINT_NAME)[key])


def test_finetune_kill_9_before_the_first_checkpoint_then_the_same_command_goes_on(tmp_path, subnet, capsys):
    from focusformer_fast import finetune

    out = tmp_path / "ft"
    args = [str(subnet), *FT_FLAGS, "--output", str(out)]
    proc = _launch(args, tmp_path, command="finetune")
    _signal_after(proc, out, 2, signal.SIGKILL)
    proc.wait()
    assert not (out / CHECKPOINT_NAME).exists()
    assert finetune.main(args) == 0  # base code: "already exists and is not empty"
    assert f"reclaiming {out}" in capsys.readouterr().err
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 60 and (out / "export" / "config.json").is_file()


def test_finetune_resumes_a_checkpoint_from_before_the_shared_recipe_fields(tmp_path, subnet, capsys):
    from focusformer_fast import finetune
    from focusformer_fast.utils.checkpoints import save_checkpoint

    out = tmp_path / "ft"
    assert finetune.main([str(subnet), "--steps", "6", "--stop-at", "3", "--warmup-steps", "2", "--no-progress",
                          "--output", str(out)]) == 0
    assert "warning: --warmup-steps is deprecated; use --lr-warmup-steps" in capsys.readouterr().err
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    config = ckpt["config"]  # as today's main wrote it: warmup_steps, no clip_grad / auto_resume, no launch
    config["warmup_steps"] = config.pop("lr_warmup_steps")
    for name in ("clip_grad", "auto_resume"):
        del config[name]
    del ckpt["launch"]
    save_checkpoint(out / CHECKPOINT_NAME, ckpt)
    assert finetune.main(["--resume", str(out)]) == 0
    done = load_checkpoint(out / CHECKPOINT_NAME)
    assert done["step"] == 6 and done["config"]["lr_warmup_steps"] == 2


def test_torchrun_max_restarts_after_kill_9_of_one_worker_continues_the_run(tmp_path):
    """torchrun keeps its store across restarts; the restarted workers must not read the dead ones' keys
    (without an attempt prefix, 6 of 8 such restarts failed or hung in init_process_group)."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "--max-restarts", "1", "-m", "focusformer_fast.train", *TINY, "--steps", "60",
                             "--checkpoint-every", "10", "--device", "cpu", "--auto-resume", "--output", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _logged_steps(out) >= 15, proc, timeout=300)
    ranks = {int(_environ(pid)["RANK"]): pid for pid in _children(proc.pid) if "RANK" in _environ(pid)}
    os.kill(ranks[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming" in err and load_checkpoint(out / CHECKPOINT_NAME)["step"] == 60
