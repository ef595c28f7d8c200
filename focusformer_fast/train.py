"""``python -m focusformer_fast.train``: train a supernet together with an arch sampler.

Each step draws one subnet from the sampler (FocusFormer's π(arch | budget), or the uniform /
sandwich baselines), trains it on one batch, and lets the sampler learn from accuracy
estimates of the shared weights on a validation batch. At the end it specializes every
budget of the grid (:mod:`focusformer_fast.nas.specialize`: best in-budget arch on val, reported
with test accuracy too) and prints the table.

The configuration is :mod:`focusformer_fast.training.config`; the run directory it writes (``run.json``,
``metrics.jsonl``, ``checkpoint.pt``, ``results.json``) is described in :mod:`focusformer_fast.training.runs`; the
run plumbing it shares with ``finetune`` (claiming and continuing the directory, ``--auto-resume``,
checkpoints, the batch stream, stop signals, progress) is :mod:`focusformer_fast.training.run_directory`,
:mod:`focusformer_fast.training.run_state` and :mod:`focusformer_fast.training.run_loop`.

SIGTERM or SIGINT stops a run after the step it is in, with a checkpoint of that step and the
command that continues it; the exit status is 143 (SIGTERM) or 130 (SIGINT).

Multi-GPU/multi-node: ``torchrun --nproc-per-node N -m focusformer_fast.train ...`` (gloo on
CPU, nccl on CUDA). Every rank draws the same arch from a shared seeded stream, rewards are
summed over ranks so sampler updates are identical, and DDP (find_unused_parameters: each
subnet leaves super-weights unused) averages the gradients. ``--batch-size`` is per rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from focusformer_fast import ops
from focusformer_fast.models.supernet import Supernet
from focusformer_fast.nas.costs import CostFn, budget_grid, check_budgets
from focusformer_fast.nas.evaluate import accuracy, likelihood
from focusformer_fast.nas.sampler.baselines import ArchSampler
from focusformer_fast.nas.sampler.diagnostics import diagnose, format_diagnostics
from focusformer_fast.nas.specialize import format_table, specialization_table
from focusformer_fast.nas.specialize_report import write_report
from focusformer_fast.space import Arch, SearchSpace
from focusformer_fast.training import recipe
from focusformer_fast.training.config import (DEFAULT_STEPS, RESUME_OVERRIDES, TrainConfig, check_config,
                                              explicit_fields, resolved_paths, with_relaunch, with_resume)
from focusformer_fast.training.run_directory import (CHECKPOINT_NAME, MetricsLog, check_new_output, command_line,
                                                     last_good_checkpoint, record_resume, record_start,
                                                     resume_checkpoint, taken)
from focusformer_fast.training.run_loop import BatchStream, Progress, StopSignals, frozen_heap, stopped_note
from focusformer_fast.training.run_options import check_given, launch_record
from focusformer_fast.training.run_state import check_world_size, set_rng_state, write_run_checkpoint
from focusformer_fast.training.runs import (FORMAT_VERSION, KIND, build_sampler, read_checkpoint, saved_config,
                                            space_data_cost, stored_space, warn_budgets_above)
from focusformer_fast.utils.atomic_files import write_json_atomic
from focusformer_fast.utils.cli import Interrupted, UsageError, held_notes, run_cli, say
from focusformer_fast.utils.distributed import OneRankWarnings, Ranks, pick_device, process_group
from focusformer_fast.utils.version import versions

if TYPE_CHECKING:
    from focusformer_fast.data.loaders import Loaders
    from focusformer_fast.data.splits import DataSplits

TRAIN = "python -m focusformer_fast.train"
SEARCH = "python -m focusformer_fast.search"
BAD_IMAGES = "bad_images.txt"


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

    On resume only :data:`~focusformer_fast.training.config.RESUME_OVERRIDES` may differ from the checkpoint's
    config. With ``--auto-resume`` and a checkpoint in ``--output``, the run continues from its last
    good checkpoint when the flags are those it was started with; without one, a new run starts.
    """
    explicit = explicit_fields(argv)
    try:
        check_given(explicit)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if explicit.get("resume"):
        cfg = with_resume(explicit, saved_config(explicit["resume"]))
    else:
        cfg = TrainConfig(**explicit)
        check_config(cfg)
        if cfg.auto_resume:
            point = last_good_checkpoint(Path(cfg.output).expanduser().resolve(), read_checkpoint)
            if point is not None:
                cfg = with_relaunch(explicit, TrainConfig(**point.payload["config"]), point.payload.get("launch"),
                                    str(point.checkpoint))
    check_config(cfg)
    return cfg


