"""Process groups under torchrun (``utils.distributed``): DDP's unused-parameter warning is printed at most
once by two ranks, and after ``kill -9`` of one worker, ``--max-restarts`` restarts the workers into a fresh
group and the run continues to its end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from _child_runs import REPO, children_of, environ_of, logged_steps, wait_for
from _tiny_runs import TINY
from focusformer_fast.training.runs import CHECKPOINT_NAME
from focusformer_fast.utils.checkpoints import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_two_rank_torchrun_prints_the_ddp_unused_parameter_warning_at_most_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
                           "focusformer_fast.train", "--steps", "6", "--batch-size", "64", "--specialize-n", "2",
                           "--num-budgets", "2", "--device", "cpu", "--output", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=600, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (proc.stdout + proc.stderr).count("did not find any unused parameters") <= 1


def test_torchrun_max_restarts_after_kill_9_of_one_worker_continues_the_run(tmp_path):
    """torchrun keeps its store across restarts; the restarted workers must not read the dead ones' keys
    (without an attempt prefix, 6 of 8 such restarts failed or hung in init_process_group)."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "--max-restarts", "1", "-m", "focusformer_fast.train", *TINY, "--steps", "60",
                             "--checkpoint-every", "10", "--device", "cpu", "--auto-resume", "--output", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_steps(out) >= 15, proc, timeout=300)
    ranks = {int(environ_of(pid)["RANK"]): pid for pid in children_of(proc.pid) if "RANK" in environ_of(pid)}
    os.kill(ranks[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming" in err and load_checkpoint(out / CHECKPOINT_NAME)["step"] == 60
