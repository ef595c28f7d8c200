"""What a new user is told when a flag is wrong or does nothing (issue 12, item 12), through the CLIs."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _newcomer import TINY, run_info
from focusformer_fast import __main__ as package_main
from focusformer_fast.training import config
from focusformer_fast import finetune, profile, search, train
from focusformer_fast.export import __main__ as export_cli
from focusformer_fast.nas.latency.build import build_table
from focusformer_fast.nas.latency.timing import TimingConfig
from focusformer_fast.space import SearchSpace
from focusformer_fast.utils.version import __version__

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
COMMANDS = {"train": train, "search": search, "profile": profile, "export": export_cli, "finetune": finetune}


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
    (["--max-time", "-1"], "error: --max-time=-1.0 must be > 0"),
    (["--min-reps", "5", "--max-reps", "2"], "error: --min-reps=5 must be <= --max-reps=2"),
    (["--warmup", "-1"], "error: --warmup=-1 must be >= 0"),
    (["--chain", "9"], "error: --chain=9 must be in [1, 4]"),
])
def test_profile_errors_name_its_flags(tmp_path, capsys, args, says):
    assert profile.main(["--space", "digits", "--device", "cpu", "--output", str(tmp_path / "t.json"), *args]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("note:")]
    assert len(err) == 1 and err[0].startswith(says), err


def test_profile_does_not_overwrite_a_table_without_overwrite(tmp_path, capsys):
    table = tmp_path / "t.json"
    table.write_text("{}")
    fast = ["--warmup", "0", "--min-reps", "1", "--max-reps", "1", "--max-time", "0.01", "--chain", "1"]
    assert profile.main(["--space", "digits", "--device", "cpu", "--batch-sizes", "1", *fast,
                         "--output", str(table)]) == 2
    assert "exists; give another --output, or --overwrite" in capsys.readouterr().err
    assert table.read_text() == "{}"
    assert profile.main(["--space", "digits", "--device", "cpu", "--batch-sizes", "1", *fast,
                         "--output", str(table), "--overwrite"]) == 0
    assert json.loads(table.read_text())["kind"]


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


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_says_its_default_and_version_is_printed(name, capsys):
    parser = (config if name == "train" else COMMANDS[name]).build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", "version") and not action.required:
            assert "default" in (action.help or ""), action.option_strings
    with pytest.raises(SystemExit) as done:
        COMMANDS[name].main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip().endswith(__version__)


def _console_scripts(pyproject: Path) -> dict[str, str]:
    """``[project.scripts]`` of ``pyproject`` (name = "module:function" lines; tomllib needs Python 3.11)."""
    text = pyproject.read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip().strip('"') for k, v in pairs}


def test_the_package_lists_its_commands_and_console_scripts_point_at_them():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "focusformer_fast"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0
    scripts = _console_scripts(REPO / "pyproject.toml")
    for name, module in COMMANDS.items():
        assert f"python -m focusformer_fast.{name}" in proc.stdout and f"focusformer-{name}" in proc.stdout
        target, _, attr = scripts[f"focusformer-{name}"].partition(":")
        assert getattr(importlib.import_module(target), attr) is module.main
    assert package_main.main(["--bogus"]) == 2


def test_a_two_rank_torchrun_prints_the_ddp_unused_parameter_warning_at_most_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
                           "focusformer_fast.train", "--steps", "6", "--batch-size", "64", "--specialize-n", "2",
                           "--num-budgets", "2", "--device", "cpu", "--output", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=600, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (proc.stdout + proc.stderr).count("did not find any unused parameters") <= 1
