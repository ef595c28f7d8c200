"""``python -m focusformer_fast.finetune DIR --data ...``: fine-tune an exported subnet, export it again.

The subnet (an export directory: ``search --export``) is loaded as the timm model it is and
trained with timm's recipe (:mod:`focusformer_fast.recipe`: AdamW through
``create_optimizer_v2``, ``CosineLRScheduler`` per step with warmup, ``Mixup`` with cutmix and
label smoothing, random erasing; optionally EMA weights, ``ModelEmaV3``), in bf16 autocast on
CUDA. With ``--teacher RUN`` it also distils from a trained supernet run: the soft labels of its
largest subnet, ``loss = (1 - w) * loss + w * T^2 * KL(teacher_T || student_T)`` with
``T = --kd-temperature`` and ``w = --kd-weight``.

Before and after training it scores the model on the data's val and test splits (the same
splits as the supernet's run for the same ``--data``, ``--seed`` and ``--val-fraction``) and
reports inherited vs fine-tuned accuracy. The run directory (``--output``) holds

  ``run.json``       config, seed, versions, device, world size, source export, resumes
  ``metrics.jsonl``  one record every ``--log-every`` steps
  ``checkpoint.pt``  model, optimizer, schedule, EMA, RNG states and data position (atomic,
                     checksummed, the previous one kept as ``checkpoint.prev.pt``)
  ``results.json``   inherited vs fine-tuned val/test accuracy
  ``export/``        the fine-tuned subnet, an export directory of the same format (timm loads it)

``--resume OUT`` continues a stopped run exactly (on CPU, bit for bit). Multi-GPU:
``torchrun --nproc-per-node N -m focusformer_fast.finetune ...`` (DDP; ``--batch-size`` per rank)::

    python -m focusformer_fast.finetune subnets/budget-2M --data digits --epochs 10 --output ft/
    python -m focusformer_fast.finetune subnets/budget-2M --data digits --teacher runs/my-run --output ft-kd/
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
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

from . import export, recipe
from .atomic_files import atomic_write, write_json_atomic
from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .cli import Parser, UsageError, add_version, flag, run_cli, say, state_defaults
from .config import add_option_flags
from .data_options import AUGMENT_HELP, LoaderOptions
from .distributed import Ranks, init_distributed
from .runs import CHECKPOINT_NAME, checkpoint_path, load_run, rng_state, set_rng_state
from .space import SearchSpace
from .version import versions

PROG = "python -m focusformer_fast.finetune"
FORMAT_VERSION = 1
EXPORT_NAME = "export"
DEFAULT_EPOCHS = 10
RESUME_OVERRIDES = ("resume", "stop_at", "progress")
"""Fields that may differ from the checkpoint's config on ``--resume``; they do not change the result."""


