"""What the training loops of ``train`` and ``finetune`` run inside (``training.run_loop``): a heap the
collector skips while the loop runs and collects after it; stop signals: SIGTERM or SIGINT to the whole
process group (DataLoader workers included) checkpoints the step, and SIGTERM to one torchrun rank stops
every rank after the same step, with a checkpoint."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import weakref

import pytest

from _child_runs import FLAGS, REPO, children_of, environ_of, finish, logged_steps, wait_for
from _tiny_runs import TINY
from focusformer_fast import train
from focusformer_fast.training.run_loop import AGREE_EVERY, frozen_heap
from focusformer_fast.training.runs import CHECKPOINT_NAME
from focusformer_fast.utils.checkpoints import load_checkpoint


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_objects_made_before_are_frozen_inside_and_collectable_after():
    made_before = [_Node() for _ in range(1000)]
    cycle = _Node()
    cycle.other = _Node()
    cycle.other.other = cycle  # collectable only by the cyclic collector
    alive = weakref.ref(cycle)
    del cycle
    with frozen_heap():
        assert gc.get_freeze_count() >= len(made_before)
        gc.collect()
        assert alive() is None  # garbage before the loop was collected before freezing
        late = _Node()
        late.other = _Node()
        late.other.other = late
        late_ref = weakref.ref(late)
        del late
        gc.collect()
        assert late_ref() is None  # the loop's own cycles are still collected
        frozen_cycle = made_before[0]
        frozen_cycle.other = made_before[1]
        made_before[1].other = frozen_cycle
        frozen_ref = weakref.ref(frozen_cycle)
        del frozen_cycle, made_before[:2]
        gc.collect()
        assert frozen_ref() is not None  # frozen: the collector does not scan it
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert frozen_ref() is None  # unfrozen after the loop: nothing leaks


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_with_loader_workers_checkpoints_the_step(tmp_path, signum, capsys):
    """SLURM (preemption, scancel) and Ctrl-C in a terminal signal every process of the job, the
    DataLoader workers too; the run still stops after its step with a checkpoint, and resumes."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "focusformer_fast.train", *FLAGS, "--num-workers", "2",
                             "--checkpoint-every", "1000", "--output", str(out)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: logged_steps(out) >= 3 and len(children_of(proc.pid)) >= 2, proc)
    os.killpg(proc.pid, signal.SIGSTOP)
    os.killpg(proc.pid, signum)
    os.killpg(proc.pid, signal.SIGCONT)
    rc, _, err = finish(proc)
    assert rc == 128 + signum, err  # SIGTERM on the base code: a worker killed by it, a traceback, exit 1
    step = load_checkpoint(out / CHECKPOINT_NAME)["step"]
    assert 3 <= step < 30 and f"stopped by {signal.Signals(signum).name} after step {step} of 30" in err
    assert train.main(["--resume", str(out)]) == 0
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 30


@pytest.mark.usefixtures("one_thread")
def test_sigterm_to_one_rank_then_torchrun_stops_every_rank_after_the_same_step_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
                             "focusformer_fast.train", *TINY, "--steps", "400", "--checkpoint-every", "1000",
                             "--device", "cpu", "--output", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_steps(out) >= 3, proc, timeout=300)
    ranks = {int(environ_of(pid)["RANK"]): pid for pid in children_of(proc.pid) if "RANK" in environ_of(pid)}
    os.kill(ranks[1], signal.SIGTERM)  # rank 1 first: rank 0 must stop with it, after the same step
    proc.send_signal(signal.SIGTERM)  # then torchrun, which forwards it: rank 1's repeat is the same request
    _, err = proc.communicate(timeout=300)
    assert "Received 15 death signal, shutting down workers" in err
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert 3 <= ckpt["step"] < 400 and ckpt["step"] % AGREE_EVERY == 0  # the ranks agree every AGREE_EVERY steps
    assert f"stopped by SIGTERM after step {ckpt['step']} of 400" in err
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
