"""``python -m focusformer_fast.train`` and its loop, on tiny CPU runs: resume equal to the uninterrupted run,
DDP ranks in step, config resolution (YAML, flags, what ``--resume`` may change), the run's files and final
table; ``--stop-at`` and ``--steps`` across resumes; what it says (its run directory, the next command, the
augmentation it chose); a folder of images (unreadable files, ``--check-data``, the image cache, loader
options); one-line errors and warnings for bad flags; a latency-table run."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from _digits28 import write as write_digits28
from _latency_tables import DIGITS, table, table_file  # noqa: F401  (fixtures)
from _tiny_runs import TINY, digit_pngs, run_info
from focusformer_fast import search, train
from focusformer_fast.nas.latency.build import build_table
from focusformer_fast.nas.latency.table import LatencyModel
from focusformer_fast.nas.latency.timing import TimingConfig
from focusformer_fast.space import Arch, SearchSpace
from focusformer_fast.train import main, resolve_config, run
from focusformer_fast.training.config import TrainConfig
from focusformer_fast.training.runs import CHECKPOINT_NAME, read_checkpoint
from focusformer_fast.utils.cli import UsageError

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


# -- --stop-at, --steps, and what a run says --------------------------------------------------------


def _cosine(step: int, total: int, lr: float = 1e-3, min_lr: float = 1e-5) -> float:
    """The LR after ``step`` updates of a cosine schedule over ``total`` steps without warm-up."""
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * step / total))


def test_stop_at_binds_one_invocation_and_steps_extends_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([*TINY, "--stop-at", "4", "--output", str(out)]) == 0
    assert read_checkpoint(out / CHECKPOINT_NAME)["step"] == 4
    assert train.main(["--resume", str(out)]) == 0  # base code: stops again at step 4
    assert read_checkpoint(out / CHECKPOINT_NAME)["step"] == 8 and (out / "results.json").is_file()
    capsys.readouterr()
    assert train.main(["--resume", str(out)]) == 2  # nothing left to do: said, not a silent new record
    assert "is complete (step 8 of 8)" in capsys.readouterr().err
    assert [r["step"] for r in run_info(out)["resumes"]] == [4]
    table = (out / "results.json").read_text()
    (out / "results.json").unlink()  # as if killed while making the final table
    assert train.main(["--resume", str(out)]) == 0 and (out / "results.json").read_text() == table
    capsys.readouterr()

    assert train.main(["--resume", str(out), "--steps", "12"]) == 0
    info = run_info(out)
    assert read_checkpoint(out / CHECKPOINT_NAME)["step"] == 12
    assert info["resumes"][-1]["steps"] == {"from": 8, "to": 12} and info["config"]["steps"] == 12
    lrs = {m["step"]: m["lr"] for m in metrics(out)}
    assert [lrs[k] for k in range(1, 9)] == pytest.approx([_cosine(k, 8) for k in range(1, 9)], rel=1e-9)
    assert [lrs[k] for k in range(9, 13)] == pytest.approx([_cosine(k, 12) for k in range(9, 13)], rel=1e-9)
    assert train.main(["--resume", str(out), "--steps", "10"]) == 2
    assert "--steps=10 cannot shorten the run" in capsys.readouterr().err


def test_train_names_its_run_says_where_results_are_and_the_next_command(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([*TINY, "--stop-at", "4", "--output", str(out)]) == 0
    first = capsys.readouterr()
    lines = first.err.splitlines()
    assert lines[0].startswith("note: augmentation none: ") and lines[1] == f"note: run directory {out}"
    assert train.main(["--resume", str(out)]) == 0
    again = capsys.readouterr()
    assert f"note: resuming {out} from step 4 of 8" in again.err.splitlines()
    assert f"next: python -m focusformer_fast.search {out} --test --export {out / 'models'}" in again.err
    assert "\r" not in first.err + again.err  # not a terminal: no progress bar, plain lines instead
    assert any(line.startswith("step 8/8  loss ") for line in again.err.splitlines())


def test_train_command_says_and_records_the_choice(tmp_path, capsys):
    write_digits28(tmp_path / "d28", copies=1, per_class=12)
    out = tmp_path / "run"
    assert train.main([*TINY, "--batch-size", "32", "--data", str(tmp_path / "d28"), "--output", str(out)]) == 0
    first = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note:")][0]
    assert first.startswith("note: augmentation crop0.8: 1-channel images of 28x28 px")
    assert "no horizontal flip" in first
    assert json.loads((out / "run.json").read_text())["config"]["augment"] == "crop0.8"


def test_help_says_how_auto_chooses(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "no horizontal flip for 1-channel images or images of 32 px or less" in text


# -- a folder of images -----------------------------------------------------------------------------


SMALL = [*TINY, "--batch-size", "16"]


def _damage(folder):
    """A text file named .png and a PNG cut in half, in class 0 of ``folder``."""
    (folder / "0" / "notes.png").write_text("not an image")
    whole = (folder / "0" / "0.png").read_bytes()
    (folder / "0" / "cut.png").write_bytes(whole[: len(whole) // 2])
    return {str(folder / "0" / "notes.png"), str(folder / "0" / "cut.png")}


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path, capsys):
    digit_pngs(tmp_path / "imgs", per_class=20)
    bad = _damage(tmp_path / "imgs")
    out = tmp_path / "run"
    assert train.main([*SMALL, "--data", str(tmp_path / "imgs"), "--output", str(out)]) == 0  # base: traceback
    listed = {line.split("\t")[0] for line in (out / "bad_images.txt").read_text().splitlines()}
    assert listed == bad
    err = capsys.readouterr().err
    assert f"warning: 2 unreadable image file(s) were skipped; listed in {out / 'bad_images.txt'}" in err


def test_check_data_refuses_with_the_list_and_writes_nothing(tmp_path, capsys):
    digit_pngs(tmp_path / "imgs", per_class=20)
    bad = _damage(tmp_path / "imgs")
    out = tmp_path / "run"
    assert train.main([*SMALL, "--check-data", "--data", str(tmp_path / "imgs"), "--output", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "2 image file(s) cannot be read" in err[0] and all(p in err[0] for p in bad)
    assert not out.exists()


def test_fewer_than_two_classes_is_an_error(tmp_path, capsys):
    digit_pngs(tmp_path / "imgs", per_class=20, classes=1)
    assert train.main([*SMALL, "--data", str(tmp_path / "imgs"), "--output", str(tmp_path / "run")]) == 2
    assert "has 1 class folder(s) (0); a classifier needs at least 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_cache_data_flag_writes_once_and_is_recorded(tmp_path, capsys):
    write_digits28(tmp_path / "d28", copies=1, per_class=12)
    flags = [*TINY, "--batch-size", "32", "--data", str(tmp_path / "d28")]
    cached = [*flags, "--cache-data", str(tmp_path / "cache")]
    assert train.main([*flags, "--output", str(tmp_path / "files")]) == 0
    assert train.main([*cached, "--output", str(tmp_path / "a")]) == 0
    assert "writing an image cache" in capsys.readouterr().err
    assert train.main([*cached, "--output", str(tmp_path / "b")]) == 0
    assert "image cache" not in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "run.json").read_text())["config"]["cache_data"] == str(tmp_path / "cache")
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("files", "a", "b")]
    assert results[0] == results[1] == results[2]  # the same run from the files and from the cache


def test_train_records_the_loader_choices_and_checks_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([*TINY, "--output", str(out)]) == 0
    config = json.loads((out / "run.json").read_text())["config"]
    assert (config["num_workers"], config["pin_memory"], config["cache_data"]) == (0, False, None)
    assert train.main([*TINY, "--num-workers", "-1", "--output", str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err.strip().endswith("error: --num-workers=-1 must be >= 0")


# -- bad flags, warnings ----------------------------------------------------------------------------


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("args, says", [
    (["--val-fraction", "1"], "error: --val-fraction=1.0 must be > 0 and < 1"),
    (["--budgets", "abc"], "error: argument --budgets: budget 'abc' is not a number"),
    (["--epsilon", "2"], "error: --epsilon=2.0 must be in [0, 1]"),
    (["--batch-size", "0"], "error: --batch-size=0 must be > 0"),
    (["--smoothing", "1"], "error: --smoothing=1.0 must be >= 0 and < 1"),
])
def test_train_errors_name_the_flag_as_typed_and_its_range(tmp_path, capsys, args, says):
    assert train.main([*args, "--output", str(tmp_path / "run")]) == 2
    assert _error(capsys).startswith(says)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, says", [
    (["--reprob", "1.5"], "--reprob=1.5 must be >= 0 and <= 1"),
    (["--cutmix", "-1"], "--cutmix=-1.0 must be >= 0"),
    (["--cutmix", "0.5", "--batch-size", "33"], "--mixup and --cutmix need an even --batch-size, got 33"),
])
def test_bad_recipe_flags_are_one_line_errors(tmp_path, capsys, args, says):
    assert main([*args, "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {says}" and not (tmp_path / "r").exists()


def test_bad_reward_model_is_one_line(tmp_path, capsys):
    assert main(["--reward-model", "oracle", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --reward-model='oracle' is unknown; allowed: none, estimator"
    assert not (tmp_path / "x").exists()


def test_budgets_above_the_largest_arch_warn_and_graphs_on_cpu_are_recorded_off(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([*TINY, "--budgets", "1M,1T", "--graphs", "--device", "cpu", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: budget 1e+03G is above the largest arch's cost 3.5M: every arch fits it" in err
    assert "note: --graphs has no effect on cpu" in err
    assert run_info(out)["config"]["graphs"] is False


def test_a_latency_table_from_elsewhere_warns_strict_refuses_and_search_refuses_it_on_a_flops_run(tmp_path, capsys):
    space = SearchSpace.preset("digits")
    table = build_table(space, [64], device="cpu", chain=1, progress=False,
                        timing=TimingConfig(warmup=0, min_reps=1, max_reps=1, max_time_s=0.01, rel_ci=0.5))
    table.env = {**table.env, "device_name": "a GPU far away"}
    path = table.save(tmp_path / "lat.json")
    latency = [*TINY, "--budget-metric", "latency", "--latency-table", str(path)]
    assert train.main([*latency, "--strict-latency", "--output", str(tmp_path / "strict")]) == 2
    assert "was made on another device or version" in _error(capsys) and not (tmp_path / "strict").exists()
    assert train.main([*latency, "--output", str(tmp_path / "lat")]) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "another device" in ln]
    assert warned and all(ln.startswith("warning: latency table") for ln in warned)

    assert train.main([*TINY, "--output", str(tmp_path / "flops")]) == 0
    capsys.readouterr()
    assert search.main([str(tmp_path / "flops"), "--latency-table", str(path), "--device", "cpu"]) == 2
    assert "--latency-table applies to latency runs only" in _error(capsys)


def test_trainer_accepts_a_latency_table(table_file: Path, tmp_path: Path) -> None:
    """``train --budget-metric latency --latency-table T`` runs on a table this module built.

    Budgets are given explicitly: the trainer's default grid spans cost(smallest)..cost(largest),
    which a table timed with 3 reps on a busy CPU may invert.
    """
    lo = LatencyModel.load(table_file).cost(DIGITS.smallest())
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "focusformer_fast.train", "--space", "digits", "--budget-metric", "latency",
           "--latency-table", str(table_file), "--budgets", f"{1.5 * lo:.6g},{3 * lo:.6g}", "--steps", "20",
           "--device", "cpu", "--output", str(tmp_path / "run"), "--batch-size", "16", "--num-workers", "0",
           "--specialize-n", "2", "--no-progress"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
