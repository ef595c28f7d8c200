"""The training CLI and loop: resume, DDP, config resolution, one-line errors (CPU, tiny runs)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from focusformer_fast.space import Arch, SearchSpace
from focusformer_fast.utils.cli import UsageError
from focusformer_fast.training.config import TrainConfig
from focusformer_fast.training.runs import CHECKPOINT_NAME, read_checkpoint
from focusformer_fast.train import main, resolve_config, run

REPO = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.preset("digits")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out: Path, **kw) -> TrainConfig:
    """12 steps over 2+ epochs (5 batches of 256 per epoch), touching every source of randomness:
    augmentation, mixup (numpy), drop path (torch), ε-uniform draws and policy updates."""
    base = dict(steps=12, batch_size=256, augment="basic", mixup=0.2, smoothing=0.1, drop_path=0.1,
                sampler="focus", sampler_warmup=2, update_every=2, epsilon=0.3, reward_batch_size=64,
                log_every=1, specialize_n=3, output=str(out), progress=False)
    base.update(kw)
    return TrainConfig(**base)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and the same run stopped after step 7 then resumed."""
    root = tmp_path_factory.mktemp("runs")
    full = run(tiny(root / "full"))
    part = run(tiny(root / "part", stop_at=7))
    resumed = run(TrainConfig(resume=str(root / "part"), progress=False))
    return root, full, part, resumed


def test_resume_equals_uninterrupted_run(runs):
    root, full, part, resumed = runs
    assert (part.step, resumed.step, full.step) == (7, 12, 12)
    assert part.table == []
    assert part.losses + resumed.losses == full.losses  # bit-identical floats
    assert part.archs + resumed.archs == full.archs
    assert metrics(root / "part") == [{**m, "img_per_s": p["img_per_s"]} for m, p in
                                      zip(metrics(root / "full"), metrics(root / "part"))]
    for name, t in full.net.state_dict().items():
        assert torch.equal(t, resumed.net.state_dict()[name]), name
    for name, t in full.sampler.policy.state_dict().items():
        assert torch.equal(t, resumed.sampler.policy.state_dict()[name]), name
    assert full.table == resumed.table
    info = json.loads((root / "part" / "run.json").read_text())
    assert [r["step"] for r in info["resumes"]] == [7]


