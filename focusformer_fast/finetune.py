"""``python -m focusformer_fast.finetune DIR --data ...``: fine-tune an exported subnet, export it again.

The subnet (an export directory: ``search --export``) is loaded as the timm model it is and
trained with timm's recipe (:mod:`focusformer_fast.training.recipe`: AdamW through
``create_optimizer_v2``, ``CosineLRScheduler`` per step with warmup, ``Mixup`` with cutmix and
label smoothing, random erasing; optionally EMA weights, ``ModelEmaV3``), in bf16 autocast on
CUDA. With ``--teacher RUN`` it also distils from a trained supernet run: the soft labels of its
largest subnet, ``loss = (1 - w) * loss + w * T^2 * KL(teacher_T || student_T)`` with
``T = --kd-temperature`` and ``w = --kd-weight``.

Before and after training it scores the model on the data's val and test splits (the same
splits as the supernet's run for the same ``--data``, ``--seed`` and ``--val-fraction``) and
reports inherited vs fine-tuned accuracy. The run directory (``--output``) is the one ``train``
writes (:mod:`focusformer_fast.training.run_directory`: claimed, reclaimed after a kill, ``--resume``,
``--auto-resume``, ``run.json``, ``metrics.jsonl``, ``checkpoint.pt`` with the model, optimizer,
schedule, EMA, RNG states and data position), plus

  ``results.json``   inherited vs fine-tuned val/test accuracy
  ``export/``        the fine-tuned subnet, an export directory of the same format (timm loads it)

``--resume OUT`` continues a stopped run exactly (on CPU, bit for bit); SIGTERM and SIGINT stop it
after the current step with a checkpoint (exit status 143 and 130). Its recipe flags are
``train``'s (:class:`~focusformer_fast.training.recipe.RecipeOptions`), from other defaults. Multi-GPU:
``torchrun --nproc-per-node N -m focusformer_fast.finetune ...`` (DDP; ``--batch-size`` per rank)::

    python -m focusformer_fast.finetune subnets/budget-2M --data digits --epochs 10 --output ft/
    python -m focusformer_fast.finetune subnets/budget-2M --data digits --teacher runs/my-run --output ft-kd/
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from focusformer_fast.data.options import AUGMENT_HELP, LoaderOptions
from focusformer_fast.models import export
from focusformer_fast.space import SearchSpace
from focusformer_fast.training import recipe
from focusformer_fast.training.recipe import RecipeOptions, recipe_field
from focusformer_fast.training.run_directory import (CHECKPOINT_NAME, MetricsLog, check_new_output, command_line,
                                                     last_good_checkpoint, record_resume, record_start,
                                                     resume_checkpoint, taken)
from focusformer_fast.training.run_loop import BatchStream, Progress, StopSignals, frozen_heap, stopped_note
from focusformer_fast.training.run_options import (RunOptions, check_given, continued_config, launch_record,
                                                   relaunch_differences, relaunch_error, run_field)
from focusformer_fast.training.run_state import (check_world_size, read_run_checkpoint, set_rng_state,
                                                 write_run_checkpoint)
from focusformer_fast.training.runs import load_run
from focusformer_fast.utils.atomic_files import write_json_atomic
from focusformer_fast.utils.cli import (Interrupted, Parser, UsageError, add_option_flags, add_version, flag, run_cli,
                                        say, state_defaults)
from focusformer_fast.utils.distributed import Ranks, pick_device, process_group
from focusformer_fast.utils.version import versions

PROG = "python -m focusformer_fast.finetune"
KIND = "finetune"
FORMAT_VERSION = 1
RENAMED = {"warmup_steps": "lr_warmup_steps"}
"""Config fields of older checkpoints under their new names."""
EXPORT_NAME = "export"
DEFAULT_EPOCHS = 10
RESUME_OVERRIDES = ("resume", "auto_resume", "stop_at", "progress")
"""Fields that may differ from the checkpoint's config on ``--resume``; they do not change the result."""
PATH_FIELDS = ("source", "data", "teacher", "cache_data")