# -- the run -----------------------------------------------------------------------------
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
    checkpoint: Path | None  # the file ckpt came from
    extended_from: int | None  # the run's total steps before this resume extended it
    launch: dict[str, Any] | None  # the fields the run was started with
    command: str | None  # this invocation's command line


def _default_output(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.sampler}-s{cfg.seed}"


def _prepare(cfg: TrainConfig, ranks: Ranks, command: str | None) -> _Setup | None:
    """Check everything a run needs and load data and checkpoint; writes nothing. None: nothing to do
    (``--auto-resume`` of a finished run, said in a note)."""
    from focusformer_fast.data.datasets import choose_augment
    from focusformer_fast.data.loaders import make_loaders  # timm/torchvision/sklearn: not needed to reject bad flags
    from focusformer_fast.data.options import LoaderOptions
    ckpt = path = None
    launch = launch_record(cfg, resolved_paths)
    if cfg.resume:
        path = resume_checkpoint(cfg.resume)
        ckpt = read_checkpoint(path)
        saved = TrainConfig(**ckpt["config"])
        out = path.parent.resolve()
        steps = cfg.steps if cfg.steps is not None and cfg.steps > saved.steps else saved.steps
        cfg = dataclasses.replace(saved, output=str(out), steps=steps,
                                  **{k: getattr(cfg, k) for k in RESUME_OVERRIDES})
        check_world_size(ckpt, ranks)
        if ckpt["step"] >= cfg.steps and (out / "results.json").is_file():  # without results: make the table
            if cfg.auto_resume:
                if ranks.rank == 0:
                    say("note", f"run {out} is complete (step {ckpt['step']} of {cfg.steps}); nothing to do. "
                                f"Search it: {SEARCH} {out}")
                return None
            raise UsageError(f"run {str(out)!r} is complete (step {ckpt['step']} of {cfg.steps}); to train it "
                             f"longer give --steps M with M > {cfg.steps}, or search it: {SEARCH} {out}")
        extended_from = saved.steps if cfg.steps != saved.steps else None
        launch = ckpt.get("launch")
    else:
        out = (Path(cfg.output) if cfg.output else _default_output(cfg)).expanduser().resolve()
        if cfg.output:
            check_new_output(out, TRAIN)
        extended_from = None
        cfg = dataclasses.replace(cfg, **{k: v for k, v in resolved_paths(dataclasses.asdict(cfg)).items()
                                          if k in ("data", "space", "latency_table", "cache_data")})
    check_config(cfg)
    try:
        augment = choose_augment(cfg.data, cfg.augment)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if ranks.rank == 0 and ckpt is None:
        say("note", augment.note)
    cfg = dataclasses.replace(cfg, augment=augment.augment)
    device = pick_device(cfg.device, ranks)
    cfg = dataclasses.replace(cfg, **LoaderOptions.of(cfg).resolved(device))
    if cfg.graphs and device.type != "cuda":
        if ranks.rank == 0:
            say("note", f"--graphs has no effect on {device.type} (CUDA graphs need a CUDA device); recorded as off")
        cfg = dataclasses.replace(cfg, graphs=False)
    space, splits, cost_fn = space_data_cost(cfg, stored=stored_space(ckpt) if ckpt else None,
                                             quiet=ranks.rank != 0)
    if cfg.threads is None:
        # digits-sized tensors (widths up to 64) are tiny: on a shared 2-core CPU, 1 thread ran 200 digits
        # steps in 15 s, 2 threads in 31-93 s
        tiny = device.type == "cpu" and space.max_embed <= 64
        cfg = dataclasses.replace(cfg, threads=1 if tiny else torch.get_num_threads())
    if cfg.check_data:
        from focusformer_fast.data.folders import unreadable_files

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
    return _Setup(cfg, ranks, device, space, splits, loaders, eval_loaders, cost_fn, budgets, out, ckpt, path,
                  extended_from, launch, command)