def test_run_files_and_final_table(runs):
    root, full, _, _ = runs
    out = root / "full"
    info = json.loads((out / "run.json").read_text())
    assert info["seed"] == 0 and info["config"]["steps"] == 12
    assert {"torch", "python", "focusformer_fast", "device"} <= set(info["versions"])
    assert [m["step"] for m in metrics(out)] == list(range(1, 13))
    ckpt = read_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["step"] == 12 and ckpt["format_version"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 5 and rows == full.table
    for row in rows:
        arch = Arch.from_dict(row["arch"])
        assert SPACE.flops(arch) == row["cost"] <= row["budget"]
        assert 0.0 <= row["val_acc"] <= 1.0 and 0.0 <= row["test_acc"] <= 1.0


def test_resume_refuses_a_changed_flag(runs):
    root = runs[0]
    with pytest.raises(UsageError, match="lr=0.5 cannot change on --resume"):
        resolve_config(["--resume", str(root / "part"), "--lr", "0.5"])
    assert resolve_config(["--resume", str(root / "part"), "--stop-at", "3"]).stop_at == 3
    assert resolve_config(["--resume", str(root / "part"), "--graphs"]).graphs  # how blocks launch, not what they compute: may change


def test_yaml_defaults_then_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"steps": 5, "lr": 0.002, "sampler": "sandwich", "budgets": "1M,2M",
                                        "budget-mask": False}))
    cfg = resolve_config(["--config", str(cfg_file), "--lr", "0.003"])
    assert (cfg.steps, cfg.lr, cfg.sampler, cfg.budgets, cfg.budget_mask) == (5, 0.003, "sandwich", [1e6, 2e6], False)
    cfg_file.write_text("stepz: 5\n")
    with pytest.raises(UsageError, match="unknown field 'stepz'"):
        resolve_config(["--config", str(cfg_file)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str, results: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    res = run(TrainConfig(steps=8, batch_size=32, sampler="focus", sampler_warmup=2, update_every=2, epsilon=0.3,
                          reward_batch_size=64, specialize_n=3, output=out, progress=False))
    torch.save({"archs": [a.to_dict() for a in res.archs], "losses": res.losses, "net": res.net.state_dict(),
                "policy": res.sampler.policy.state_dict(), "table": res.table}, Path(results) / f"rank{rank}.pt")


def test_ddp_ranks_train_the_same_archs_and_end_identical(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["archs"]) == 8 and r0["archs"] == r1["archs"]
    assert r0["losses"] != r1["losses"]  # each rank saw its own shard of the data
    for name, t in r0["net"].items():
        assert torch.equal(t, r1["net"][name]), name
    for name, t in r0["policy"].items():
        assert torch.equal(t, r1["policy"][name]), name
    assert r0["table"] == r1["table"] and len(r0["table"]) == 5
    assert json.loads((tmp_path / "run" / "run.json").read_text())["world_size"] == 2


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "focusformer_fast.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_line_error(stderr: str, says: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and says in lines[0], stderr


def test_bad_cli_input_in_a_real_process(tmp_path):
    out = tmp_path / "out"
    proc = _cli(["--space", "autoformer-xl", "--output", str(out)], tmp_path)
    assert proc.returncode == 2
    _one_line_error(proc.stderr, "space='autoformer-xl' is unknown; allowed: autoformer-t")
    assert not out.exists()


@pytest.mark.parametrize("args, says", [
    (["--budgets=-5"], "budget -5 must be a positive"),
    (["--data", "/nonexistent/cifar"], "data path '/nonexistent/cifar' does not exist"),
    (["--sampler", "evolution"], "sampler='evolution' is unknown"),
    (["--steps", "ten"], "invalid int value"),
    (["--budgets", "1"], "budget 1 is below the cost of the smallest arch"),
    (["--budget-metric", "latency"], "needs --latency-table"),
])
def test_bad_cli_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, says):
    out = tmp_path / "out"
    assert main([*args, "--output", str(out)]) == 2
    _one_line_error(capsys.readouterr().err, says)
    assert not out.exists()


def test_corrupt_checkpoint_is_one_line_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / CHECKPOINT_NAME).write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    proc = _cli(["--resume", str(run_dir)], tmp_path)
    assert proc.returncode == 2
    _one_line_error(proc.stderr, "is corrupt")
    assert sorted(p.name for p in run_dir.iterdir()) == [CHECKPOINT_NAME]


def test_comparison_report_from_raw_results(tmp_path):
    from focusformer_fast.experiments.compare import _parse_variant
    from focusformer_fast.experiments.compare_report import write_outputs

    assert _parse_variant("slow:sampler=focus,sampler_lr=3e-4,budget-mask=false") == (
        "slow", {"sampler": "focus", "sampler_lr": 3e-4, "budget_mask": False})
    with pytest.raises(UsageError, match="needs a label and sampler"):
        _parse_variant("x:lr=0.1")

    def entry(variant, seed, accs, tau):
        rows = [{"budget": b, "cost": b / 2, "val_acc": a, "test_acc": a} for b, a in zip((1e6, 2e6), accs)]
        sampler = variant
        return {"variant": variant, "sampler": sampler, "seed": seed, "proposer": "random", "rows": rows,
                "seconds": 10.0, "tau": tau}

    raw = {"config": {"seeds": [0, 1], "steps": 5, "specialize_n": 3, "tau_subnets": 10, "standalone_steps": 7,
                      "threads": 1},
           "runs": [entry("uniform", 0, (0.90, 0.95), 0.1), entry("uniform", 1, (0.92, 0.97), 0.3),
                    entry("sandwich", 0, (0.91, 0.99), 0.2), entry("sandwich", 1, (0.95, 0.99), 0.4)],
           "standalone": [{"test_acc": 0.9}, {"test_acc": 0.95}], "seconds": 60.0, "versions": {"torch": "x"}}
    md, png, js = write_outputs(raw, str(tmp_path / "cmp"))
    text = md.read_text()
    assert "| 1.00M | 91.0 ± 1.4 | 93.0 ± 2.8 |" in text  # uniform, sandwich: mean ± sample std
    assert "| 2.00M | +3.0 ± 1.4 |" in text  # sandwich - uniform, paired by seed: +4 and +2 points
    assert "| uniform | 0.100, 0.300 | 0.200 ± 0.141 |" in text
    assert png.stat().st_size > 10_000 and json.loads(js.read_text()) == raw
