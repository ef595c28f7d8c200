"""The settings of a run that are not what it computes: where it lives, how it continues, how it reports.

:class:`RunOptions` is declared once (names, checks, help) and shared by the configs and flags of
``train`` and ``finetune``, as :class:`~focusformer_fast.training.recipe.RecipeOptions` is for the recipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _option(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class RunOptions:
    """Where a run lives and how it is continued, logged and shown; each field is also a flag."""

    output: str | None = _option(None, "run directory (default: runs/<time>-<what>-s<seed>); rerunning the same "
                                       "command reclaims one a kill left before its first checkpoint")
    resume: str | None = _option(None, "a run directory or checkpoint file to continue (default: none, a new run)")
    auto_resume: bool = _option(False, "with --output DIR: start DIR if it has no checkpoint, else continue it "
                                       "from its last good checkpoint; a finished run exits 0. The same command "
                                       "line then serves every relaunch (SLURM --requeue, torchrun --max-restarts)")
    stop_at: int | None = _option(None, "stop with a checkpoint after this global step (this invocation only; "
                                        "default: none)")
    seed: int = _option(0, "seed of everything random in the run")
    device: str | None = _option(None, "cpu, cuda or cuda:N (default: cuda if available)")
    threads: int | None = _option(None, "torch intra-op threads (default: on CPU 1 for digits-sized models, widths "
                                        "up to 64, else torch's)")
    log_every: int = _option(10, "steps between metrics.jsonl records")
    checkpoint_every: int = _option(500, "steps between checkpoints (SIGTERM/SIGINT also checkpoint the step "
                                         "they stop after)")
    progress: bool | None = _option(None, "a progress bar (default: on a terminal; otherwise plain log lines)")

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field out of range."""
        for name in ("stop_at", "threads", "log_every", "checkpoint_every"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name}={v!r} must be > 0")
        if self.device not in (None, "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device={self.device!r} is not allowed; allowed: cpu, cuda, cuda:N")
        if self.auto_resume and not self.output:
            raise ValueError("--auto-resume needs --output DIR: the directory every relaunch continues")

    @classmethod
    def of(cls, obj: Any) -> "RunOptions":
        """The run options held by ``obj`` (a command's config)."""
        return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})


def check_given(given: dict[str, Any]) -> None:
    """Raise ``ValueError`` for run flags given together that exclude each other (``given``: the flags set)."""
    if given.get("auto_resume") and given.get("resume"):
        raise ValueError(f"--auto-resume and --resume {given['resume']}: give one (--auto-resume continues "
                         f"--output when it has a checkpoint)")


def run_field(name: str, default: Any) -> Any:
    """The :class:`RunOptions` field ``name`` with another default."""
    return dataclasses.field(default=default, metadata=RunOptions.__dataclass_fields__[name].metadata)


def launch_record(cfg: Any, resolve: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """The fields a new run was started with: those of ``cfg`` (a command's config dataclass) off their
    defaults, paths made absolute by ``resolve``; ``--auto-resume`` compares a relaunch with it."""
    defaults = dataclasses.asdict(type(cfg)())
    return resolve({k: v for k, v in dataclasses.asdict(cfg).items() if v != defaults[k]})


def continued_config(saved: Any, given: dict[str, Any], free: tuple[str, ...], **changes: Any) -> Any:
    """``saved`` (the checkpoint's config) as this invocation continues it: each ``free`` field takes
    ``given``'s value or its default, never the checkpoint's (an earlier ``--stop-at`` does not stop
    this one); ``changes`` are set over both."""
    defaults = type(saved)()
    invocation = {k: given.get(k, getattr(defaults, k)) for k in free}
    return dataclasses.replace(saved, **{**invocation, **changes})


def relaunch_differences(now: dict[str, Any], first: dict[str, Any], defaults: dict[str, Any],
                         free: tuple[str, ...], growable: tuple[str, ...] = ()) -> list[str]:
    """The flags of this launch that differ from the launch that started the run (``--lr=0.01, started with 0.001``).

    ``now`` and ``first`` hold the fields each launch set (flags and config file, paths resolved); a field
    one of them does not set takes its default. ``free`` fields may differ; ``growable`` ones may grow
    (``train``'s ``steps``: the run is extended).
    """
    out = []
    for name in sorted((set(now) | set(first)) - set(free)):
        a, b = now.get(name, defaults.get(name)), first.get(name, defaults.get(name))
        if a == b or (name in growable and a is not None and b is not None and a > b):
            continue
        out.append(f"--{name.replace('_', '-')}={a!r} (the run was started with {b!r})")
    return out


def relaunch_error(out: str | None, differences: list[str]) -> str:
    """The one-line refusal of an ``--auto-resume`` relaunch whose flags differ from the run's."""
    return (f"--auto-resume: this command differs from the one that started {out}: {'; '.join(differences)}; "
            f"give the same flags, or another --output")