def run(cfg: TrainConfig, argv: Sequence[str] | None = None) -> TrainResult | None:
    """Train (or, with ``cfg.resume``, continue) a run; then specialize each budget.

    ``argv``: the command line that asked for it (recorded, and quoted when the run must be
    started over). Raises :class:`UsageError` before writing anything if the config, data,
    latency table or checkpoint is unusable, and :class:`Interrupted` after checkpointing the step a
    SIGTERM or SIGINT stopped it at. Returns None when ``--auto-resume`` found the run complete.
    Inside torchrun (WORLD_SIZE > 1) joins the process group.
    """
    with process_group(cfg.device) as ranks, contextlib.ExitStack() as stack:
        try:
            stack.enter_context(ops.set_backend(cfg.backend))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        with held_notes():  # printed once every check passed: a refused run prints its error alone
            s = _prepare(cfg, ranks, command_line("train", argv))
        if s is None:
            return None
        s.out = stack.enter_context(taken(s.out, ranks, new=s.ckpt is None, default_name=not cfg.output,
                                          continuing_from=s.checkpoint))
        s.cfg = dataclasses.replace(s.cfg, output=str(s.out))
        return _train(s)


def _start_files(s: _Setup, step: int) -> None:
    """``run.json`` of a new run, or a resume appended to it (metrics past the checkpoint dropped)."""
    here = {"versions": versions(s.device), "argv": sys.argv, "command": s.command}
    config = dataclasses.asdict(s.cfg)
    if s.ckpt is None:
        record_start(s.out, {"config": config, "space": s.space.to_dict(), "seed": s.cfg.seed,
                             "world_size": s.ranks.world, "launch": s.launch, **here})
    else:
        extended = {"steps": {"from": s.extended_from, "to": s.cfg.steps}} if s.extended_from is not None else {}
        record_resume(s.out, step, {**here, **extended}, config)


class _RewardBatches:
    """Validation batches for sampler rewards, cycling over the (deterministic) val loader; ``used`` counts them."""

    def __init__(self, loader, used: int) -> None:
        self.loader, self.used = loader, used
        self.it = iter(loader)
        for _ in range(used % len(loader)):
            next(self.it)

    def next(self) -> tuple[Tensor, Tensor]:
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            batch = next(self.it)
        self.used += 1
        return batch


def _save_checkpoint(s: _Setup, step: int, batches: BatchStream, rewards: _RewardBatches, net, optimizer, scheduler,
                     sampler) -> None:
    write_run_checkpoint(s.out / CHECKPOINT_NAME, {
        "kind": KIND, "format_version": FORMAT_VERSION, "config": dataclasses.asdict(s.cfg), "step": step,
        "position": {**batches.position(), "reward_batches": rewards.used}, "supernet": net.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(),
        "space": s.space.to_dict(), "launch": s.launch, "versions": versions(s.device)}, s.ranks)


def _train(s: _Setup) -> TrainResult:
    from focusformer_fast.data.folders import report_unreadable

    cfg, ranks, device = s.cfg, s.ranks, s.device
    torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # kernels, streams and CUDA graphs of this rank on its own GPU
    torch.manual_seed(cfg.seed)
    net = Supernet(s.space, drop_path_rate=cfg.drop_path, graphs=cfg.graphs).to(device)
    optimizer, scheduler, mixup, criterion, erase = recipe.build(recipe.RecipeOptions.of(cfg), net, cfg.steps,
                                                                 s.space.num_classes, device)
    sampler = build_sampler(cfg, s.space, s.cost_fn)
    model: nn.Module = net
    if ranks.on:
        # Each step's subnet leaves other super-weights unused, hence find_unused_parameters. Measured
        # against one flat all-reduce of the used gradients (2 ranks, gloo, digits): 58-72 vs 86 ms/step,
        # same weights. DDP also broadcasts rank 0's initial weights.
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    position, step = {"epoch": 0, "batch": 0, "reward_batches": 0}, 0
    if s.ckpt is not None:
        ck = s.ckpt
        net.load_state_dict(ck["supernet"])
        optimizer.load_state_dict(ck["optimizer"])
        if s.extended_from is None:
            scheduler.load_state_dict(ck["scheduler"])
        sampler.load_state_dict(ck["sampler"])
        position, step = ck["position"], ck["step"]
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
    stop_signals = StopSignals(ranks)
    with stop_signals, frozen_heap():  # before the stream starts: DataLoader workers inherit the handlers
        return _loop(s, net, model, optimizer, scheduler, criterion, mixup, erase, sampler, step, position,
                     stop_signals)


