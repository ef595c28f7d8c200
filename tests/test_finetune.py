"""python -m focusformer_fast.finetune: runs, reports inherited vs fine-tuned accuracy, resumes exactly,
exports a timm model, and distils from a trained run's largest subnet; one-line errors; DDP ranks agree.
Its run directory through the real command: SIGINT then ``--resume`` equals the uninterrupted run, a run
stopped under ``--auto-resume`` continues with the command it suggests, ``kill -9`` before the first
checkpoint then the same command goes on, and a checkpoint from before the shared recipe fields resumes."""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from _child_runs import assert_equal, finish, launch, signal_after
from _tiny_runs import TINY
from focusformer_fast import SearchSpace
from focusformer_fast.data.datasets import load_dataset
from focusformer_fast.data.loaders import make_loaders
from focusformer_fast.finetune import main
from focusformer_fast.models import export
from focusformer_fast.nas.evaluate import accuracy as supernet_accuracy
from focusformer_fast.train import main as train_main
from focusformer_fast.train import run as train
from focusformer_fast.training.config import TrainConfig
from focusformer_fast.training.runs import CHECKPOINT_NAME
from focusformer_fast.utils.checkpoints import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
SPACE = SearchSpace.preset("digits")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 20-step supernet run and its middle subnet exported with the run's data."""
    root = tmp_path_factory.mktemp("ft")
    result = train(TrainConfig(steps=20, batch_size=64, specialize_n=2, num_budgets=2, output=str(root / "run"),
                               progress=False))
    arch = SPACE.middle()
    data = load_dataset("digits", seed=0, augment=None)
    export.save(result.net.extract(arch), root / "subnet", space=SPACE, data=data)
    return root, result.net.eval(), arch, data


def _finetune(out: Path, src: Path, *extra: str) -> int:
    return main([str(src), "--output", str(out), "--batch-size", "32", "--no-progress", "--log-every", "1", *extra])


def _test_accuracy(model, data) -> float:
    model.eval()
    with torch.no_grad():
        pairs = [(model(x.unsqueeze(0)).argmax().item(), y) for x, y in data.test]
    return sum(p == y for p, y in pairs) / len(pairs)


def test_finetune_reports_inherited_and_tuned_accuracy_and_exports_a_timm_model(source, tmp_path, capsys):
    root, net, arch, data = source
    out = tmp_path / "ft"
    assert _finetune(out, root / "subnet", "--steps", "6", "--mixup", "0.2", "--reprob", "0.25") == 0
    printed = capsys.readouterr().out
    assert "inherited" in printed and "finetuned" in printed
    results = json.loads((out / "results.json").read_text())
    loaders = make_loaders(data, 256, seed=0)
    for split in ("val", "test"):
        inherited = supernet_accuracy(net, arch, getattr(loaders, split), torch.device("cpu"))
        assert results["inherited"][f"{split}_acc"] == pytest.approx(inherited)
    tuned = timm.create_model(f"local-dir:{out / 'export'}", pretrained=True)
    assert results["finetuned"]["test_acc"] == pytest.approx(_test_accuracy(tuned, data))
    record = export.read_config(out / "export")["focusformer"]
    assert record["arch"] == arch.to_dict() and record["flops"] == SPACE.flops(arch)
    assert record["extra"]["inherited_test_acc"] == results["inherited"]["test_acc"]
    assert record["extra"]["finetune"]["steps"] == 6 and record["extra"]["finetune"]["teacher"] is None
    info = json.loads((out / "run.json").read_text())
    assert info["seed"] == 0 and "torch" in info["versions"] and info["source"]["record"]["arch"] == arch.to_dict()
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))


def test_resume_equals_an_uninterrupted_run(source, tmp_path):
    from focusformer_fast.utils.checkpoints import load_checkpoint

    root, *_ = source
    recipe = ("--steps", "8", "--mixup", "0.3", "--cutmix", "1.0", "--reprob", "0.5", "--drop-path", "0.1",
              "--ema-decay", "0.5", "--checkpoint-every", "100")
    assert _finetune(tmp_path / "full", root / "subnet", *recipe) == 0
    assert _finetune(tmp_path / "part", root / "subnet", *recipe, "--stop-at", "3") == 0
    assert not (tmp_path / "part" / "export").exists()
    assert main(["--resume", str(tmp_path / "part"), "--no-progress"]) == 0
    full, resumed = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("full", "part"))
    assert full["step"] == resumed["step"] == 8
    for key in ("model", "ema"):
        for name, value in full[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name}"
    losses = [(tmp_path / d / "metrics.jsonl").read_text() for d in ("full", "part")]
    assert losses[0] == losses[1]
    runinfo = json.loads((tmp_path / "part" / "run.json").read_text())
    assert [r["step"] for r in runinfo["resumes"]] == [3]


