"""``python -m focusformer_fast.train``: train a supernet together with an arch sampler.

Each step draws one subnet from the sampler (FocusFormer's π(arch | budget), or the uniform /
sandwich baselines), trains it on one batch, and lets the sampler learn from accuracy
estimates of the shared weights on a validation batch. At the end it specializes every
budget of the grid (:mod:`focusformer_fast.specialize`: best in-budget arch on val, reported
with test accuracy too) and prints the table.

The configuration is :mod:`focusformer_fast.config`; the run directory it writes (``run.json``,
``metrics.jsonl``, ``checkpoint.pt``, ``results.json``) is described in :mod:`focusformer_fast.runs`.

Multi-GPU/multi-node: ``torchrun --nproc-per-node N -m focusformer_fast.train ...`` (gloo on
CPU, nccl on CUDA). Every rank draws the same arch from a shared seeded stream, rewards are
summed over ranks so sampler updates are identical, and DDP (find_unused_parameters: each
subnet leaves super-weights unused) averages the gradients. ``--batch-size`` is per rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import ops, recipe
from .atomic_files import atomic_write, write_json_atomic
from .cli import UsageError, held_notes, run_cli, say
from .config import (DEFAULT_STEPS, RESUME_OVERRIDES, TrainConfig, check_config, explicit_fields, resolved_data,
                     with_resume)
from .costs import CostFn, budget_grid, check_budgets, fmt_cost
from .distributed import Ranks, init_distributed
from .evaluate import accuracy, likelihood
from .runs import (CHECKPOINT_NAME, build_sampler, checkpoint_path, pick_device, read_checkpoint, rng_state,
                   saved_config, set_rng_state, space_data_cost, warn_budgets_above, write_checkpoint)
from .sampler import ArchSampler
from .sampler_diagnostics import diagnose, format_diagnostics
from .space import Arch, SearchSpace
from .specialize import format_table, specialization_table
from .specialize_report import write_report
from .supernet import Supernet
from .version import versions

if TYPE_CHECKING:
    from .data import DataSplits, Loaders

@dataclass
class TrainResult:
    """What a finished (or stopped) run produced, for callers in the same process."""

    output: Path
    step: int  # global steps completed
    archs: list[Arch]  # arch trained at each step run by this process
    losses: list[float]  # this rank's loss at each of those steps
    table: list[dict[str, Any]]  # specialization rows (empty if stopped early)
    net: Supernet
    sampler: ArchSampler
    config: TrainConfig


def resolve_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Defaults, then ``--config`` YAML, then flags; with ``--resume``, the checkpoint's config.

    On resume only :data:`~focusformer_fast.config.RESUME_OVERRIDES` may differ from the checkpoint's config.
    """
    explicit = explicit_fields(argv)
    cfg = with_resume(explicit, saved_config(explicit["resume"])) if explicit.get("resume") else TrainConfig(**explicit)
    check_config(cfg)
    return cfg


# -- the run -----------------------------------------------------------------------------
@dataclass
class _Position:
    """Where the training stream is: the next batch is batch ``batch`` of epoch ``epoch``."""

    epoch: int = 0
    batch: int = 0
    reward_batches: int = 0  # validation batches consumed by sampler updates


@dataclass
class _Setup:
    cfg: TrainConfig
    ranks: Ranks
    device: torch.device
    space: SearchSpace
    splits: DataSplits
    loaders: Loaders
    eval_loaders: Loaders  # reward_batch_size batches, for rewards and the final table
    cost_fn: CostFn
    budgets: tuple[float, ...]
    out: Path
    ckpt: dict[str, Any] | None
    extended_from: int | None  # the run's total steps before this resume extended it


SEARCH = "python -m focusformer_fast.search"
BAD_IMAGES = "bad_images.txt"


def _default_output(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.sampler}-s{cfg.seed}"


