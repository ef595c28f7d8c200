"""The directory of a run, shared by ``train`` and ``finetune``: claiming it, holding it, continuing it, its record.

A run directory holds (the command adds its results):

  ``run.json``        config, seed, versions, device, world size, the command line and the flags the
                      run was started with, and every resume
  ``metrics.jsonl``   one record per logged step
  ``checkpoint.pt``   everything needed to continue bit for bit on CPU (atomic, checksummed;
                      ``checkpoint.prev.pt`` is the one before it)
  ``run.lock``        locked (``flock``) by the process running the run, for as long as it runs: the
                      kernel drops the lock however the process ends, ``kill -9`` included

Every way into a directory is one command:

* a new run creates its directory, takes an empty one, or reclaims one that a killed run left before
  its first checkpoint (run files only, no checkpoint, nobody holding the lock): :func:`claim`;
* ``--resume DIR`` continues from ``DIR/checkpoint.pt``; a directory without one is answered with the
  command that starts it over (:func:`resume_checkpoint`);
* ``--auto-resume --output DIR`` does whichever applies, from the last checkpoint that reads back
  (``checkpoint.prev.pt`` when the newest is damaged): :func:`last_good_checkpoint`.

A directory holding other files, or held by a live process, is refused in one line. A newer
checkpoint than the one a run continues from is never overwritten: :func:`hold` keeps it aside as
``checkpoint.set-aside-<time>.pt``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shlex
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from focusformer_fast.utils.atomic_files import atomic_write, write_json_atomic
from focusformer_fast.utils.checkpoints import previous_path
from focusformer_fast.utils.cli import UsageError, say
from focusformer_fast.utils.distributed import Ranks

CHECKPOINT_NAME = "checkpoint.pt"
RUN_INFO = "run.json"
METRICS = "metrics.jsonl"
LOCK_NAME = "run.lock"
RUN_FILES = frozenset({RUN_INFO, METRICS, LOCK_NAME, "bad_images.txt"})
"""What a run writes before its first checkpoint (besides temporary files of atomic writes)."""


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or (name.startswith(".") and name.endswith(".tmp"))


def has_checkpoint(out: Path) -> bool:
    """Whether ``out`` holds ``checkpoint.pt`` or ``checkpoint.prev.pt``."""
    latest = out / CHECKPOINT_NAME
    return latest.is_file() or previous_path(latest).is_file()


def directory_state(out: Path) -> str:
    """``new`` (missing or empty), ``abandoned`` (run files only: a run stopped before its first
    checkpoint, or running before it), ``checkpointed`` or ``foreign`` (other files, or not a directory)."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        return "foreign"
    if has_checkpoint(out):
        return "checkpointed"
    names = [p.name for p in out.iterdir()]
    if not names:
        return "new"
    return "abandoned" if all(_is_run_file(n) for n in names) else "foreign"


def check_new_output(out: Path, command: str) -> None:
    """Refuse (:class:`UsageError`, nothing written) an ``--output`` a new run cannot take."""
    state = directory_state(out)
    if state == "checkpointed":
        raise UsageError(f"--output {str(out)!r} holds a run with a checkpoint; continue it with {command} --resume "
                         f"{out} (or this command with --auto-resume), or give another --output")
    if state == "foreign":
        raise UsageError(f"--output {str(out)!r} already exists and is not empty; give another --output")


class RunLock:
    """An exclusive ``flock`` on ``DIR/run.lock`` while this process runs the run in ``DIR``."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock, or raise :class:`UsageError` naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UsageError(f"run directory {str(self.path.parent)!r} is in use by {holder}; wait for it to "
                             f"end, or give another --output") from None
        except OSError as exc:  # a file system without locks (some network mounts): run unguarded
            say("warning", f"cannot lock {self.path} ({exc.strerror}); nothing stops a second process from "
                           f"running the same run directory")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def claim(out: Path, *, default_name: bool) -> tuple[Path, RunLock]:
    """Create or take a new run's directory, and hold it.

    Under a default name, two runs started in the same second get ``out``, ``out-2``, ... An
    ``--output`` directory is taken when it is empty, or reclaimed (its run files removed, with a
    note) when a run stopped before its first checkpoint left it and no process holds it.
    """
    if not default_name:
        out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out).acquire()
        if directory_state(out) in ("new", "abandoned"):
            left = sorted(p for p in out.iterdir() if p.name != LOCK_NAME)
            for p in left:
                p.unlink()
            if left:
                say("note", f"reclaiming {out}: a run stopped before its first checkpoint left "
                            f"{', '.join(p.name for p in left)} there")
            return out, lock
        lock.release()
        raise UsageError(f"--output {str(out)!r} was just taken by another run; give another --output")
    for k in range(1, 1000):
        path = out if k == 1 else out.with_name(f"{out.name}-{k}")
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        return path, RunLock(path).acquire()
    raise UsageError(f"could not create a run directory next to {str(out)!r}; give --output")


def hold(out: Path, continuing_from: Path) -> RunLock:
    """Hold the run in ``out`` to continue it from ``continuing_from``; a newer ``checkpoint.pt`` is set aside."""
    lock = RunLock(out).acquire()
    latest = out / CHECKPOINT_NAME
    if continuing_from.resolve() != latest.resolve() and latest.is_file():
        aside = latest.with_name(f"checkpoint.set-aside-{time.strftime('%Y%m%d-%H%M%S')}.pt")
        latest.rename(aside)
        say("note", f"continuing from {continuing_from.name}: kept {latest.name} aside as {aside.name}")
    return lock


def remove_unfinished(out: Path) -> None:
    """Remove a new run's directory when it fails before its first checkpoint, so a rerun is not blocked."""
    if out.is_dir() and not has_checkpoint(out):
        shutil.rmtree(out, ignore_errors=True)


