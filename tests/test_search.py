"""``python -m focusformer_fast.search`` on tiny trained digits runs: new budgets specialized and exported,
each method's distinct evaluations, a budget's answer independent of the other budgets asked, one-line
errors, a budget outside the sampler's trained range warned about, the run's threads and loader options;
``training.runs.load_run`` and the specialization table on the same run. On a run trained through the
command: each budget chooses among its own evaluations in any order, one export layout never overwritten
silently, the metrics and the reports beside the JSON."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from _tiny_runs import TINY, metrics
from focusformer_fast import Arch, SearchSpace, search, train
from focusformer_fast.data.loaders import make_loaders
from focusformer_fast.models import export
from focusformer_fast.nas.costs import budget_grid, fmt_cost, make_cost_fn
from focusformer_fast.nas.evaluate import accuracy
from focusformer_fast.nas.specialize import format_table, specialization_table, trained_range
from focusformer_fast.search import main
from focusformer_fast.train import run
from focusformer_fast.training.config import TrainConfig
from focusformer_fast.training.runs import load_run

REPO = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.preset("digits")
FLOPS = make_cost_fn(SPACE, "flops")


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
    draw = loaded.sampler.draw([budget] * 5, rng=random.Random(1)).archs()
    again = result.sampler.draw([budget] * 5, rng=random.Random(1)).archs()
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
        assert record["extra"]["method"] == "policy" and record["extra"]["evaluations"] == row["evaluations"] == 6
        assert record["flops"] == row["cost"] and record["space"]["name"] == SPACE.name
        with torch.no_grad():
            torch.testing.assert_close(model(images), net(images, arch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "args, says",
    [
        (["{missing}"], "checkpoint"),
        (["{run}", "--budget", "abc"], "budget 'abc' is not a number"),
        (["{run}", "--budget", "1k"], "is below the cost of the smallest arch"),
        (["{run}", "-n", "0"], "--evaluations=0 must be >= 1"),
        (["{run}", "--method", "random", "--init", "policy"], "--init policy applies to --method evolution only"),
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


@pytest.mark.parametrize("method, label", [(["--method", "policy"], "policy"), (["--method", "evolution"], "evolution"),
                                           (["--method", "evolution", "--init", "policy"], "evolution+policy"),
                                           (["--method", "random"], "random")])
def test_each_method_scores_n_distinct_archs_per_budget_through_the_cli(trained, tmp_path, capsys, method, label):
    out, _ = trained
    report = tmp_path / "search.json"
    assert main([str(out), "--budget", "700k,1.5M", *method, "--evaluations", "5", "--output", str(report),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.splitlines()
    data = json.loads(report.read_text())
    loaded = load_run(out, device="cpu")
    val = make_loaders(loaded.splits, 256, seed=loaded.config.seed).val
    assert data["evaluations"] == 5 and [r["budget"] for r in data["rows"]] == [700e3, 1.5e6]
    for row in data["rows"]:
        arch = Arch.from_dict(row["arch"])
        assert row["evaluations"] == 5 and row["method"] == label and row["seconds"] > 0
        assert SPACE.flops(arch) == row["cost"] <= row["budget"]
        assert row["val_acc"] == accuracy(loaded.net, arch, val, torch.device("cpu"))
        assert row["val_acc"] == max(c["val_acc"] for c in row["front"])
        [line] = [ln for ln in printed if ln.lstrip().startswith(("700k ", "1.5M "))
                  and row["arch_str"] in ln]
        assert line.split()[-3:-1] == ["5", label]


def test_a_budgets_answer_does_not_depend_on_the_other_budgets_asked(trained, tmp_path):
    out, result = trained
    budgets = [float(round(b)) for b in (*result.config.budgets, 2.86e6)]

    def rows(asked, name):
        report = tmp_path / f"{name}.json"
        assert main([str(out), "--budget", ",".join(f"{b:.0f}" for b in asked), "-n", "4", "--output", str(report),
                     "--device", "cpu"]) == 0
        return {r["budget"]: {k: v for k, v in r.items() if k not in ("seconds", "below_smaller")}
                for r in json.loads(report.read_text())["rows"]}

    together = rows(budgets, "together")
    for k, b in enumerate(budgets):
        assert rows([b], f"alone{k}") == {b: together[b]}  # base: every budget chose among the pooled proposals


class CollapsedSampler:
    """A sampler whose proposals for each budget cycle through one short list with repeats."""

    proposer = "policy"
    budgets = ()

    def __init__(self, streams):
        self.streams = streams

    def propose(self, budget, n, rng):
        stream = self.streams[budget]
        return [stream[k % len(stream)] for k in range(n)]


def test_the_table_counts_each_budgets_distinct_evaluations_and_scores_an_arch_once(trained, monkeypatch):
    from focusformer_fast.nas import specialize

    _, result = trained
    small, mid, large = SPACE.smallest(), SPACE.middle(), SPACE.largest()
    budgets = [float(SPACE.flops(mid)), float(SPACE.flops(large))]
    sampler = CollapsedSampler({budgets[0]: [small, small, mid, small], budgets[1]: [large, mid, large, large]})
    scored = []
    real = specialize.accuracy_and_loss

    def counted(net, arch, *args, **kwargs):
        scored.append(arch)
        return real(net, arch, *args, **kwargs)

    monkeypatch.setattr(specialize, "accuracy_and_loss", counted)
    val = make_loaders(load_run(trained[0], device="cpu").splits, 256, seed=0).val
    rows = specialization_table(result.net, sampler, lambda a: float(SPACE.flops(a)), budgets, val, None,
                                torch.device("cpu"), n=50, seed=0)
    # each budget's own distinct proposals (base counted the pool: 3 archs fit the larger budget)
    assert [r["evaluations"] for r in rows] == [len(set(sampler.streams[b])) for b in budgets] == [2, 2]
    assert sorted(map(str, scored)) == sorted(map(str, {small, mid, large}))  # mid scored once for both budgets
    table = format_table(rows, "flops").splitlines()[2:]
    assert [line.split()[-2:] for line in table] == [["2", "policy"], ["2", "policy"]]  # untimed: no time column
    assert all("seconds" not in r for r in rows)


def test_a_budget_outside_the_sampler_s_trained_range_warns_once(trained, capsys):
    out, _ = trained
    lo, hi = trained_range(load_run(out, device="cpu").sampler)
    smallest = float(SPACE.flops(SPACE.smallest()))
    outside = (smallest + lo) / 2 if lo > smallest else hi * 1.2
    inside = (lo + hi) / 2
    argv = [str(out), "--budget", f"{inside:.0f},{outside:.0f}", "-n", "2", "--device", "cpu"]
    assert main(argv) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "outside the range the sampler was trained on" in ln]
    assert len(warned) == 1 and warned[0].startswith(f"warning: budget {fmt_cost(outside, 'flops')} is outside")
    assert main([*argv, "--method", "random"]) == 0  # random search does not use the sampler
    assert "outside the range" not in capsys.readouterr().err


def test_a_budget_reporting_a_lower_val_accuracy_than_a_smaller_one_is_flagged_not_hidden(trained):
    out, result = trained
    val = make_loaders(load_run(out, device="cpu").splits, 256, seed=0).val
    cpu = torch.device("cpu")
    small = SPACE.smallest()
    rng = random.Random(0)
    other = next(a for a in iter(lambda: SPACE.sample(rng), None) if SPACE.flops(a) > SPACE.flops(small) and
                 accuracy(result.net, a, val, cpu) != accuracy(result.net, small, val, cpu))
    worse, better = sorted([small, other], key=lambda a: accuracy(result.net, a, val, cpu))
    budgets = [float(SPACE.flops(other)), float(SPACE.flops(SPACE.largest()))]
    sampler = CollapsedSampler({budgets[0]: [better], budgets[1]: [worse]})
    rows = specialization_table(result.net, sampler, lambda a: float(SPACE.flops(a)), budgets, val, None, cpu,
                                n=3, seed=0)
    assert [Arch.from_dict(r["arch"]) for r in rows] == [better, worse]
    assert "below_smaller" not in rows[0] and rows[1]["below_smaller"] == budgets[0]
    table = format_table(rows, "flops").splitlines()
    assert "%*" in table[3] and "%*" not in table[2] and table[-1].startswith("* val accuracy below a smaller budget's")


def test_a_small_val_split_is_decoded_once_and_held_a_large_one_streams(trained, monkeypatch):
    from focusformer_fast.nas import specialize

    loaded = load_run(trained[0], device="cpu")
    loader = make_loaders(loaded.splits, 64, seed=0).val
    kept = specialize.held(loader, SPACE, torch.device("cpu"))
    batches = list(loader)
    assert isinstance(kept, list) and len(kept) == len(batches) > 1
    for (x, y), (x2, y2) in zip(kept, batches):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    monkeypatch.setattr(specialize, "HELD_BYTES", len(loader.dataset) * SPACE.image_size ** 2 * 4 - 1)
    assert specialize.held(loader, SPACE, torch.device("cpu")) is loader


def test_search_runs_on_the_run_s_cpu_threads_and_restores_the_caller_s(trained, monkeypatch):
    out, _ = trained
    assert load_run(out, device="cpu").config.threads == 1  # train's choice for digits on CPU
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n))[1])
    try:
        assert main([str(out), "--budget", "1.5M", "-n", "2", "--device", "cpu"]) == 0
        assert calls[:2] == [1, 2] and torch.get_num_threads() == 2
    finally:
        real(before)


def test_search_loads_batches_for_the_run_s_device_with_the_run_s_loader_options(trained, monkeypatch):
    """Search's val/test batches come finished on the device the run is loaded on, with the workers the
    run trained with (on a GPU: worker processes and pinned memory, not a single CPU process)."""
    from focusformer_fast.data import loaders

    out, _ = trained
    seen = []
    real = loaders.make_loaders
    monkeypatch.setattr(loaders, "make_loaders", lambda *a, **k: (seen.append(k), real(*a, **k))[1])
    config = json.loads((out / "run.json").read_text())["config"]
    assert main([str(out), "--budget", "1.5M", "-n", "2", "--device", "cpu"]) == 0
    (kwargs,) = seen
    assert torch.device(kwargs["device"]) == torch.device("cpu")
    assert (kwargs["options"].num_workers, kwargs["options"].pin_memory) == (config["num_workers"], config["pin_memory"])


# -- a run trained through the command --------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_trained(tmp_path_factory, one_thread):
    """A 16-step focus run on digits, through the CLI: its run directory."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert train.main([*TINY, "--steps", "16", "--eval-every", "4", "--output", str(out)]) == 0
    return out