def test_teacher_loss_is_the_largest_subnets_distillation(source, tmp_path):
    root, net, _, data = source
    out = tmp_path / "kd"
    rc = _finetune(out, root / "subnet", "--steps", "1", "--teacher", str(root / "run"), "--kd-weight", "1.0",
                   "--kd-temperature", "2.0", "--smoothing", "0")
    assert rc == 0
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    loaders = make_loaders(data, 32, seed=0)
    loaders.set_epoch(0)
    images, _ = next(iter(loaders.train))
    student = export.load(root / "subnet").train()
    with torch.no_grad():
        p_teacher = F.softmax(net(images, SPACE.largest()) / 2.0, dim=-1)
        log_p_student = F.log_softmax(student(images) / 2.0, dim=-1)
    want = 4.0 * (p_teacher * (p_teacher.log() - log_p_student)).sum(-1).mean()
    assert logged == pytest.approx(float(want), rel=1e-5)
    assert json.loads((out / "results.json").read_text())["teacher"] == str(root / "run" / "checkpoint.pt")


@pytest.mark.parametrize("argv, says", [
    (["--kd-weight", "1.5"], "--kd-weight=1.5 must be in [0, 1]"),
    (["--steps", "2", "--epochs", "1"], "give --steps (2) or --epochs (1), not both"),
    (["--teacher", "nowhere"], f"checkpoint {str(Path('nowhere').resolve())!r} does not exist"),  # stored resolved
])
def test_bad_flags_are_one_line_errors(source, tmp_path, capsys, argv, says):
    root, *_ = source
    assert _finetune(tmp_path / "x", root / "subnet", *argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {says}"
    assert not (tmp_path / "x").exists()


def test_bad_source_output_and_resume_are_one_line_errors(source, tmp_path, capsys):
    root, *_ = source
    assert _finetune(tmp_path / "x", tmp_path / "no-subnet") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    assert _finetune(tmp_path / "taken", root / "subnet") == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert _finetune(tmp_path / "p", root / "subnet", "--steps", "2", "--stop-at", "1") == 0
    capsys.readouterr()
    assert main(["--resume", str(tmp_path / "p"), "--lr", "0.1"]) == 2
    assert capsys.readouterr().err.strip() == "error: lr=0.1 cannot change on --resume (the checkpoint has 0.0005)"


def _ddp_worker(rank: int, world: int, port: int, src: str, out: str, results: str) -> None:
    import os

    from focusformer_fast.finetune import FinetuneConfig, run

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    res = run(FinetuneConfig(source=src, steps=4, batch_size=32, mixup=0.2, output=out, progress=False, log_every=1))
    torch.save({"results": res}, Path(results) / f"rank{rank}.pt")


def test_ddp_ranks_agree_and_accuracy_is_summed_over_shards(source, tmp_path):
    import socket

    import torch.multiprocessing as mp

    root, net, arch, data = source
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(root / "subnet"), str(tmp_path / "ft"), str(tmp_path)), nprocs=2,
             join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["results"]["finetuned"] == r1["results"]["finetuned"]
    loaders = make_loaders(data, 256, seed=0)
    assert r0["results"]["inherited"]["test_acc"] == pytest.approx(
        supernet_accuracy(net, arch, loaders.test, torch.device("cpu")))
    assert r0["results"]["finetuned"]["test_acc"] == pytest.approx(
        _test_accuracy(export.load(tmp_path / "ft" / "export"), data))
    assert json.loads((tmp_path / "ft" / "run.json").read_text())["world_size"] == 2


# -- the run directory, through the real command ----------------------------------------------------


FT_FLAGS = ["--steps", "60", "--batch-size", "32", "--mixup", "0.3", "--reprob", "0.25", "--drop-path", "0.1",
            "--ema-decay", "0.9", "--log-every", "1", "--checkpoint-every", "1000", "--no-progress"]