def _claim(out: Path, default_name: bool) -> Path:
    """Create the new run directory ``out`` exclusively (an empty existing one may be given with --output).

    Two runs started in the same second under the default name get ``out``, ``out-2``, ... ; a
    directory another run claimed first (its ``run.json`` exists) is refused for ``--output``.
    """
    for k in range(1, 1000):
        path = out if k == 1 else out.with_name(f"{out.name}-{k}")
        try:
            path.mkdir(parents=True, exist_ok=not default_name)
            os.close(os.open(path / "run.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return path
        except FileExistsError:
            if not default_name:
                raise UsageError(f"--output {str(out)!r} was just taken by another run; "
                                 f"give another --output") from None
    raise UsageError(f"could not create a run directory next to {str(out)!r}; give --output")


def _remove_unfinished(out: Path) -> None:
    """Remove what a new run wrote to ``out`` when it fails before its first checkpoint, so a rerun is not blocked."""
    if not (out / CHECKPOINT_NAME).exists() and out.is_dir():
        shutil.rmtree(out, ignore_errors=True)


def _prepare(cfg: TrainConfig, ranks: Ranks) -> _Setup:
    """Check everything a run needs and load data and checkpoint; writes nothing."""
    from .data import LoaderOptions, choose_augment, make_loaders  # timm/torchvision/sklearn: not needed to reject bad flags
    ckpt = None
    if cfg.resume:
        path = checkpoint_path(cfg.resume)
        ckpt = read_checkpoint(path)
        saved = TrainConfig(**ckpt["config"])
        out = path.parent.resolve()
        steps = cfg.steps if cfg.steps is not None and cfg.steps > saved.steps else saved.steps
        cfg = dataclasses.replace(saved, output=str(out), steps=steps,
                                  **{k: getattr(cfg, k) for k in RESUME_OVERRIDES})
        if ckpt["world_size"] != ranks.world:
            raise UsageError(f"checkpoint was written by {ckpt['world_size']} ranks; this run has {ranks.world}")
        if ckpt["step"] >= cfg.steps and (out / "results.json").is_file():  # without results: make the table
            raise UsageError(f"run {str(out)!r} is complete (step {ckpt['step']} of {cfg.steps}); to train it "
                             f"longer give --steps M with M > {cfg.steps}, or search it: {SEARCH} {out}")
        extended_from = saved.steps if cfg.steps != saved.steps else None
    else:
        out = (Path(cfg.output) if cfg.output else _default_output(cfg)).expanduser().resolve()
        if cfg.output and out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"--output {str(out)!r} already exists and is not empty; "
                             f"use --resume {out} or another --output")
        extended_from = None
        cfg = dataclasses.replace(cfg, data=resolved_data(cfg.data),
                                  latency_table=cfg.latency_table and str(Path(cfg.latency_table).resolve()),
                                  cache_data=cfg.cache_data and str(Path(cfg.cache_data).resolve()))
    check_config(cfg)
    try:
        augment = choose_augment(cfg.data, cfg.augment)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if ranks.rank == 0 and ckpt is None:
        say("note", augment.note)
    cfg = dataclasses.replace(cfg, augment=augment.augment)
    device = pick_device(cfg, ranks)
    cfg = dataclasses.replace(cfg, **LoaderOptions.of(cfg).resolved(device))
    if cfg.graphs and device.type != "cuda":
        if ranks.rank == 0:
            say("note", f"--graphs has no effect on {device.type} (CUDA graphs need a CUDA device); recorded as off")
        cfg = dataclasses.replace(cfg, graphs=False)
    if cfg.threads is None:
        # digits tensors are tiny: on a shared 2-core CPU, 1 thread ran 200 steps in 15 s, 2 threads in 31-93 s
        tiny = device.type == "cpu" and cfg.space == "digits"
        cfg = dataclasses.replace(cfg, threads=1 if tiny else torch.get_num_threads())
    space, splits, cost_fn = space_data_cost(cfg, quiet=ranks.rank != 0)
    if cfg.check_data:
        from .data import unreadable_files

        bad = unreadable_files(splits)
        if bad:
            listed = "; ".join(f"{p} ({why})" for p, why in list(bad.items())[:5])
            more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise UsageError(f"--check-data: {len(bad)} image file(s) cannot be read: {listed}{more}; "
                             f"remove or replace them")
    try:
        budgets = check_budgets(space, cost_fn, cfg.budgets) if cfg.budgets else budget_grid(space, cost_fn, cfg.num_budgets)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if ranks.rank == 0:
        warn_budgets_above(space, cost_fn, budgets, cfg.budget_metric)
    loaders = make_loaders(splits, cfg.batch_size, seed=cfg.seed, device=device, options=cfg, distributed=ranks.on)
    eval_loaders = make_loaders(splits, cfg.reward_batch_size, seed=cfg.seed, device=device, options=cfg,
                                distributed=ranks.on)
    steps_per_epoch = len(loaders.train)
    if steps_per_epoch == 0:
        raise UsageError(f"batch_size={cfg.batch_size} exceeds the {len(splits.train)} training images per rank")
    if cfg.steps is None:
        steps = cfg.epochs * steps_per_epoch if cfg.epochs else DEFAULT_STEPS
        cfg = dataclasses.replace(cfg, steps=steps, epochs=None)
    if cfg.lr_warmup_steps is None:
        cfg = dataclasses.replace(cfg, lr_warmup_steps=cfg.steps // 20)
    if cfg.sampler_warmup is None:
        cfg = dataclasses.replace(cfg, sampler_warmup=cfg.steps // 5)
    if cfg.eval_every is None:
        cfg = dataclasses.replace(cfg, eval_every=max(1, cfg.steps // 10))
    cfg = dataclasses.replace(cfg, output=str(out), budgets=list(budgets))
    return _Setup(cfg, ranks, device, space, splits, loaders, eval_loaders, cost_fn, budgets, out, ckpt, extended_from)


def _build(s: _Setup):
    """Supernet, optimizer, schedule, loss, mixup/cutmix (:mod:`~focusformer_fast.recipe`) and sampler, seeded."""
    cfg = s.cfg
    torch.manual_seed(cfg.seed)
    net = Supernet(s.space, drop_path_rate=cfg.drop_path, graphs=cfg.graphs).to(s.device)
    optimizer = recipe.optimizer(net, cfg.lr, cfg.weight_decay)  # exempts net.no_weight_decay()
    scheduler = recipe.cosine_schedule(optimizer, cfg.steps, cfg.lr_warmup_steps, cfg.lr, cfg.min_lr)
    mixup, criterion = recipe.mixup_and_loss(cfg.mixup, cfg.cutmix, cfg.smoothing, s.space.num_classes)
    sampler = build_sampler(cfg, s.space, s.cost_fn)
    return net, optimizer, scheduler, criterion, mixup, sampler


class _Batches:
    """Resumable iterator over training batches (epochs reseeded through ``Loaders.set_epoch``)."""

    def __init__(self, loaders: Loaders, pos: _Position):
        self.loaders, self.pos = loaders, pos
        self.it: Iterator | None = None

    def start(self) -> None:
        """Fast-forward to ``pos`` by replaying the epoch's first ``pos.batch`` batches (exact, costs their loading)."""
        self.loaders.set_epoch(self.pos.epoch)
        self.it = iter(self.loaders.train)
        for _ in range(self.pos.batch):
            next(self.it)

    def next(self) -> tuple[Tensor, Tensor]:
        try:
            batch = next(self.it)
        except StopIteration:
            self.pos.epoch, self.pos.batch = self.pos.epoch + 1, 0
            self.start()
            batch = next(self.it)
        self.pos.batch += 1
        return batch


class _Cycle:
    """Validation batches for sampler rewards, cycling over the (deterministic) val loader."""

    def __init__(self, loader, pos: _Position):
        self.loader, self.pos = loader, pos
        self.it = iter(loader)
        for _ in range(pos.reward_batches % len(loader)):
            next(self.it)

    def next(self) -> tuple[Tensor, Tensor]:
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            batch = next(self.it)
        self.pos.reward_batches += 1
        return batch


def _save_checkpoint(s: _Setup, step: int, pos: _Position, net, optimizer, scheduler, sampler) -> None:
    """Gather every rank's RNG state and write the checkpoint (rank 0) atomically."""
    rng = [rng_state()]
    if s.ranks.on:
        rng = [None] * s.ranks.world
        dist.all_gather_object(rng, rng_state())
    if s.ranks.rank == 0:
        ckpt = {"config": dataclasses.asdict(s.cfg), "step": step,
                "position": dataclasses.asdict(pos), "world_size": s.ranks.world,
                "supernet": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(), "rng": rng,
                "versions": versions(s.device)}
        write_checkpoint(s.out / CHECKPOINT_NAME, ckpt)
    if s.ranks.on:
        dist.barrier()


class _OneRankWarns:
    """On ranks > 0, drops DDP's "find_unused_parameters=True ... did not find any unused parameters" warning.

    c10 prints it straight to file descriptor 2, once per process, from the forward pass; rank 0
    keeps it, so a torchrun prints it once. :meth:`around` captures fd 2 during a forward, passes
    every other line through, and stops capturing once the warning was seen.
    """

    MARK = b"did not find any unused parameters"

    def __init__(self, active: bool) -> None:
        self.active = active
        self.buffer = tempfile.TemporaryFile() if active else None

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        if not self.active:
            yield
            return
        sys.stderr.flush()
        self.buffer.seek(0)
        self.buffer.truncate()
        saved = os.dup(2)
        os.dup2(self.buffer.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            self.buffer.seek(0)
            text = self.buffer.read()
            if self.MARK in text:
                self.active = False
                self.buffer.close()
                text = b"".join(ln for ln in text.splitlines(keepends=True) if self.MARK not in ln)
            if text:
                os.write(2, text)


def _record_step(line: str) -> float:
    """Step of a metrics line; infinity for a torn or foreign line (dropped on resume)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _start_files(s: _Setup, step: int) -> None:
    """Create the run directory and ``run.json``; on resume, drop metrics past the checkpoint."""
    s.out.mkdir(parents=True, exist_ok=True)
    info_path = s.out / "run.json"
    if s.ckpt is None:
        info = {"config": dataclasses.asdict(s.cfg), "seed": s.cfg.seed, "world_size": s.ranks.world,
                "versions": versions(s.device), "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "resumes": []}
    else:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {"config": dataclasses.asdict(s.cfg)}
        record = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": versions(s.device),
                  "argv": sys.argv}
        if s.extended_from is not None:
            record["steps"] = {"from": s.extended_from, "to": s.cfg.steps}
            info.setdefault("config", {})["steps"] = s.cfg.steps
        info.setdefault("resumes", []).append(record)
        metrics = s.out / "metrics.jsonl"
        if metrics.is_file():
            keep = [ln for ln in metrics.read_text().splitlines() if _record_step(ln) <= step]
            atomic_write(metrics, lambda f: f.write("".join(ln + "\n" for ln in keep).encode()))
    write_json_atomic(info_path, info)


def run(cfg: TrainConfig) -> TrainResult:
    """Train (or, with ``cfg.resume``, continue) a run; then specialize each budget.

    Raises :class:`UsageError` before writing anything if the config, data, latency table
    or checkpoint is unusable. Inside torchrun (WORLD_SIZE > 1) joins the process group.
    """
    ranks, created = init_distributed(cfg.device)
    try:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(ops.set_backend(cfg.backend))
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            with held_notes():  # printed once every check passed: a refused run prints its error alone
                s = _prepare(cfg, ranks)
            new_run = s.ckpt is None
            if ranks.on:  # every rank checked the output before rank 0 claims it
                dist.barrier()
            if new_run and ranks.rank == 0:
                s.out = _claim(s.out, default_name=not cfg.output)
                s.cfg = dataclasses.replace(s.cfg, output=str(s.out))
            if ranks.on:  # one name for all
                shared = [str(s.out)]
                dist.broadcast_object_list(shared, 0)
                s.out = Path(shared[0])
                s.cfg = dataclasses.replace(s.cfg, output=shared[0])
            try:
                return _train(s)
            except BaseException:
                if new_run and ranks.rank == 0:
                    _remove_unfinished(s.out)
                raise
    finally:
        if created:
            dist.destroy_process_group()


def _train(s: _Setup) -> TrainResult:
    from .data import report_unreadable

    cfg, ranks, device = s.cfg, s.ranks, s.device
    torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # kernels, streams and CUDA graphs of this rank on its own GPU
    net, optimizer, scheduler, criterion, mixup, sampler = _build(s)
    model: nn.Module = net
    if ranks.on:
        # Each step's subnet leaves other super-weights unused, hence find_unused_parameters. Measured
        # against one flat all-reduce of the used gradients (2 ranks, gloo, digits): 58-72 vs 86 ms/step,
        # same weights. DDP also broadcasts rank 0's initial weights.
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    pos, step = _Position(), 0
    if s.ckpt is not None:
        ck = s.ckpt
        net.load_state_dict(ck["supernet"])
        optimizer.load_state_dict(ck["optimizer"])
        if s.extended_from is None:
            scheduler.load_state_dict(ck["scheduler"])
        sampler.load_state_dict(ck["sampler"])
        pos, step = _Position(**ck["position"]), ck["step"]
        if s.extended_from is not None:  # the cosine schedule over the new total, from this step on
            scheduler.step_update(num_updates=step)
    else:
        random.seed(cfg.seed + ranks.rank)
        np.random.seed(cfg.seed + ranks.rank)
        torch.manual_seed(cfg.seed + ranks.rank)
    if ranks.rank == 0:
        _start_files(s, step)
        if s.ckpt is None:
            say("note", f"run directory {s.out}")
        else:
            longer = f" (extended from {s.extended_from} steps)" if s.extended_from is not None else ""
            say("note", f"resuming {s.out} from step {step} of {cfg.steps}{longer}")
    report_unreadable(s.splits, s.out / BAD_IMAGES)
    batches, rewards = _Batches(s.loaders, pos), _Cycle(s.eval_loaders.val, pos)
    batches.start()
    if s.ckpt is not None:  # after the fast-forward, which consumed augmentation randomness
        set_rng_state(s.ckpt["rng"][ranks.rank])

    def score(archs: Sequence[Arch]) -> list[float]:
        batch = rewards.next()  # one batch for all archs of an update: common random numbers
        measure = accuracy if cfg.reward == "accuracy" else likelihood
        return [measure(net, a, [batch], device, distributed=ranks.on) for a in archs]

    stop = min(cfg.stop_at or cfg.steps, cfg.steps)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    params = [p for p in net.parameters() if p.requires_grad]
    erase = recipe.random_erasing(cfg.reprob, device)
    archs, losses = [], []
    metrics = open(s.out / "metrics.jsonl", "a") if ranks.rank == 0 else None
    bar = None
    show_bar = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    plain_every = max(cfg.log_every, cfg.steps // 10)
    if ranks.rank == 0 and show_bar:
        from tqdm import tqdm

        bar = tqdm(total=stop, initial=step, desc=f"{cfg.sampler}", unit="step", dynamic_ncols=True, mininterval=0.5)
    probes = {"smallest": s.space.smallest(), "middle": s.space.middle(), "largest": s.space.largest()}
    ddp_warning = _OneRankWarns(ranks.on and ranks.rank > 0)
    net.train()
    t_window, n_window, ema, pending = time.perf_counter(), 0, None, []
    diag = None  # the sampler's diagnostics at the last step (rank 0)
    try:
        while step < stop:
            images, labels = batches.next()
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if erase is not None:
                images = erase(images)
            if mixup is not None:
                images, labels = mixup(images, labels)
            arch, budget = sampler.next(step)
            optimizer.zero_grad(set_to_none=True)
            with amp, ddp_warning.around():
                logits = model(images, arch)
            loss = criterion(logits.float(), labels)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            optimizer.step()
            scheduler.step_update(num_updates=step + 1)
            stats = sampler.update(step, score)
            step += 1
            archs.append(arch)
            pending.append(loss.detach())  # read back at log steps only: no host sync per step
            n_window += images.shape[0] * ranks.world
            probe_now = step % cfg.eval_every == 0 or step == cfg.steps
            if step % cfg.log_every == 0 or step == stop or stats or probe_now:
                window = torch.stack(pending).tolist()
                if not all(math.isfinite(v) for v in window):
                    raise FloatingPointError(f"loss is {window} in steps {step - len(window) + 1}-{step} (last arch {arch})")
                for v in window:
                    ema = v if ema is None else 0.9 * ema + 0.1 * v
                losses.extend(window)
                pending.clear()
                now = time.perf_counter()
                throughput, t_window, n_window = n_window / max(now - t_window, 1e-9), now, 0
                mean_loss = loss.detach().clone()
                if ranks.on:
                    dist.all_reduce(mean_loss)
                    mean_loss /= ranks.world
                probe_acc = {f"val_acc_{name}": accuracy(net, a, s.eval_loaders.val, device, distributed=ranks.on)
                             for name, a in probes.items()} if probe_now else {}
                if metrics is not None:
                    cost = s.cost_fn(arch)
                    rec = {"step": step, "epoch": pos.epoch, "loss": mean_loss.item(),
                           "lr": optimizer.param_groups[0]["lr"], "arch": arch.to_dict(), "cost": cost,
                           "budget": budget, "img_per_s": throughput, **probe_acc,
                           **{f"sampler_{k}": v for k, v in stats.items()}}
                    if step == cfg.steps:  # what the sampler learned, in the last step's record
                        diag = diagnose(sampler)
                        if diag is not None:
                            rec["sampler_diagnostics"] = diag
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
                    if bar is not None:
                        bar.set_postfix(loss=f"{ema:.3f}", cost=fmt_cost(cost, cfg.budget_metric),
                                        img_s=f"{throughput:.0f}", refresh=False)
                    elif step % plain_every == 0 or step == stop:
                        probe = (f"  val acc (smallest/largest) {100 * probe_acc['val_acc_smallest']:.1f}%/"
                                 f"{100 * probe_acc['val_acc_largest']:.1f}%" if probe_acc else "")
                        print(f"step {step}/{cfg.steps}  loss {ema:.3f}  lr {optimizer.param_groups[0]['lr']:.2e}  "
                              f"{throughput:.0f} img/s{probe}", file=sys.stderr, flush=True)
            if bar is not None:
                bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == stop:
                _save_checkpoint(s, step, pos, net, optimizer, scheduler, sampler)
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    table = []
    if step >= cfg.steps:
        table = _final_table(s, net, sampler)
        if diag is not None:
            print(format_diagnostics(diag, cfg.budget_metric))
    elif ranks.rank == 0:
        print(f"stopped after step {step} of {cfg.steps}; continue with --resume {s.out}")
    if ranks.rank == 0 and (s.out / BAD_IMAGES).is_file():
        bad = {ln.split("\t")[0] for ln in (s.out / BAD_IMAGES).read_text().splitlines() if ln}
        say("warning", f"{len(bad)} unreadable image file(s) were skipped; listed in {s.out / BAD_IMAGES}")
    return TrainResult(s.out, step, archs, losses, table, net, sampler, cfg)


def _final_table(s: _Setup, net: Supernet, sampler: ArchSampler) -> list[dict[str, Any]]:
    """Specialize every budget (val selects, test reports), print the table, write results.json."""
    cfg = s.cfg
    rows = specialization_table(net, sampler, s.cost_fn, s.budgets, s.eval_loaders.val,
                                s.eval_loaders.test, s.device, n=cfg.specialize_n, seed=cfg.seed,
                                distributed=s.ranks.on)
    if s.ranks.rank == 0:
        write_json_atomic(s.out / "results.json", {"metric": cfg.budget_metric, "sampler": cfg.sampler, "rows": rows})
        write_report(rows, cfg.budget_metric, s.out / "results.json", title=f"{s.out.name}: final table")
        print(format_table(rows, cfg.budget_metric))
        say("note", f"results in {s.out}: results.json (table), results.md, results.png (val Pareto fronts), "
                    f"metrics.jsonl; next: {SEARCH} {s.out} --test --export {s.out / 'models'}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes."""
    return run_cli(lambda: run(resolve_config(argv)))


if __name__ == "__main__":
    sys.exit(main())