@dataclass
class FinetuneConfig(LoaderOptions):
    """Everything a fine-tuning run depends on. Steps are optimizer steps; ``batch_size`` is per rank."""

    source: str = ""  # the export directory to fine-tune
    data: str = "digits"
    output: str | None = None
    steps: int | None = None  # default: epochs * batches per epoch
    epochs: int | None = None  # default DEFAULT_EPOCHS when steps is not given
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_steps: int | None = None  # default 5% of steps
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    reprob: float = 0.0
    drop_path: float = 0.0
    ema_decay: float = 0.0  # 0: no EMA; else ModelEmaV3 decay, and the EMA weights are exported
    teacher: str | None = None  # a training run (directory or checkpoint) to distil from
    kd_temperature: float = 1.0
    kd_weight: float = 0.5
    augment: str | None = "auto"  # chosen by the data (data.choose_augment) and recorded as chosen
    val_fraction: float = 0.1
    seed: int = 0
    device: str | None = None
    threads: int | None = None  # default: 1 for digits on CPU, else torch's
    log_every: int = 10
    checkpoint_every: int = 200
    resume: str | None = None
    stop_at: int | None = None
    progress: bool = True


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, argument_default=argparse.SUPPRESS,
               description="Fine-tune an exported subnet with timm's recipe (optionally distilling from a trained "
                           "supernet run), report inherited vs fine-tuned accuracy, export the result.")
    p.add_argument("source", nargs="?", help="an export directory (search --export); omit with --resume")
    p.add_argument("--data", help="'digits' (bundled), a CIFAR-100 folder, or an ImageFolder root (default digits)")
    p.add_argument("--output", help="run directory (default runs/<time>-finetune-s<seed>)")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--epochs", type=int, help=f"epochs instead of --steps (default {DEFAULT_EPOCHS})")
    p.add_argument("--batch-size", type=int, help="images per step per rank (default 64)")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate (default 5e-4)")
    p.add_argument("--min-lr", type=float, help="final learning rate of the cosine schedule (default 1e-6)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.05; none on norms, biases, "
                                                      "CLS token, position embedding)")
    p.add_argument("--warmup-steps", type=int, help="linear warmup steps (default 5%% of steps)")
    p.add_argument("--smoothing", type=float, help="label smoothing (default 0.1)")
    p.add_argument("--mixup", type=float, help="mixup alpha (default 0: off)")
    p.add_argument("--cutmix", type=float, help="cutmix alpha (default 0: off)")
    p.add_argument("--reprob", type=float, help="random erasing probability per image (default 0: off)")
    p.add_argument("--drop-path", type=float, help="stochastic depth rate of the last block (default 0)")
    p.add_argument("--ema-decay", type=float, help="keep EMA weights (timm ModelEmaV3) with this decay and export "
                                                   "them (default 0: off)")
    p.add_argument("--teacher", help="distil from this training run's largest subnet (run directory or checkpoint)")
    p.add_argument("--kd-temperature", type=float, help="distillation temperature T (default 1)")
    p.add_argument("--kd-weight", type=float, help="weight w of the distillation term, in [0, 1] (default 0.5)")
    p.add_argument("--augment", help=AUGMENT_HELP)
    p.add_argument("--val-fraction", type=float, help="held-out share of the training files (default 0.1)")
    p.add_argument("--seed", type=int, help="seed of splits, order, augmentation (default 0)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    add_option_flags(p, LoaderOptions)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: 1 for digits on CPU)")
    p.add_argument("--log-every", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--resume", help="a fine-tuning run directory or its checkpoint.pt to continue")
    p.add_argument("--stop-at", type=int, help="stop with a checkpoint after this step")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, help="progress bar on a terminal")
    add_version(p)
    return state_defaults(p, {f.name: f.default for f in dataclasses.fields(FinetuneConfig)})


def check_config(cfg: FinetuneConfig) -> None:
    """Raise :class:`UsageError` naming the first field out of range."""
    for name in ("steps", "epochs", "batch_size", "lr", "log_every", "checkpoint_every", "stop_at", "threads",
                 "kd_temperature"):
        v = getattr(cfg, name)
        if v is not None and not v > 0:
            raise UsageError(f"{flag(name)}={v!r} must be > 0")
    for name in ("min_lr", "weight_decay", "warmup_steps", "mixup", "cutmix"):
        v = getattr(cfg, name)
        if v is not None and not v >= 0:
            raise UsageError(f"{flag(name)}={v!r} must be >= 0")
    for name, lo, hi in (("smoothing", 0.0, 0.99), ("reprob", 0.0, 1.0), ("drop_path", 0.0, 0.99),
                         ("ema_decay", 0.0, 1.0 - 1e-12), ("kd_weight", 0.0, 1.0), ("val_fraction", 1e-9, 1 - 1e-9)):
        v = getattr(cfg, name)
        if not lo <= v <= hi:
            raise UsageError(f"{flag(name)}={v!r} must be in [{lo:g}, {hi:g}]")
    if cfg.steps is not None and cfg.epochs is not None:
        raise UsageError(f"give --steps ({cfg.steps}) or --epochs ({cfg.epochs}), not both")
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
        raise UsageError(f"--mixup and --cutmix need an even --batch-size, got {cfg.batch_size}")
    if cfg.device not in (None, "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise UsageError(f"--device={cfg.device!r} is not allowed; allowed: cpu, cuda, cuda:N")
    try:
        LoaderOptions.of(cfg).check()
    except ValueError as exc:
        name, _, rest = str(exc).partition("=")
        raise UsageError(f"{flag(name)}={rest}") from None


def resolve_config(argv: Sequence[str] | None = None) -> FinetuneConfig:
    """Defaults, then flags; with ``--resume``, the checkpoint's config (only :data:`RESUME_OVERRIDES` may change)."""
    given = vars(build_parser().parse_args(argv))
    if given.get("augment") == "none":
        given["augment"] = None
    if given.get("source") is None:
        given.pop("source", None)
    if given.get("resume"):
        saved = FinetuneConfig(**_read_checkpoint(checkpoint_path(given["resume"]))["config"])
        for name, v in given.items():
            if name not in RESUME_OVERRIDES and v != getattr(saved, name):
                raise UsageError(f"{name}={v!r} cannot change on --resume (the checkpoint has {getattr(saved, name)!r})")
        defaults = FinetuneConfig()
        cfg = dataclasses.replace(saved, **{k: given.get(k, getattr(defaults, k)) for k in RESUME_OVERRIDES})
    else:
        if not given.get("source"):
            raise UsageError("give the export directory to fine-tune (or --resume RUN)")
        cfg = FinetuneConfig(**given)
    check_config(cfg)
    return cfg


# -- checkpoints -----------------------------------------------------------------------
def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    if ckpt.get("kind") != "finetune":
        raise UsageError(f"checkpoint {str(path)!r} is not a fine-tuning checkpoint")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"checkpoint {str(path)!r} has format_version={ckpt.get('format_version')}; "
                         f"this version reads {FORMAT_VERSION}")
    if set(ckpt["config"]) != {f.name for f in dataclasses.fields(FinetuneConfig)}:
        raise UsageError(f"checkpoint {str(path)!r} has a config with other fields than this version's")
    return ckpt