@pytest.fixture(scope="module")
def subnet(tmp_path_factory) -> Path:
    """A subnet exported from a 10-step supernet run."""
    root = tmp_path_factory.mktemp("subnet")
    assert train_main([*TINY, "--steps", "10", "--output", str(root / "run")]) == 0
    from focusformer_fast import search

    assert search.main([str(root / "run"), "--budget", "3M", "--export", str(root / "models")]) == 0
    return root / "models" / "budget-3M"


def test_finetune_sigterm_then_resume_equals_the_uninterrupted_run(tmp_path, subnet, capsys):
    from focusformer_fast import finetune

    assert finetune.main([str(subnet), *FT_FLAGS, "--output", str(tmp_path / "full")]) == 0
    out = tmp_path / "part"
    proc = launch([str(subnet), *FT_FLAGS, "--output", str(out)], tmp_path, command="finetune")
    signal_after(proc, out, 3, signal.SIGINT)
    rc, _, err = finish(proc)
    assert rc == 128 + signal.SIGINT, err  # base code: KeyboardInterrupt, no checkpoint
    step = load_checkpoint(out / CHECKPOINT_NAME)["step"]
    assert 3 <= step < 60 and f"stopped by SIGINT after step {step} of 60" in err
    capsys.readouterr()
    assert finetune.main(["--resume", str(out)]) == 0
    for key in ("model", "ema"):
        assert_equal(load_checkpoint(out / CHECKPOINT_NAME)[key], load_checkpoint(tmp_path / "full" / CHECKPOINT_NAME)[key])
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()


def test_finetune_stopped_under_auto_resume_continues_with_the_command_it_suggests(tmp_path, subnet, capsys):
    from focusformer_fast import finetune

    assert finetune.main([str(subnet), *FT_FLAGS, "--output", str(tmp_path / "full")]) == 0
    out = tmp_path / "part"
    proc = launch([str(subnet), *FT_FLAGS, "--auto-resume", "--output", str(out)], tmp_path, command="finetune")
    signal_after(proc, out, 3, signal.SIGTERM)
    rc, _, err = finish(proc)
    assert rc == 128 + signal.SIGTERM, err
    suggested = shlex.split(err.split("continue with: ")[1].splitlines()[0])
    assert suggested[:3] == ["python", "-m", "focusformer_fast.finetune"]
    capsys.readouterr()
    assert finetune.main(suggested[3:]) == 0  # before: TypeError (resume given twice)
    for key in ("model", "ema"):
        assert_equal(load_checkpoint(out / CHECKPOINT_NAME)[key], load_checkpoint(tmp_path / "full" / CHECKPOINT_NAME)[key])


def test_finetune_kill_9_before_the_first_checkpoint_then_the_same_command_goes_on(tmp_path, subnet, capsys):
    from focusformer_fast import finetune

    out = tmp_path / "ft"
    args = [str(subnet), *FT_FLAGS, "--output", str(out)]
    proc = launch(args, tmp_path, command="finetune")
    signal_after(proc, out, 2, signal.SIGKILL)
    proc.wait()
    assert not (out / CHECKPOINT_NAME).exists()
    assert finetune.main(args) == 0  # base code: "already exists and is not empty"
    assert f"reclaiming {out}" in capsys.readouterr().err
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 60 and (out / "export" / "config.json").is_file()


def test_finetune_resumes_a_checkpoint_from_before_the_shared_recipe_fields(tmp_path, subnet, capsys):
    from focusformer_fast import finetune
    from focusformer_fast.utils.checkpoints import save_checkpoint

    out = tmp_path / "ft"
    assert finetune.main([str(subnet), "--steps", "6", "--stop-at", "3", "--warmup-steps", "2", "--no-progress",
                          "--output", str(out)]) == 0
    assert "warning: --warmup-steps is deprecated; use --lr-warmup-steps" in capsys.readouterr().err
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    config = ckpt["config"]  # as today's main wrote it: warmup_steps, no clip_grad / auto_resume, no launch
    config["warmup_steps"] = config.pop("lr_warmup_steps")
    for name in ("clip_grad", "auto_resume"):
        del config[name]
    del ckpt["launch"]
    save_checkpoint(out / CHECKPOINT_NAME, ckpt)
    assert finetune.main(["--resume", str(out)]) == 0
    done = load_checkpoint(out / CHECKPOINT_NAME)
    assert done["step"] == 6 and done["config"]["lr_warmup_steps"] == 2
