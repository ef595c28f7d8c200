"""``python -m focusformer_fast.profile``: ``--help``; a table built, validated and named after the device
and the space; one arch timed on every backend; no table overwritten without ``--overwrite``; one-line errors,
in a real process and in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from focusformer_fast import profile as cli
from focusformer_fast.nas.latency.build import timed_backends
from focusformer_fast.nas.latency.table import LatencyTable
from focusformer_fast.utils.cli import EXIT_USAGE

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "focusformer_fast.profile", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The subprocess cases, started together (each pays torch's import time)."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "corrupt.json").write_text("{not json")
    cases = {
        "help": ("--help",),
        "corrupt": ("--table", "corrupt.json", "--validate", "3", "--device", "cpu"),
    }
    procs = {name: _cli(*args, cwd=tmp) for name, args in cases.items()}
    done = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=120)
        done[name] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return done


def test_cli_help(cli_runs) -> None:
    r = cli_runs["help"]
    assert r.returncode == 0 and "--space" in r.stdout and "--validate" in r.stdout and "--batch-sizes" in r.stdout


def test_cli_bad_input_is_one_line(cli_runs) -> None:
    r = cli_runs["corrupt"]
    assert r.returncode == EXIT_USAGE
    assert len(r.stderr.strip().splitlines()) == 1
    assert "error: latency table 'corrupt.json' is unreadable or corrupt" in r.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--space", "nope"], "--space='nope' is not a preset (autoformer-t"),
    (["--space", "digits", "--batch-sizes", "1,x"], "argument --batch-sizes: '1,x' is not allowed"),
    (["--space", "digits", "--batch-sizes", "0,4"], "batch size 0 is not allowed"),
    (["--space", "digits", "--output", "/nonexistent-dir/t.json"], "folder '/nonexistent-dir' does not exist"),
    (["--space", "digits", "--device", "cpu", "--graph"], "--graph needs a CUDA device; this is cpu"),
    (["--space", "digits", "--device", "cpu", "--validate", "1"], "--validate=1 must be 0 (off) or >= 2"),
    (["--space", "digits", "--device", "cpu", "--backend", "magic"], "backend='magic' cannot run on cpu"),
    (["--space", "digits", "--device", "tpu"], "device='tpu' is not"),
    (["--batch-sizes", "1"], "--space is required"),
])
def test_cli_errors_in_process(args: list[str], message: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        rc = cli.main(args)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert message in err[-1] and all("note:" in line for line in err[:-1])


@pytest.mark.parametrize("args, says", [
    (["--max-time", "-1"], "error: --max-time=-1.0 must be > 0"),
    (["--min-reps", "5", "--max-reps", "2"], "error: --min-reps=5 must be <= --max-reps=2"),
    (["--warmup", "-1"], "error: --warmup=-1 must be >= 0"),
    (["--chain", "9"], "error: --chain=9 must be in [1, 4]"),
])
def test_profile_errors_name_its_flags(tmp_path, capsys, args, says):
    assert cli.main(["--space", "digits", "--device", "cpu", "--output", str(tmp_path / "t.json"), *args]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("note:")]
    assert len(err) == 1 and err[0].startswith(says), err


def test_cli_output_dir_is_refused(tmp_path: Path, capsys) -> None:
    assert cli.main(["--space", "digits", "--device", "cpu", "--output", str(tmp_path)]) != 0
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cli_cuda_without_gpu_is_one_line(capsys) -> None:
    assert cli.main(["--space", "digits", "--device", "cuda"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU is visible" in err[0]


def test_profile_does_not_overwrite_a_table_without_overwrite(tmp_path, capsys):
    table = tmp_path / "t.json"
    table.write_text("{}")
    fast = ["--warmup", "0", "--min-reps", "1", "--max-reps", "1", "--max-time", "0.01", "--chain", "1"]
    assert cli.main(["--space", "digits", "--device", "cpu", "--batch-sizes", "1", *fast,
                         "--output", str(table)]) == 2
    assert "exists; give another --output, or --overwrite" in capsys.readouterr().err
    assert table.read_text() == "{}"
    assert cli.main(["--space", "digits", "--device", "cpu", "--batch-sizes", "1", *fast,
                         "--output", str(table), "--overwrite"]) == 0
    assert json.loads(table.read_text())["kind"]


def test_cli_builds_validates_and_names_the_file_after_device_and_space(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--space", "digits", "--device", "cpu", "--batch-sizes", "1", "--validate", "3", "--chain", "2",
            "--warmup", "1", "--min-reps", "2", "--max-reps", "2"]
    assert cli.main(args) == 0
    [path] = tmp_path.glob("latency_cpu-*_digits.json")
    table = LatencyTable.load(path)
    assert table.validation["n"] == 3 and table.chain == 2 and table.timing["max_reps"] == 2
    assert "batch 1: table MAPE" in capsys.readouterr().out


def test_cli_times_one_arch_on_every_backend(tmp_path: Path, capsys) -> None:
    out = tmp_path / "arch.json"
    args = ["--space", "digits", "--device", "cpu", "--batch-sizes", "1", "--arch", "smallest", "--output", str(out),
            "--warmup", "1", "--min-reps", "2", "--max-reps", "2"]
    assert cli.main(args) == 0
    results = json.loads(out.read_text())["results"]
    assert {r["backend"] for r in results} == {"dense", *timed_backends("cpu")}
    assert all(r["median_ms"] > 0 for r in results)