def _rows(run, budgets, tmp_path, name, *extra):
    report = tmp_path / f"{name}.json"
    assert search.main([str(run), "--device", "cpu", "-n", "3", "--budget", ",".join(budgets),
                        "--output", str(report), *extra]) == 0
    return {r["budget"]: {k: v for k, v in r.items() if k != "seconds"} for r in json.loads(report.read_text())["rows"]}


def test_each_budget_chooses_among_its_own_evaluations_whatever_else_is_asked_and_in_any_order(cli_trained, tmp_path):
    budgets = [f"{b:.0f}" for b in budget_grid(SPACE, FLOPS, 5)]
    rows = _rows(cli_trained, budgets, tmp_path, "all")
    assert rows == _rows(cli_trained, budgets[::-1], tmp_path, "reversed")  # base: seeds follow the budget's index
    alone = {b: _rows(cli_trained, [f"{b:.0f}"], tmp_path, f"alone{k}")[b] for k, b in enumerate(rows)}
    ordered = sorted(rows)
    for k, b in enumerate(ordered):
        assert {**rows[b], "below_smaller": 0} == {**alone[b], "below_smaller": 0}
        if "arch" not in rows[b]:
            continue
        assert rows[b]["cost"] <= b and rows[b]["evaluations"] == 3
        # a larger budget may report a lower val accuracy, but the row says so
        better = [c for c in ordered[:k] if rows[c].get("val_acc", -1) > rows[b]["val_acc"]]
        assert rows[b].get("below_smaller") == (min(better) if better else None)


