"""python -m focusformer_fast.finetune: runs, reports inherited vs fine-tuned accuracy, resumes exactly,
exports a timm model, and distils from a trained run's largest subnet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from focusformer_fast import SearchSpace
from focusformer_fast.models import export
from focusformer_fast.training.config import TrainConfig
from focusformer_fast.data.datasets import load_dataset
from focusformer_fast.data.loaders import make_loaders
from focusformer_fast.nas.evaluate import accuracy as supernet_accuracy
from focusformer_fast.finetune import main
from focusformer_fast.train import run as train

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


def test_digits_experiment_reports_its_runs(tmp_path, capsys):
    from focusformer_fast.experiments.finetune_digits import main as experiment

    work, output = tmp_path / "work", tmp_path / "docs" / "ft"
    assert experiment(["--seeds", "0", "--work", str(work), "--output", str(output), "--budget", "2M",
                       "--train-args", "--steps 10 --specialize-n 2 --num-budgets 2", "--finetune-args", "--steps 2"]) == 0
    raw = json.loads((tmp_path / "docs" / "ft_raw.json").read_text())
    table = (tmp_path / "docs" / "ft.md").read_text()
    for variant, run in (("finetune", "ft-s0"), ("finetune --teacher", "ftkd-s0")):
        results = json.loads((work / run / "results.json").read_text())
        assert raw["seeds"][0][variant] == results
        assert f"| `{variant}` | {100 * results['finetuned']['val_acc']:.2f} ± 0.00 | " \
               f"{100 * results['finetuned']['test_acc']:.2f} ± 0.00 |" in table
    assert raw["seeds"][0]["search"]["flops"] <= 2e6 and "torch" in raw["versions"]
    assert raw["devices"] == [results["versions"]["device"]]
    assert results["teacher"] == str(work / "run-s0" / "checkpoint.pt")


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
