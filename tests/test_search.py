"""``python -m focusformer_fast.search`` and ``train.load_run`` on a tiny trained digits run."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from focusformer_fast import Arch, SearchSpace, export
from focusformer_fast.search import main
from focusformer_fast.config import TrainConfig
from focusformer_fast.runs import load_run
from focusformer_fast.train import run

REPO = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.preset("digits")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A 20-step focus run on digits, trained in this process."""
    out = tmp_path_factory.mktemp("search") / "run"
    result = run(TrainConfig(steps=20, batch_size=128, sampler_warmup=4, update_every=2, reward_batch_size=64,
                             specialize_n=2, output=str(out), progress=False))
    return out, result


def test_load_run_restores_the_trained_supernet_and_sampler(trained):
    out, result = trained
    loaded = load_run(out, device="cpu")
    assert loaded.step == 20 and loaded.config.budgets == result.config.budgets
    expected = result.net.state_dict()
    for name, value in loaded.net.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert not loaded.net.training
    budget = result.config.budgets[0]
    draw = [r.arch for r in loaded.sampler.sample_many([budget] * 5, rng=random.Random(1))]
    again = [r.arch for r in result.sampler.sample_many([budget] * 5, rng=random.Random(1))]
    assert draw == again


def test_cli_specializes_new_budgets_and_exports_the_chosen_subnets(trained, tmp_path, capsys):
    out, result = trained
    budgets = ["700k", "1.5M"]
    report = tmp_path / "search.json"
    rc = main([str(out), "--budget", ",".join(budgets), "-n", "6", "--test", "--front",
               "--export", str(tmp_path / "models"), "--output", str(report), "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "specialized 2 budget(s)" in printed and "front at 700k" in printed
    data = json.loads(report.read_text())
    assert data["seed"] == 0 and data["step"] == 20 and len(data["rows"]) == 2
    images = torch.randn(3, SPACE.in_chans, SPACE.image_size, SPACE.image_size)
    net = result.net.eval()
    for row, limit in zip(data["rows"], (700e3, 1.5e6)):
        arch = Arch.from_dict(row["arch"])
        assert SPACE.flops(arch) == row["cost"] <= limit
        assert 0.0 <= row["val_acc"] <= 1.0 and 0.0 <= row["test_acc"] <= 1.0
        model = export.load(row["export"]).eval()
        record = json.loads((Path(row["export"]) / "config.json").read_text())["focusformer"]
        assert record["extra"]["budget"] == limit and record["extra"]["step"] == 20
        assert record["flops"] == row["cost"] and record["space"]["name"] == SPACE.name
        with torch.no_grad():
            torch.testing.assert_close(model(images), net(images, arch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "args, says",
    [
        (["{missing}"], "checkpoint"),
        (["{run}", "--budget", "abc"], "budget 'abc' is not a number"),
        (["{run}", "--budget", "1k"], "is below the cost of the smallest arch"),
        (["{run}", "-n", "0"], "--proposals=0 must be >= 1"),
        (["{run}", "--backend", "nope"], "backend='nope' is not a backend"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(trained, tmp_path, capsys, args, says):
    out, _ = trained
    report = tmp_path / "search.json"
    argv = [a.format(run=out, missing=tmp_path / "none") for a in args] + ["--output", str(report)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1
    assert not report.exists()


def test_module_entry_point_runs(trained):
    out, _ = trained
    proc = subprocess.run([sys.executable, "-m", "focusformer_fast.search", str(out), "-n", "2", "--device", "cpu"],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "best in-budget arch" in proc.stdout