def test_export_uses_one_layout_and_never_overwrites_silently(cli_trained, tmp_path, capsys):
    target = tmp_path / "models"
    budget = f"{budget_grid(SPACE, FLOPS, 2)[1]:.0f}"
    argv = [str(cli_trained), "--device", "cpu", "-n", "2", "--budget", budget, "--export", str(target)]
    assert search.main(argv) == 0
    [model_dir] = target.iterdir()  # base code: one budget wrote into DIR itself
    assert model_dir.name.startswith("budget-") and (model_dir / "model.safetensors").is_file()
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert search.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--export {str(target)!r} is not empty" in err and "--overwrite" in err
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before
    assert search.main([*argv, "--overwrite"]) == 0


def test_metrics_record_val_accuracy_and_reports_sit_beside_the_json(cli_trained, tmp_path):
    probes = {m["step"]: m for m in metrics(cli_trained) if "val_acc_largest" in m}
    assert sorted(probes) == [4, 8, 12, 16]
    assert all(0 <= probes[s][f"val_acc_{k}"] <= 1 for s in probes for k in ("smallest", "middle", "largest"))
    table = json.loads((cli_trained / "results.json").read_text())["rows"]
    md = (cli_trained / "results.md").read_text().splitlines()
    assert all(f"{100 * r['val_acc']:.1f}%" in line for r, line in zip(table, md[2:]))
    assert len(md) == 2 + len(table) + (2 if any("below_smaller" in r for r in table) else 0)
    with Image.open(cli_trained / "results.png") as png:
        assert png.format == "PNG" and png.size[0] > 300
    _rows(cli_trained, ["1M"], tmp_path, "found")
    assert (tmp_path / "found.png").is_file() and (tmp_path / "found.md").is_file()
