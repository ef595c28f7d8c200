"""Commands run in child processes and signalled mid-run, and the run directories they leave: the helpers
of the tests that stop, kill and relaunch ``train`` and ``finetune`` (and the flags of a train run that
uses every source of randomness)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from focusformer_fast.training.runs import CHECKPOINT_NAME
from focusformer_fast.utils.checkpoints import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
# 30 steps of 32 images with every source of randomness on (augmentation, mixup, drop path, the sampler)
FLAGS = ["--steps", "30", "--batch-size", "32", "--reward-batch-size", "64", "--specialize-n", "2", "--log-every", "1",
         "--sampler-warmup", "2", "--update-every", "2", "--epsilon", "0.3", "--num-budgets", "2", "--augment", "basic",
         "--mixup", "0.2", "--drop-path", "0.1", "--threads", "1", "--no-progress"]


def launch(args: list[str], cwd: Path, command: str = "train") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", f"focusformer_fast.{command}", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def logged_steps(out: Path) -> int:
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def signal_after(proc: subprocess.Popen, out: Path, steps: int, signum: int, checkpointed: bool = False) -> None:
    """Send ``signum`` once ``out`` logged ``steps`` steps (and has a checkpoint, if ``checkpointed``): the
    process is frozen (SIGSTOP) while it is sent, so it lands a few steps later, however fast the steps are."""
    wait_for(lambda: logged_steps(out) >= steps and (out / CHECKPOINT_NAME).is_file() >= checkpointed, proc)
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)


def children_of(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def environ_of(pid: int) -> dict[str, str]:
    pairs = (kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
    return dict(pairs)


def weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    return ckpt.get("supernet", ckpt.get("model"))


def assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def finish(proc: subprocess.Popen, timeout: float = 300.0) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err