def _loop(s: _Setup, net: Supernet, model: nn.Module, optimizer, scheduler, criterion, mixup, erase,
          sampler: ArchSampler, step: int, position: dict[str, int], stop_signals: StopSignals) -> TrainResult:
    cfg, ranks, device = s.cfg, s.ranks, s.device
    batches = BatchStream(s.loaders, position["epoch"], position["batch"])
    rewards = _RewardBatches(s.eval_loaders.val, position["reward_batches"])
    if s.ckpt is not None:  # after the fast-forward, which consumed augmentation randomness
        set_rng_state(s.ckpt["rng"][ranks.rank])

    def score(archs: Sequence[Arch]) -> list[float]:
        batch = rewards.next()  # one batch for all archs of an update: common random numbers
        measure = accuracy if cfg.reward == "accuracy" else likelihood
        return [measure(net, a, [batch], device, distributed=ranks.on) for a in archs]

    stop = min(cfg.stop_at or cfg.steps, cfg.steps)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    params = [p for p in net.parameters() if p.requires_grad]
    archs, losses = [], []
    metrics = MetricsLog(s.out, active=ranks.rank == 0)
    progress = Progress(cfg.progress, active=ranks.rank == 0, total=cfg.steps, initial=step, stop=stop,
                        desc=cfg.sampler, every=cfg.log_every)
    probes = {"smallest": s.space.smallest(), "middle": s.space.middle(), "largest": s.space.largest()}
    ddp_warning = OneRankWarnings(ranks.on and ranks.rank > 0)
    net.train()
    t_window, n_window, ema, pending = time.perf_counter(), 0, None, []
    diag = None  # the sampler's diagnostics at the last step (rank 0)
    signum = None
    try:
        while step < stop and signum is None:
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
            signum = stop_signals.agreed(step)  # on every rank: all stop after the same step
            archs.append(arch)
            pending.append(loss.detach())  # read back at log steps only: no host sync per step
            n_window += images.shape[0] * ranks.world
            probe_now = step % cfg.eval_every == 0 or step == cfg.steps
            if step % cfg.log_every == 0 or step == stop or stats or probe_now or signum:
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
                if ranks.rank == 0:
                    cost = s.cost_fn(arch)
                    rec = {"step": step, "epoch": batches.epoch, "loss": mean_loss.item(),
                           "lr": optimizer.param_groups[0]["lr"], "arch": arch.to_dict(), "cost": cost,
                           "budget": budget, "img_per_s": throughput, **probe_acc,
                           **{f"sampler_{k}": v for k, v in stats.items()}}
                    if step == cfg.steps:  # what the sampler learned, in the last step's record
                        diag = diagnose(sampler)
                        if diag is not None:
                            rec["sampler_diagnostics"] = diag
                    metrics.write(rec)
                    fields = {"loss": f"{ema:.3f}", "lr": f"{optimizer.param_groups[0]['lr']:.2e}",
                              "img/s": f"{throughput:.0f}"}
                    if probe_acc:
                        fields["val acc (smallest/largest)"] = (f"{100 * probe_acc['val_acc_smallest']:.1f}%/"
                                                                f"{100 * probe_acc['val_acc_largest']:.1f}%")
                    progress.report(step, fields)
            progress.advance()
            if step % cfg.checkpoint_every == 0 or step == stop or signum:
                _save_checkpoint(s, step, batches, rewards, net, optimizer, scheduler, sampler)
    finally:
        progress.close()
        metrics.close()
    if signum:
        if ranks.rank == 0:
            say("note", stopped_note(signum, step, cfg.steps, TRAIN, s.out, s.command, cfg.auto_resume))
        raise Interrupted(signum)
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
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes; 143/130 after a
    SIGTERM/SIGINT stopped the run (checkpointed)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda: run(resolve_config(args), args))


if __name__ == "__main__":
    sys.exit(main())