@dataclass
class FinetuneConfig(RecipeOptions, RunOptions, LoaderOptions):
    """Everything a fine-tuning run depends on. Steps are optimizer steps; ``batch_size`` is per rank.

    The :class:`RecipeOptions` fields (``lr``, ``mixup``, ...) are ``train``'s, from fine-tuning
    defaults; the :class:`RunOptions` fields (``output``, ``auto_resume``, ...) are ``train``'s too.
    """

    source: str = ""  # the export directory to fine-tune
    data: str = "digits"
    steps: int | None = None  # default: epochs * batches per epoch
    epochs: int | None = None  # default DEFAULT_EPOCHS when steps is not given
    batch_size: int = 64
    lr: float = recipe_field("lr", 5e-4)
    min_lr: float = recipe_field("min_lr", 1e-6)
    smoothing: float = recipe_field("smoothing", 0.1)
    checkpoint_every: int = run_field("checkpoint_every", 200)
    ema_decay: float = 0.0  # 0: no EMA; else ModelEmaV3 decay, and the EMA weights are exported
    teacher: str | None = None  # a training run (directory or checkpoint) to distil from
    kd_temperature: float = 1.0
    kd_weight: float = 0.5
    augment: str | None = "auto"  # chosen by the data (data.choose_augment) and recorded as chosen
    val_fraction: float = 0.1


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, argument_default=argparse.SUPPRESS,
               description="Fine-tune an exported subnet with timm's recipe (optionally distilling from a trained "
                           "supernet run), report inherited vs fine-tuned accuracy, export the result.")
    p.add_argument("source", nargs="?", help="an export directory (search --export); omit with --resume")
    p.add_argument("--data", help="'digits' (bundled), a CIFAR-100 folder, or an ImageFolder root (default digits)")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--epochs", type=int, help=f"epochs instead of --steps (default {DEFAULT_EPOCHS})")
    p.add_argument("--batch-size", type=int, help="images per step per rank (default 64)")
    add_option_flags(p.add_argument_group("timm recipe (shared with train)"), RecipeOptions,
                     old_names={"lr_warmup_steps": "--warmup-steps"})
    p.add_argument("--ema-decay", type=float, help="keep EMA weights (timm ModelEmaV3) with this decay and export "
                                                   "them (default 0: off)")
    p.add_argument("--teacher", help="distil from this training run's largest subnet (run directory or checkpoint)")
    p.add_argument("--kd-temperature", type=float, help="distillation temperature T (default 1)")
    p.add_argument("--kd-weight", type=float, help="weight w of the distillation term, in [0, 1] (default 0.5)")
    p.add_argument("--augment", help=AUGMENT_HELP)
    p.add_argument("--val-fraction", type=float, help="held-out share of the training files (default 0.1)")
    add_option_flags(p.add_argument_group("data loaders (shared with train)"), LoaderOptions)
    add_option_flags(p.add_argument_group("run directory, resume, progress (shared with train)"), RunOptions)
    add_version(p)
    return state_defaults(p, {f.name: f.default for f in dataclasses.fields(FinetuneConfig)})


def check_config(cfg: FinetuneConfig) -> None:
    """Raise :class:`UsageError` naming the first field out of range (as its flag)."""
    for options in (RunOptions, RecipeOptions, LoaderOptions):
        try:
            options.of(cfg).check()
        except ValueError as exc:
            name, sep, rest = str(exc).partition("=")
            raise UsageError(f"{flag(name)}={rest}" if sep and " " not in name else str(exc)) from None
    for name in ("steps", "epochs", "batch_size", "kd_temperature"):
        v = getattr(cfg, name)
        if v is not None and not v > 0:
            raise UsageError(f"{flag(name)}={v!r} must be > 0")
    for name, lo, hi in (("ema_decay", 0.0, 1.0 - 1e-12), ("kd_weight", 0.0, 1.0), ("val_fraction", 1e-9, 1 - 1e-9)):
        v = getattr(cfg, name)
        if not lo <= v <= hi:
            raise UsageError(f"{flag(name)}={v!r} must be in [{lo:g}, {hi:g}]")
    if cfg.steps is not None and cfg.epochs is not None:
        raise UsageError(f"give --steps ({cfg.steps}) or --epochs ({cfg.epochs}), not both")
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
        raise UsageError(f"--mixup and --cutmix need an even --batch-size, got {cfg.batch_size}")