def command_line(command: str, argv: Sequence[str] | None) -> str | None:
    """``python -m focusformer_fast.<command> ARGS`` as a shell would take it; None without ``argv``."""
    return None if argv is None else " ".join(["python -m", f"focusformer_fast.{command}", shlex.join(argv)]).strip()


def resume_checkpoint(resume: str | os.PathLike) -> Path:
    """The checkpoint ``--resume`` names: a file, or ``checkpoint.pt`` in a run directory.

    A directory a run left before its first checkpoint is answered with the command that starts it over.
    """
    p = Path(resume)
    if p.is_dir():
        if directory_state(p) == "abandoned":
            started = _read_info(p).get("command") or "the command that started it (see its run.json)"
            raise UsageError(f"run {str(p)!r} has no checkpoint: it was stopped before its first one; start it over "
                             f"with {started}; rerunning it reclaims the directory (or add --auto-resume)")
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise UsageError(f"checkpoint {str(p)!r} does not exist")
    return p


@dataclass(frozen=True)
class Continuation:
    """The checkpoint a run continues from and what it holds."""

    checkpoint: Path
    payload: dict[str, Any]


def last_good_checkpoint(out: Path, read: Callable[[Path], dict[str, Any]]) -> Continuation | None:
    """The newest checkpoint in ``out`` that ``read`` accepts (``checkpoint.pt``, else ``checkpoint.prev.pt``
    with a warning); None when ``out`` has none. ``read`` raises :class:`UsageError` for a bad file."""
    if not has_checkpoint(out):
        return None
    latest = out / CHECKPOINT_NAME
    prev = previous_path(latest)
    try:
        return Continuation(latest, read(latest))
    except UsageError as exc:
        if not prev.is_file():
            raise
        problem = str(exc).split(";")[0]
    payload = read(prev)
    say("warning", f"{problem}; continuing from the previous one, {prev} (step {payload.get('step')})")
    return Continuation(prev, payload)


# -- run.json and metrics.jsonl -----------------------------------------------------------------
def _read_info(out: Path) -> dict[str, Any]:
    try:
        info = json.loads((out / RUN_INFO).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def record_start(out: Path, info: dict[str, Any]) -> None:
    """Write ``run.json`` of a new run: ``info`` (config, seed, versions, ...) with its start time."""
    write_json_atomic(out / RUN_INFO, {**info, "started": _now(), "resumes": []})


def record_resume(out: Path, step: int, entry: dict[str, Any], config: dict[str, Any]) -> None:
    """Append a resume at ``step`` to ``run.json`` (its config becomes ``config``) and drop metrics past ``step``."""
    info = _read_info(out)
    info["config"] = config
    info.setdefault("resumes", []).append({"step": step, "time": _now(), **entry})
    write_json_atomic(out / RUN_INFO, info)
    metrics = out / METRICS
    if metrics.is_file():
        keep = [ln for ln in metrics.read_text().splitlines() if _record_step(ln) <= step]
        atomic_write(metrics, lambda f: f.write("".join(ln + "\n" for ln in keep).encode()))


def _record_step(line: str) -> float:
    """Step of a metrics line; infinity for a torn or foreign line (dropped on resume)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """``metrics.jsonl``, appended one record (a JSON line, flushed) at a time; inactive on ranks > 0."""

    def __init__(self, out: Path, active: bool) -> None:
        self._file = open(out / METRICS, "a") if active else None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


@contextlib.contextmanager
def taken(out: Path, ranks: Ranks, *, new: bool, default_name: bool, continuing_from: Path | None) -> Iterator[Path]:
    """The run directory for the life of the run, once every rank has checked it: rank 0 claims a new one
    (:func:`claim`) or holds a continued one (:func:`hold`), every rank gets its name or raises rank 0's
    :class:`UsageError`. A new run that ends in an exception (a SIGTERM's :class:`Interrupted` too) before
    its first checkpoint leaves no directory; rank 0's lock is released at the end."""
    if ranks.on:
        dist.barrier()
    lock, shared = None, [str(out), None]
    if ranks.rank == 0:
        try:
            if new:
                out, lock = claim(out, default_name=default_name)
            else:
                lock = hold(out, continuing_from)
            shared = [str(out), None]
        except UsageError as exc:
            if not ranks.on:
                raise
            shared = [None, str(exc)]
    if ranks.on:
        dist.broadcast_object_list(shared, 0)
        if shared[0] is None:
            raise UsageError(shared[1])
    out = Path(shared[0])
    try:
        yield out
    except BaseException:
        if new and ranks.rank == 0:
            remove_unfinished(out)
        raise
    finally:
        if lock is not None:
            lock.release()