# -- pieces ------------------------------------------------------------------------------
def _device(cfg: FinetuneConfig, ranks: Ranks) -> torch.device:
    want = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device={want!r} is not available: no CUDA GPU visible")
        return torch.device(want if ":" in want else f"cuda:{ranks.local_rank}")
    return torch.device("cpu")


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


class _Stream:
    """Training batches forever, resumable: the next batch is batch ``batch`` of epoch ``epoch``.

    Built at a position, it replays that epoch's first batches at once (exact; costs their
    loading), so that RNG states restored afterwards continue where the checkpoint left them.
    """

    def __init__(self, loaders, epoch: int, batch: int):
        self.loaders, self.epoch = loaders, epoch
        self._start(batch)

    def _start(self, skip: int) -> None:
        self.loaders.set_epoch(self.epoch)
        self.it = iter(self.loaders.train)
        for _ in range(skip):
            next(self.it)
        self.batch = skip

    def next(self) -> tuple[Tensor, Tensor]:
        try:
            out = next(self.it)
        except StopIteration:
            self.epoch += 1
            self._start(0)
            out = next(self.it)
        self.batch += 1
        return out

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}


# -- the run -----------------------------------------------------------------------------
def run(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune (or continue) and export; returns the results (also ``results.json``). Joins a torchrun group."""
    ranks, created = init_distributed(cfg.device)
    try:
        return _run(cfg, ranks)
    finally:
        if created:
            dist.destroy_process_group()


def _run(cfg: FinetuneConfig, ranks: Ranks) -> dict[str, Any]:
    from .data import choose_augment, load_dataset, make_loaders

    ckpt = None
    if cfg.resume:
        path = checkpoint_path(cfg.resume)
        ckpt = _read_checkpoint(path)
        out = path.parent
        if ckpt["world_size"] != ranks.world:
            raise UsageError(f"checkpoint was written by {ckpt['world_size']} ranks; this run has {ranks.world}")
    else:
        out = Path(cfg.output) if cfg.output else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-finetune-s{cfg.seed}"
        if ranks.on:  # one name for all ranks (the default one holds the time)
            shared = [str(out)]
            dist.broadcast_object_list(shared, 0)
            out = Path(shared[0])
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"output {str(out)!r} already exists and is not empty; use --resume {out} or another --output")
    device = _device(cfg, ranks)
    student = _student(cfg.source, cfg.drop_path)
    meta = export.read_config(cfg.source)
    c, size, _ = student.pretrained_cfg["input_size"]
    try:
        augment = choose_augment(cfg.data, cfg.augment)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cfg = dataclasses.replace(cfg, augment=augment.augment, **LoaderOptions.of(cfg).resolved(device))
    if cfg.threads is None:
        cfg = dataclasses.replace(cfg, threads=1 if device.type == "cpu" and cfg.data == "digits" else torch.get_num_threads())
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
    if cfg.warmup_steps is None:
        cfg = dataclasses.replace(cfg, warmup_steps=cfg.steps // 20)
    cfg = dataclasses.replace(cfg, output=str(out))
    teacher = _Teacher(cfg.teacher, device, student.num_classes) if cfg.teacher else None
    if ranks.rank == 0 and ckpt is None:  # every check passed
        say("note", augment.note)
    torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    torch.manual_seed(cfg.seed)
    student.to(device)
    opt = recipe.optimizer(student, cfg.lr, cfg.weight_decay)
    sched = recipe.cosine_schedule(opt, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr)
    mix, criterion = recipe.mixup_and_loss(cfg.mixup, cfg.cutmix, cfg.smoothing, student.num_classes)
    erase = recipe.random_erasing(cfg.reprob, device)
    ema = None
    if cfg.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(student, decay=cfg.ema_decay)
    model: nn.Module = student
    if ranks.on:
        model = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)

    step, epoch, skip = 0, 0, 0
    if ckpt is not None:
        student.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        step, epoch, skip = ckpt["step"], ckpt["position"]["epoch"], ckpt["position"]["batch"]
        inherited = ckpt["inherited"]
    else:
        inherited = {"val_acc": accuracy(student, loaders.val, device, ranks.on),
                     "test_acc": accuracy(student, loaders.test, device, ranks.on)}
        random.seed(cfg.seed + ranks.rank)  # mixup/cutmix draw from numpy, random erasing from random
        np.random.seed(cfg.seed + ranks.rank)
        torch.manual_seed(cfg.seed + ranks.rank)
    if ranks.on:  # every rank checked the output before rank 0 creates it
        dist.barrier()
    if ranks.rank == 0:
        _start_files(out, cfg, ckpt, step, ranks, device, meta)
    batches = _Stream(loaders, epoch, skip)
    if ckpt is not None:
        set_rng_state(ckpt["rng"][ranks.rank])
    stop = min(cfg.stop_at or cfg.steps, cfg.steps)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    metrics = open(out / "metrics.jsonl", "a") if ranks.rank == 0 else None
    bar = None
    if ranks.rank == 0 and cfg.progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=stop, initial=step, desc="finetune", unit="step", dynamic_ncols=True, mininterval=0.5)
    student.train()
    try:
        while step < stop:
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
            opt.step()
            sched.step_update(num_updates=step + 1)
            if ema is not None:
                ema.update(student, step=step + 1)
            step += 1
            if metrics is not None and (step % cfg.log_every == 0 or step == stop):
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"loss is {value} at step {step}")
                metrics.write(json.dumps({"step": step, "epoch": batches.epoch, "loss": value,
                                          "lr": opt.param_groups[0]["lr"]}) + "\n")
                metrics.flush()
            if bar is not None:
                bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == stop:
                _save(out, cfg, step, batches.position(), student, opt, sched, ema, inherited, ranks)
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    if step < cfg.steps:
        if ranks.rank == 0:
            print(f"stopped after step {step} of {cfg.steps}; continue with --resume {out}")
        return {"step": step, "inherited": inherited}
    return _finish(out, cfg, step, student, ema, inherited, meta, splits, loaders, device, ranks, teacher)


def _save(out: Path, cfg: FinetuneConfig, step: int, position: dict[str, int], student: nn.Module, opt, sched, ema,
          inherited: dict[str, float], ranks: Ranks) -> None:
    rng = [rng_state()]
    if ranks.on:
        rng = [None] * ranks.world
        dist.all_gather_object(rng, rng_state())
    if ranks.rank == 0:
        save_checkpoint(out / CHECKPOINT_NAME, {
            "kind": "finetune", "format_version": FORMAT_VERSION, "config": dataclasses.asdict(cfg), "step": step,
            "position": position, "world_size": ranks.world, "model": student.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "inherited": inherited, "rng": rng})
    if ranks.on:
        dist.barrier()


def _start_files(out: Path, cfg: FinetuneConfig, ckpt, step: int, ranks: Ranks, device: torch.device,
                 meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    info_path = out / "run.json"
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    if ckpt is None:
        info = {"config": dataclasses.asdict(cfg), "seed": cfg.seed, "world_size": ranks.world,
                "versions": versions(device), "argv": sys.argv, "started": now,
                "source": {"directory": cfg.source, "record": meta["focusformer"]}, "resumes": []}
    else:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {"config": dataclasses.asdict(cfg)}
        info.setdefault("resumes", []).append({"step": step, "time": now, "versions": versions(device),
                                               "argv": sys.argv})
        metrics = out / "metrics.jsonl"
        if metrics.is_file():
            keep = [ln for ln in metrics.read_text().splitlines() if _step_of(ln) <= step]
            atomic_write(metrics, lambda f: f.write("".join(ln + "\n" for ln in keep).encode()))
    write_json_atomic(info_path, info)


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


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
    """CLI entry: one-line ``error: ...`` on stderr and exit code 2 for user mistakes."""
    return run_cli(lambda: run(resolve_config(argv)))


if __name__ == "__main__":
    sys.exit(main())