def _resolved(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with the paths they set made absolute (``digits`` stays a name)."""
    return {k: str(Path(v).expanduser().resolve()) if k in PATH_FIELDS and v not in (None, "", "digits") else v
            for k, v in fields.items()}


def _read_checkpoint(path: Path) -> dict[str, Any]:
    return read_run_checkpoint(path, kind=KIND, format_version=FORMAT_VERSION, config_type=FinetuneConfig,
                               renamed=RENAMED)


def resolve_config(argv: Sequence[str] | None = None) -> FinetuneConfig:
    """Defaults, then flags; with ``--resume`` (or ``--auto-resume`` of a run with a checkpoint), the
    checkpoint's config (only :data:`RESUME_OVERRIDES` may change)."""
    given = vars(build_parser().parse_args(argv))
    if given.get("augment") == "none":
        given["augment"] = None
    if given.get("source") is None:
        given.pop("source", None)
    try:
        check_given(given)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if given.get("resume"):
        saved = FinetuneConfig(**_read_checkpoint(resume_checkpoint(given["resume"]))["config"])
        for name, v in given.items():
            if name not in RESUME_OVERRIDES and v != getattr(saved, name):
                raise UsageError(f"{name}={v!r} cannot change on --resume (the checkpoint has {getattr(saved, name)!r})")
        cfg = continued_config(saved, given, RESUME_OVERRIDES)
    else:
        if not given.get("source"):
            raise UsageError("give the export directory to fine-tune (or --resume RUN)")
        cfg = FinetuneConfig(**given)
        check_config(cfg)
        point = last_good_checkpoint(Path(cfg.output).expanduser().resolve(), _read_checkpoint) \
            if cfg.auto_resume else None
        if point is not None:
            saved = FinetuneConfig(**point.payload["config"])
            launch = point.payload.get("launch")
            if launch is not None:
                now = _resolved({k: v for k, v in given.items() if k != "output"})
                differ = relaunch_differences(now, {k: v for k, v in launch.items() if k != "output"},
                                              dataclasses.asdict(FinetuneConfig()), RESUME_OVERRIDES)
                if differ:
                    raise UsageError(relaunch_error(saved.output, differ))
            cfg = continued_config(saved, given, RESUME_OVERRIDES, resume=str(point.checkpoint))
    check_config(cfg)
    return cfg


# -- pieces ------------------------------------------------------------------------------
def _student(source: str, drop_path: float) -> nn.Module:
    """The exported subnet, built through timm's local-dir loader (train mode, fp32, on CPU)."""
    import timm

    try:
        export.read_config(source)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return timm.create_model(f"local-dir:{Path(source).resolve()}", pretrained=True, drop_path_rate=drop_path)


class _Teacher:
    """Soft labels of a trained run's largest subnet: ``images [B, C, H, W]`` -> logits ``[B, classes]`` (no grad)."""

    def __init__(self, run: str, device: torch.device, num_classes: int):
        trained = load_run(run, device=str(device))
        if trained.space.num_classes != num_classes:
            raise UsageError(f"--teacher {run!r} has {trained.space.num_classes} classes; the subnet has {num_classes}")
        self.net, self.arch, self.checkpoint = trained.net.eval(), trained.space.largest(), trained.checkpoint
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        return self.net(images, self.arch).float()


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t


@torch.no_grad()
def accuracy(model: nn.Module, loader, device: torch.device, distributed: bool = False) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``loader`` (eval mode, bf16 autocast on CUDA; summed over ranks)."""
    was = model.training
    model.eval()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    counts = torch.zeros(2, dtype=torch.float64)
    try:
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            with amp:
                logits = model(images)
            counts += torch.tensor([float((logits.argmax(-1) == labels).sum()), labels.numel()], dtype=torch.float64)
    finally:
        model.train(was)
    if distributed:
        dist.all_reduce(counts)
    return float(counts[0] / counts[1])


# -- the run -----------------------------------------------------------------------------
def run(cfg: FinetuneConfig, argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Fine-tune (or continue) and export; returns the results (also ``results.json``). Joins a torchrun group.

    Raises :class:`Interrupted` after checkpointing the step a SIGTERM or SIGINT stopped it at; returns
    None when ``--auto-resume`` found the run complete.
    """
    with process_group(cfg.device) as ranks:
        return _run(cfg, ranks, command_line("finetune", argv))


def _run(cfg: FinetuneConfig, ranks: Ranks, command: str | None) -> dict[str, Any] | None:
    from focusformer_fast.data.datasets import choose_augment, load_dataset
    from focusformer_fast.data.loaders import make_loaders

    ckpt = path = None
    launch = launch_record(cfg, _resolved)
    if cfg.resume:
        path = resume_checkpoint(cfg.resume)
        ckpt = _read_checkpoint(path)
        out = path.parent.resolve()
        check_world_size(ckpt, ranks)
        if ckpt["step"] >= cfg.steps and (out / "results.json").is_file():  # without results: finish it
            if cfg.auto_resume:
                if ranks.rank == 0:
                    say("note", f"run {out} is complete (step {ckpt['step']} of {cfg.steps}); nothing to do; "
                                f"its export: {out / EXPORT_NAME}")
                return None
            raise UsageError(f"run {str(out)!r} is complete (step {ckpt['step']} of {cfg.steps}); its export is "
                             f"{out / EXPORT_NAME}")
        launch = ckpt.get("launch")
    else:
        default = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-finetune-s{cfg.seed}"
        out = (Path(cfg.output) if cfg.output else default).expanduser().resolve()
        if cfg.output:
            check_new_output(out, PROG)
        cfg = dataclasses.replace(cfg, **{k: v for k, v in _resolved(dataclasses.asdict(cfg)).items()
                                          if k in PATH_FIELDS})
    device = pick_device(cfg.device, ranks)
    student = _student(cfg.source, cfg.drop_path)
    meta = export.read_config(cfg.source)
    c, size, _ = student.pretrained_cfg["input_size"]
    try:
        augment = choose_augment(cfg.data, cfg.augment)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cfg = dataclasses.replace(cfg, augment=augment.augment, **LoaderOptions.of(cfg).resolved(device))
    if cfg.threads is None:
        tiny = device.type == "cpu" and student.embed_dim <= 64  # as train: digits-sized models run best on 1 thread
        cfg = dataclasses.replace(cfg, threads=1 if tiny else torch.get_num_threads())
    try:
        splits = load_dataset(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, augment=cfg.augment,
                              image_size=None if cfg.data == "digits" else size, cache_dir=cfg.cache_data)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if (splits.in_chans, splits.image_size, splits.num_classes) != (c, size, student.num_classes):
        raise UsageError(f"the subnet takes {size}x{size}x{c} images of {student.num_classes} classes; data "
                         f"{cfg.data!r} has {splits.image_size}x{splits.image_size}x{splits.in_chans} of {splits.num_classes}")
    mean, std = student.pretrained_cfg["mean"], student.pretrained_cfg["std"]
    if not all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip((*mean, *std), (*splits.mean, *splits.std))):
        say("warning", f"the subnet was exported with mean {list(mean)} std {list(std)}; data {cfg.data!r} "
                       f"(seed {cfg.seed}) is normalized with {list(splits.mean)} {list(splits.std)}")
    loaders = make_loaders(splits, cfg.batch_size, seed=cfg.seed, device=device, options=cfg, distributed=ranks.on)
    if len(loaders.train) == 0:
        raise UsageError(f"batch_size={cfg.batch_size} exceeds the {len(splits.train)} training images per rank")
    if cfg.steps is None:
        cfg = dataclasses.replace(cfg, steps=(cfg.epochs or DEFAULT_EPOCHS) * len(loaders.train), epochs=None)
    if cfg.lr_warmup_steps is None:
        cfg = dataclasses.replace(cfg, lr_warmup_steps=cfg.steps // 20)
    teacher = _Teacher(cfg.teacher, device, student.num_classes) if cfg.teacher else None
    if ranks.rank == 0 and ckpt is None:  # every check passed
        say("note", augment.note)
    with taken(out, ranks, new=ckpt is None, default_name=not cfg.output, continuing_from=path) as out:
        cfg = dataclasses.replace(cfg, output=str(out))
        return _train(cfg, ranks, device, out, ckpt, launch, command, student, meta, splits, loaders, teacher)


def _train(cfg: FinetuneConfig, ranks: Ranks, device: torch.device, out: Path, ckpt: dict[str, Any] | None,
           launch: dict[str, Any] | None, command: str | None, student: nn.Module, meta: dict[str, Any], splits,
           loaders, teacher: _Teacher | None) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    student.to(device)
    opt, sched, mix, criterion, erase = recipe.build(RecipeOptions.of(cfg), student, cfg.steps, student.num_classes,
                                                     device)
    ema = None
    if cfg.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(student, decay=cfg.ema_decay)
    model: nn.Module = student
    if ranks.on:
        model = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)

    step, position = 0, {"epoch": 0, "batch": 0}
    if ckpt is not None:
        student.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        step, position = ckpt["step"], ckpt["position"]
        inherited = ckpt["inherited"]
    else:
        inherited = {"val_acc": accuracy(student, loaders.val, device, ranks.on),
                     "test_acc": accuracy(student, loaders.test, device, ranks.on)}
        random.seed(cfg.seed + ranks.rank)  # mixup/cutmix draw from numpy, random erasing from random
        np.random.seed(cfg.seed + ranks.rank)
        torch.manual_seed(cfg.seed + ranks.rank)
    if ranks.rank == 0:
        here = {"versions": versions(device), "argv": sys.argv, "command": command}
        if ckpt is None:
            record_start(out, {"config": dataclasses.asdict(cfg), "seed": cfg.seed, "world_size": ranks.world,
                               "source": {"directory": cfg.source, "record": meta["focusformer"]}, "launch": launch,
                               **here})
        else:
            record_resume(out, step, here, dataclasses.asdict(cfg))
            say("note", f"resuming {out} from step {step} of {cfg.steps}")

    def save(at: int, batches: BatchStream) -> None:
        write_run_checkpoint(out / CHECKPOINT_NAME, {
            "kind": KIND, "format_version": FORMAT_VERSION, "config": dataclasses.asdict(cfg), "step": at,
            "position": batches.position(), "model": student.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "inherited": inherited, "launch": launch, "versions": versions(device)}, ranks)

    stop = min(cfg.stop_at or cfg.steps, cfg.steps)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    params = [p for p in student.parameters() if p.requires_grad]
    metrics = MetricsLog(out, active=ranks.rank == 0)
    progress = Progress(cfg.progress, active=ranks.rank == 0, total=cfg.steps, initial=step, stop=stop,
                        desc="finetune", every=cfg.log_every)
    student.train()
    signum, t_window, n_window = None, time.perf_counter(), 0
    try:
        with StopSignals(ranks) as stop_signals, frozen_heap():  # before the stream starts: workers inherit them
            batches = BatchStream(loaders, position["epoch"], position["batch"])
            if ckpt is not None:  # after the fast-forward, which consumed augmentation randomness
                set_rng_state(ckpt["rng"][ranks.rank])
            while step < stop and signum is None:
                images, labels = batches.next()
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if erase is not None:
                    images = erase(images)
                targets = labels
                if mix is not None:
                    images, targets = mix(images, labels)
                with amp:
                    logits = model(images)
                    soft = teacher(images) if teacher is not None else None
                loss = criterion(logits.float(), targets)
                if soft is not None:
                    loss = (1 - cfg.kd_weight) * loss + cfg.kd_weight * distillation_loss(logits.float(), soft,
                                                                                            cfg.kd_temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(params, cfg.clip_grad)
                opt.step()
                sched.step_update(num_updates=step + 1)
                if ema is not None:
                    ema.update(student, step=step + 1)
                step += 1
                signum = stop_signals.agreed(step)  # on every rank: all stop after the same step
                n_window += images.shape[0] * ranks.world
                if ranks.rank == 0 and (step % cfg.log_every == 0 or step == stop or signum):
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise FloatingPointError(f"loss is {value} at step {step}")
                    lr = opt.param_groups[0]["lr"]
                    metrics.write({"step": step, "epoch": batches.epoch, "loss": value, "lr": lr})
                    now = time.perf_counter()
                    throughput, t_window, n_window = n_window / max(now - t_window, 1e-9), now, 0
                    progress.report(step, {"loss": f"{value:.3f}", "lr": f"{lr:.2e}", "img/s": f"{throughput:.0f}"})
                progress.advance()
                if step % cfg.checkpoint_every == 0 or step == stop or signum:
                    save(step, batches)
    finally:
        progress.close()
        metrics.close()
    if signum:
        if ranks.rank == 0:
            say("note", stopped_note(signum, step, cfg.steps, PROG, out, command, cfg.auto_resume))
        raise Interrupted(signum)
    if step < cfg.steps:
        if ranks.rank == 0:
            print(f"stopped after step {step} of {cfg.steps}; continue with --resume {out}")
        return {"step": step, "inherited": inherited}
    return _finish(out, cfg, step, student, ema, inherited, meta, splits, loaders, device, ranks, teacher)


def _finish(out: Path, cfg: FinetuneConfig, step: int, student: nn.Module, ema, inherited: dict[str, float],
            meta: dict[str, Any], splits, loaders, device: torch.device, ranks: Ranks, teacher) -> dict[str, Any]:
    """Score the fine-tuned (or EMA) weights, export them, write and print the results."""
    final = ema.module if ema is not None else student
    tuned = {"val_acc": accuracy(final, loaders.val, device, ranks.on),
             "test_acc": accuracy(final, loaders.test, device, ranks.on)}
    source = meta["focusformer"]
    results = {"source": cfg.source, "steps": step, "weights": "ema" if ema is not None else "last",
               "teacher": str(teacher.checkpoint) if teacher is not None else None,
               "inherited": inherited, "finetuned": tuned, "seed": cfg.seed, "config": dataclasses.asdict(cfg),
               "versions": versions(device), "export": str(out / EXPORT_NAME)}
    if ranks.rank == 0:
        space = SearchSpace.from_dict(source["space"]) if "space" in source else None
        extra = {**{k: v for k, v in source.get("extra", {}).items() if k not in ("val_acc", "test_acc")},
                 "val_acc": tuned["val_acc"], "test_acc": tuned["test_acc"],
                 "inherited_val_acc": inherited["val_acc"], "inherited_test_acc": inherited["test_acc"],
                 "finetune": {"run": str(out), "steps": step, "seed": cfg.seed, "teacher": results["teacher"],
                              "source": cfg.source}}
        export.save(final, out / EXPORT_NAME, extra=extra, space=space, data=splits)
        write_json_atomic(out / "results.json", results)
        print(f"{'':10} {'val':>7} {'test':>7}")
        for name, r in (("inherited", inherited), ("finetuned", tuned)):
            print(f"{name:10} {100 * r['val_acc']:6.2f}% {100 * r['test_acc']:6.2f}%")
        print(f"exported the fine-tuned subnet to {out / EXPORT_NAME}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes; 143/130 after a
    SIGTERM/SIGINT stopped the run (checkpointed)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda: run(resolve_config(args), args))


if __name__ == "__main__":
    sys.exit(main())
