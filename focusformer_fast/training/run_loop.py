"""What the training loops of ``train`` and ``finetune`` share: their batch stream, stop signals and progress.

* :class:`BatchStream`: training batches forever, resumable at any (epoch, batch) position, bit for
  bit (epochs reseeded through ``Loaders.set_epoch``).
* :class:`StopSignals`: SIGTERM (what SLURM, Kubernetes and spot instances send before they kill)
  and SIGINT (Ctrl-C) ask the loop to stop after the step it is in; every rank agrees on that step.
  The loop then checkpoints that step, says how to continue, and raises
  :class:`~focusformer_fast.utils.cli.Interrupted` (exit status 143 for SIGTERM, 130 for SIGINT).
* :class:`Progress`: a progress bar on a terminal, plain lines in a log.
* :func:`frozen_heap`: the objects made before the loop kept out of the garbage collector's scans.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from focusformer_fast.utils.distributed import Ranks

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 2.0
AGREE_EVERY = 10
"""Steps between the ranks' agreements on a stop (one all-reduce of one integer). Measured on 2 gloo ranks
(2 shared CPU cores, 2026-12-07, torch 2.14.1): 366 us per agreement (median of 7 x 1000), i.e. 3% of a
12 ms autoformer-t H100 step if made every step, 0.3% every 10 steps; a stop then comes at most 9 steps
(0.1-0.4 s) after the signal, well inside the 30 s SLURM and Kubernetes give before they kill."""


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Run the enclosed loop with every object made before it (modules, model, optimizer, loaders)
    frozen out of the cyclic garbage collector (``gc.freeze``), unfrozen after.

    With torch, timm and the package imported, a full collection scans about 420k objects: 200-220 ms
    on this project's 2-core CPU (2026-12-07, Python 3.11), a pause of the training thread (and of the
    sampler's learning thread, whichever triggered it) once every 100-odd steps, which cost 1.8 ms per
    40 ms step on average in the sampler's host-time benchmark. Frozen, a full collection scans only
    what the loop made (under 1 ms). DataLoader workers forked inside also copy fewer pages.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class BatchStream:
    """Training batches forever: the next one is batch ``batch`` of epoch ``epoch`` of ``loaders.train``.

    Built at a position, it replays that epoch's first ``batch`` batches at once (exact; it costs their
    loading), so RNG states restored afterwards continue where the checkpoint left them.
    """

    def __init__(self, loaders: Any, epoch: int = 0, batch: int = 0) -> None:
        self.loaders, self.epoch = loaders, epoch
        self._start(batch)

    def _start(self, skip: int) -> None:
        self.loaders.set_epoch(self.epoch)
        self._it: Iterator = iter(self.loaders.train)
        for _ in range(skip):
            next(self._it)
        self.batch = skip

    def next(self) -> tuple[Tensor, Tensor]:
        """The next ``(images, labels)`` batch, starting the next epoch when this one is done."""
        try:
            out = next(self._it)
        except StopIteration:
            self.epoch += 1
            self._start(0)
            out = next(self._it)
        self.batch += 1
        return out

    def position(self) -> dict[str, int]:
        """Where the stream is, for a checkpoint: ``{"epoch", "batch"}``."""
        return {"epoch": self.epoch, "batch": self.batch}


class StopSignals:
    """``with StopSignals(ranks) as stop:`` notes a SIGTERM or SIGINT instead of dying of it.

    :meth:`agreed`, called by every rank at each step boundary, returns the signal to stop for or
    None. Alone, a process stops after the step the signal came in; in a multi-process job the ranks
    agree every :data:`AGREE_EVERY` steps (the largest signal number any rank received: one all-reduce
    of one integer on the CPU, through a gloo group when the job's backend is another), so all stop
    after the same step. A signal repeated within
    :data:`REPEAT_WINDOW_S` is the same request (torchrun forwards the SIGTERM a scheduler also sent
    its workers; a terminal sends Ctrl-C to torchrun and its workers); one repeated later acts at once,
    as it would without this (Ctrl-C pressed again). Handlers are installed only in the main
    thread, never over an ignored signal, and restored on exit; worker processes forked inside (DataLoader workers) inherit them, so
    a signal sent to the whole process group does not kill the workers under the loop.
    """

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}
        self._group = None
        self._flag = torch.zeros(1, dtype=torch.int32)

    def __enter__(self) -> "StopSignals":
        if self.ranks.on and dist.get_backend() != "gloo":
            self._group = dist.new_group(backend="gloo")  # the flag is a CPU tensor: no device sync per step
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:  # e.g. SIGINT of a job a shell put in the background
                    self._previous[s] = signal.signal(s, self._note)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _note(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self._first_at = signum, time.monotonic()
        elif time.monotonic() - self._first_at > REPEAT_WINDOW_S:  # asked again: stop at once
            previous = self._previous.get(signum, signal.SIG_DFL)
            self.__exit__()
            if callable(previous):
                previous(signum, frame)  # SIGINT's default: KeyboardInterrupt
            else:
                os.kill(os.getpid(), signum)

    def agreed(self, step: int) -> int | None:
        """The signal every rank stops for after global step ``step``, or None to go on. Call on every rank."""
        if not self.ranks.on:
            return self.signum
        if step % AGREE_EVERY:
            return None
        self._flag.fill_(self.signum or 0)
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(self._flag.item()) or None


def stopped_note(signum: int, step: int, steps: int, prog: str, out: Path, command: str | None,
                 auto_resume: bool) -> str:
    """What a loop stopped by ``signum`` says on stderr: where it stopped and the command that continues:
    under ``--auto-resume`` this invocation's own ``command`` (a relaunch must repeat its flags), else
    ``prog --resume out``."""
    again = command if auto_resume and command else f"{prog} --resume {out}"
    return (f"stopped by {signal.Signals(signum).name} after step {step} of {steps}, checkpoint written; "
            f"continue with: {again}")


class Progress:
    """What the user sees of a loop on rank 0: a tqdm bar, or plain ``step k/N  name value ...`` lines.

    ``show``: True a bar, False plain lines, None a bar on a terminal and plain lines otherwise (a log
    file, CI). Plain lines come at about every tenth of the run (and never more often than
    ``every``) and at the last step.
    """

    def __init__(self, show: bool | None, *, active: bool, total: int, initial: int, stop: int, desc: str,
                 every: int) -> None:
        self.active, self.total, self.stop = active, total, stop
        self.every = max(every, total // 10, 1)
        self._bar = None
        if active and (sys.stderr.isatty() if show is None else show):
            from tqdm import tqdm

            self._bar = tqdm(total=stop, initial=initial, desc=desc, unit="step", dynamic_ncols=True, mininterval=0.5)

    def advance(self) -> None:
        """One step done."""
        if self._bar is not None:
            self._bar.update(1)

    def report(self, step: int, fields: dict[str, str]) -> None:
        """The latest figures: the bar's postfix, or a plain line when ``step`` is due for one."""
        if not self.active:
            return
        if self._bar is not None:
            self._bar.set_postfix(fields, refresh=False)
        elif step % self.every == 0 or step == self.stop:
            line = "  ".join(f"{k} {v}" for k, v in fields.items())
            print(f"step {step}/{self.total}  {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
