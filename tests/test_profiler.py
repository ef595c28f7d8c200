"""Latency profiler: table round trip, predictor math, environment checks, NVML-less path, CLI.

CPU tests use the ``digits`` preset with a few timed reps, so they check logic, not speed;
the one timing comparison is loose and skipped under CI. ``gpu`` tests cover CUDA graphs and NVML.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import scipy.stats
import torch

from focusformer_fast import profile as cli
from focusformer_fast.utils.cli import EXIT_USAGE
from focusformer_fast.nas.latency.build import (_dense_pieces, _sliced_pieces, build_table, make_supernet,
                                                random_images, subnet_forward, timed_backends)
from focusformer_fast.nas.latency.device import device_record, device_slug, environment, nvml_record
from focusformer_fast.nas.latency.table import FORMAT_VERSION as TABLE_FORMAT_VERSION
from focusformer_fast.nas.latency.table import LatencyModel, LatencyTable, LatencyTableWarning, block_key
from focusformer_fast.nas.latency.timing import Timing, TimingConfig, make_runner, measure, median_ci_rel
from focusformer_fast.nas.latency.validate import predictor_stats, summary_lines, validate, validation_archs
from focusformer_fast.space import Arch, SearchSpace

ROOT = Path(__file__).resolve().parents[1]
DIGITS = SearchSpace.preset("digits")
FAST = TimingConfig(warmup=1, min_reps=3, max_reps=3, max_time_s=0.05, rel_ci=0.5)
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # two threads stall each other's timings 20x


@pytest.fixture(scope="module")
def table(one_thread) -> LatencyTable:
    return build_table(DIGITS, [1, 2], device="cpu", timing=FAST, chain=2, progress=False)


@pytest.fixture()
def table_file(table: LatencyTable, tmp_path: Path) -> Path:
    return table.save(tmp_path / "digits.json")


def _archs(n: int = 6) -> list[Arch]:
    return [DIGITS.smallest(), DIGITS.middle(), DIGITS.largest(), *validation_archs(DIGITS, n, seed=3)]


# -- table and predictor ------------------------------------------------------------------------


def test_table_covers_every_block_shape_stem_and_head(table: LatencyTable) -> None:
    for b in (1, 2):
        t = table.batches[b]
        assert set(t.blocks) == {(e, h, r) for e in DIGITS.embed_dims for h in DIGITS.num_heads
                                 for r in DIGITS.mlp_ratios}
        assert set(t.stem) == set(t.head) == set(DIGITS.embed_dims)
        assert len(t.raw) == 2 * len(DIGITS.embed_dims) + len(t.blocks)
    assert table.key() == {**table.env, "dtype": "fp32", "backend": "dense", "graph": False, "batch_sizes": [1, 2]}
    assert table.env["device_type"] == "cpu" and table.device["type"] == "cpu"


def test_save_load_round_trip(table: LatencyTable, table_file: Path) -> None:
    d = json.loads(table_file.read_text())
    assert d["format_version"] == TABLE_FORMAT_VERSION and d["units"] == "ms"
    assert {"device_name", "driver", "torch", "cuda", "dtype", "backend", "batch_sizes"} <= set(d["key"])
    assert [p.name for p in table_file.parent.iterdir()] == [table_file.name]  # no temp file left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = LatencyTable.load(table_file, strict=True)
    assert loaded.to_dict() == table.to_dict()
    for b in (1, 2):
        for arch in _archs():
            assert LatencyModel.load(table_file, b).cost(arch) == LatencyModel(table, b).cost(arch)


def test_cost_is_stem_plus_blocks_plus_head(table_file: Path) -> None:
    d = json.loads(table_file.read_text())
    for b in ("1", "2"):
        entries = d["batches"][b]
        model = LatencyModel.load(table_file, int(b))
        for arch in _archs():
            e = str(arch.embed_dim)
            blocks = [entries["blocks"][f"e{e}-h{h}-r{float(r)!r}"] for h, r in zip(arch.num_heads, arch.mlp_ratio)]
            expected = entries["stem"][e] + sum(blocks) + entries["head"][e]
            assert model.cost(arch) == pytest.approx(expected, rel=1e-12, abs=0)
            assert model(arch) == model.cost(arch)


def test_blocks_are_marginal_costs_of_the_raw_measurements(table: LatencyTable) -> None:
    t = table.batches[1]
    e, shape = 48, (48, 3, 3.0)
    stem = t.raw[f"stem/e{e}"]["median_ms"]
    stem_head = t.raw[f"stem+head/e{e}"]["median_ms"]
    chained = t.raw[f"stem+2x{block_key(shape)}+head"]["median_ms"]
    assert t.stem[e] == stem and t.head[e] == pytest.approx(stem_head - stem)
    assert t.blocks[shape] == pytest.approx((chained - stem_head) / 2)


def test_default_batch_is_the_smallest_and_others_are_refused(table: LatencyTable) -> None:
    assert LatencyModel(table).batch_size == 1
    with pytest.raises(ValueError, match=r"batch_size=64 is not in the latency table; it has: \[1, 2\]"):
        LatencyModel(table, 64)


def test_cost_refuses_an_arch_outside_the_space(table: LatencyTable) -> None:
    with pytest.raises(ValueError, match="embed_dim=192"):
        LatencyModel(table).cost(SearchSpace.preset("autoformer-t").smallest())


def test_pieces_run_the_same_forward_as_the_models() -> None:
    """The table cuts models where the subnet forward runs; a drift from it would bias the table."""
    images = random_images(DIGITS, 2, CPU, torch.float32)
    shape, k = (48, 3, 3.0), 2
    dense = _dense_pieces(DIGITS, shape, k, CPU, torch.float32)
    model = dense.forward
    x = dense.stem(images)
    for blk in model.blocks:
        x = blk(x)
    torch.testing.assert_close(model.head(model.norm(x)[:, 0]), model(images))

    net = make_supernet(DIGITS, CPU, torch.float32)
    sliced = _sliced_pieces(net, shape, k, "torch")
    arch = Arch(48, k, (3,) * k, (3.0,) * k)
    torch.testing.assert_close(sliced.forward(images), net(images, arch))
    torch.testing.assert_close(sliced.stem(images), net.embed(images, 48))


def test_sliced_backend_table_builds(table: LatencyTable) -> None:
    sliced = build_table(DIGITS, [1], device="cpu", backend="torch", timing=FAST, chain=2, progress=False)
    assert sliced.backend == "torch" and set(sliced.batches[1].blocks) == set(table.batches[1].blocks)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_sizes": [0]}, "batch size 0 is not allowed"),
    ({"batch_sizes": [1, 1]}, "distinct"),
    ({"dtype": "int8"}, "dtype='int8' is not supported; allowed: fp32, bf16, fp16"),
    ({"backend": "cuda"}, "backend='cuda' cannot run on cpu; allowed here: dense, auto"),
    ({"graph": True}, "graph=True needs a CUDA device"),
    ({"chain": 5}, r"chain=5 must be in \[1, 4\]"),
])
def test_build_table_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"batch_sizes": [1], "device": "cpu", "timing": FAST, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_table(DIGITS, args.pop("batch_sizes"), **args)


# -- environment, versions, corrupt files -----------------------------------------------------------


def _edit(path: Path, **key: object) -> Path:
    d = json.loads(path.read_text())
    d["key"].update(key)
    path.write_text(json.dumps(d))
    return path


def test_table_from_another_device_warns_naming_the_fields(table_file: Path) -> None:
    _edit(table_file, device_name="NVIDIA H100 80GB HBM3", torch="2.11.0+cu130")
    with pytest.warns(LatencyTableWarning) as rec:
        model = LatencyModel.load(table_file)
    msg = str(rec[0].message)
    assert "device_name: table 'NVIDIA H100 80GB HBM3', here" in msg
    assert f"torch: table '2.11.0+cu130', here {torch.__version__!r}" in msg
    assert "dtype" not in msg
    assert model.cost(DIGITS.smallest()) > 0


def test_strict_load_refuses_a_table_from_another_version(table_file: Path) -> None:
    _edit(table_file, torch="0.0.1")
    with pytest.raises(ValueError, match=r"made on another device or version \(torch: table '0.0.1'"):
        LatencyModel.load(table_file, strict=True)


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "unreadable or corrupt"),
    ('{"kind": "something else"}', "not a latency table"),
    ('{"kind": "focusformer_fast.latency_table", "format_version": 99}', "format_version=99; this version reads 1"),
    ('{"kind": "focusformer_fast.latency_table", "format_version": 1, "key": {}}', "missing or malformed field"),
])
def test_corrupt_tables_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        LatencyTable.load(path)


def test_missing_table_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        LatencyModel.load(tmp_path / "nope.json")


def test_failed_save_keeps_the_old_file(table: LatencyTable, table_file: Path, monkeypatch) -> None:
    before = table_file.read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        table.save(table_file)
    assert table_file.read_text() == before
    assert [p.name for p in table_file.parent.iterdir()] == [table_file.name]


# -- device records -----------------------------------------------------------------------------


def _nvml_missing(monkeypatch) -> None:
    pynvml = pytest.importorskip("pynvml")

    def init() -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", init)


def test_nvml_absent_gives_a_one_line_reason(monkeypatch) -> None:
    _nvml_missing(monkeypatch)
    record, reason = nvml_record(0)
    assert record is None
    assert reason == "NVML unavailable: NVML Shared Library Not Found"


def test_cpu_record() -> None:
    rec = device_record(CPU)
    assert rec["type"] == "cpu" and rec["name"] and rec["torch_threads"] == 1
    assert rec["logical_cores"] >= rec["usable_cores"] >= 1
    assert device_slug(rec).startswith("cpu-")


# -- timing and statistics ------------------------------------------------------------------------


def test_measure_stops_at_max_reps_and_summarizes() -> None:
    calls = []
    t = measure(lambda: calls.append(1), CPU, TimingConfig(warmup=2, min_reps=5, max_reps=7, max_time_s=10,
                                                               rel_ci=1e-9))
    assert t.reps == 7 and len(calls) == 9
    assert 0 <= t.p10_ms <= t.median_ms <= t.p90_ms


def test_timing_summary_and_median_ci() -> None:
    t = Timing.from_samples([float(v) for v in range(1, 101)])
    assert t.median_ms == 50.5 and t.p10_ms == pytest.approx(10.9) and t.p90_ms == pytest.approx(90.1)
    assert median_ci_rel([1.0] * 5) == float("inf")
    assert median_ci_rel([2.0] * 50) == 0.0


def test_predictor_stats() -> None:
    s = predictor_stats([1.1, 1.8, 3.0], [1.0, 2.0, 3.0])
    assert s["mape"] == pytest.approx(0.2 / 3) and s["max_ape"] == pytest.approx(0.1)
    assert s["spearman"] == 1.0 and s["kendall"] == 1.0
    s = predictor_stats([3.0, 2.0, 1.0], [1.0, 2.0, 3.0], ranked_by=[1.0, 2.0, 3.0])
    assert s["spearman"] == 1.0 and s["mape"] == pytest.approx((2 + 0 + 2 / 3) / 3)


def test_validation_archs_are_seeded() -> None:
    assert validation_archs(DIGITS, 5, seed=7) == validation_archs(DIGITS, 5, seed=7)
    assert validation_archs(DIGITS, 5, seed=7) != validation_archs(DIGITS, 5, seed=8)


def test_validate_reports_table_and_flops_statistics(table: LatencyTable) -> None:
    report = validate(table, 4, seed=5, device="cpu", timing=FAST, progress=False)
    archs = validation_archs(DIGITS, 4, seed=5)
    assert set(report["batches"]) == {"1", "2"}
    for b, r in report["batches"].items():
        assert {"mape", "max_ape", "spearman", "kendall"} == set(r["lut"]) == set(r["flops"])
        assert [row["arch"] for row in r["rows"]] == [a.to_dict() for a in archs]
        assert [row["predicted_ms"] for row in r["rows"]] == [LatencyModel(table, int(b)).cost(a) for a in archs]
        assert r["flops"]["spearman"] == pytest.approx(scipy.stats.spearmanr(
            [DIGITS.flops(a) for a in archs], [row["median_ms"] for row in r["rows"]]).statistic)
    assert len(summary_lines(report)) == 2


# -- CLI --------------------------------------------------------------------------------------------


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


def test_cli_output_dir_is_refused(tmp_path: Path, capsys) -> None:
    assert cli.main(["--space", "digits", "--device", "cpu", "--output", str(tmp_path)]) != 0
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cli_cuda_without_gpu_is_one_line(capsys) -> None:
    assert cli.main(["--space", "digits", "--device", "cuda"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU is visible" in err[0]


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


# -- trainer integration ----------------------------------------------------------------------------


def test_trainer_accepts_a_latency_table(table_file: Path, tmp_path: Path) -> None:
    """``train --budget-metric latency --latency-table T`` runs on a table this module built.

    Budgets are given explicitly: the trainer's default grid spans cost(smallest)..cost(largest),
    which a table timed with 3 reps on a busy CPU may invert.
    """
    lo = LatencyModel.load(table_file).cost(DIGITS.smallest())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "focusformer_fast.train", "--space", "digits", "--budget-metric", "latency",
           "--latency-table", str(table_file), "--budgets", f"{1.5 * lo:.6g},{3 * lo:.6g}", "--steps", "20",
           "--device", "cpu", "--output", str(tmp_path / "run"), "--batch-size", "16", "--num-workers", "0",
           "--specialize-n", "2", "--no-progress"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


# -- GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_record_has_nvml_fields() -> None:
    rec = device_record(torch.device("cuda", 0))
    assert rec["name"] == torch.cuda.get_device_name(0)
    if "error" not in rec["nvml"]:
        assert {"driver", "sm_clock_mhz", "memory_clock_mhz", "power_limit_w", "temperature_c",
                "throttle_reasons"} <= set(rec["nvml"])


@pytest.mark.gpu
def test_gpu_record_without_nvml_still_builds(monkeypatch) -> None:
    _nvml_missing(monkeypatch)
    rec = device_record(torch.device("cuda", 0))
    assert rec["nvml"] == {"error": "NVML unavailable: NVML Shared Library Not Found"}
    assert environment("cuda", rec)["driver"] is None


@pytest.mark.gpu
def test_graph_replay_matches_eager_output() -> None:
    net = make_supernet(DIGITS, torch.device("cuda"), torch.float32)
    images = random_images(DIGITS, 4, torch.device("cuda"), torch.float32)
    forward = subnet_forward(net, DIGITS.largest(), "dense")
    runner = make_runner(lambda: forward(images), images.device, graph=True)
    runner()
    torch.cuda.synchronize()
    torch.testing.assert_close(runner.output, forward(images))


@pytest.mark.gpu
def test_gpu_table_predicts_graph_latency_of_autoformer_t() -> None:
    """A smaller run than the target check (100 subnets at batch 1 and 64, via the CLI's --validate)."""
    table = build_table(SearchSpace.preset("autoformer-t"), [1], device="cuda", dtype="bf16", progress=False)
    report = validate(table, 30, seed=1, device="cuda", progress=False)
    lut = report["batches"]["1"]["lut"]
    assert lut["mape"] <= 0.02 and lut["spearman"] >= 0.9, summary_lines(report)


# -- benchmark rendering ----------------------------------------------------------------------------


def _render_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_render", ROOT / "benchmarks" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_puts_the_device_in_the_header_and_ratios_in_cells(tmp_path: Path, capsys) -> None:
    def bench(backend: str, median_s: float) -> dict:
        info = {"kind": "subnet-latency", "preset": "digits", "arch_label": "smallest", "arch": "e32-d2",
                "flops": 2_000_000, "backend": backend, "graph": False, "batch": 1, "dtype": "fp32",
                "device": "AMD EPYC", "device_type": "cpu", "torch": "2.14.1", "threads": 2}
        return {"extra_info": info, "stats": {"median": median_s}}

    results = tmp_path / "r.json"
    results.write_text(json.dumps({"machine_info": {"python_version": "3.11"}, "datetime": "now",
                                   "benchmarks": [bench("dense", 2e-3), bench("torch", 4e-3)]}))
    render = _render_module()
    assert render.main([str(results), "-o", str(tmp_path / "r.md")]) == 0
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("# Subnet inference latency on CPU: AMD EPYC (no GPU)")
    assert "| smallest | `e32-d2` | 2 | 2 (1.00x) | 4 (0.50x) |" in md

    results.write_text(json.dumps({"benchmarks": []}))
    assert render.main([str(results)]) == 2
    assert "holds no 'subnet-latency' benchmarks" in capsys.readouterr().err
