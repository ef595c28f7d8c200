"""``benchmarks/gpu_quick.sh`` checked without a GPU: its plan fits 9 minutes, every file its stages
name exists, and its report turns stage logs, a timeline, a stream and a loader benchmark and the sampler
stage's figures into the verdict."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from gpu_quick_report import LOADER_SOURCES, MODES, closing_counts, markdown, report

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_quick.sh"
LIMIT_S = 540  # the device command must leave room for the machine's start in a 10-minute call


def test_plan_lists_every_stage_within_nine_minutes():
    proc = subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    stages = dict(re.findall(r"^(?!total)(\S+)\s+(\d+) s$", proc.stdout, re.MULTILINE))
    assert list(stages) == ["build", "tests-cuda", "tests-triton", "stream", "loader", "sampler", "report"]
    total = int(re.search(r"^total (\d+) s$", proc.stdout, re.MULTILINE).group(1))
    assert total == sum(map(int, stages.values())) <= LIMIT_S


def test_every_file_a_stage_runs_exists():
    paths = set(re.findall(r"\b((?:tests|benchmarks)/[\w/]+\.py)\b", SCRIPT.read_text()))
    assert "benchmarks/test_data_pipeline.py" in paths
    assert paths, "no test or benchmark file found in the script"
    assert all((ROOT / p).exists() for p in paths), sorted(p for p in paths if not (ROOT / p).exists())


def test_counts_sum_over_pytest_runs():
    log = "\n".join([
        "....F", "FAILED tests/test_x.py::test_a - AssertionError",
        "1 failed, 40 passed, 3 skipped in 12.3s",
        "========== 17 passed, 2 errors in 4.01s ==========",
    ])
    assert closing_counts(log) == {"failed": 1, "passed": 57, "skipped": 3, "error": 2}


def _stream_run(mode: str, median_s: float) -> dict:
    backend = mode.split("+")[0]
    return {"stats": {"median": median_s, "min": median_s * 0.9},
            "extra_info": {"kind": "train-stream", "mode": mode, "backend": backend, "graphs": "+" in mode,
                           "device": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0",
                           "first_pass": {"seconds": 30.0, "subnets": 42, "compiled": 24, "tuned": 0}}}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    medians = {"torch": 0.040, "triton": 0.030, "cuda": 0.032, "torch+graphs": 0.024, "triton+graphs": 0.018,
               "cuda+graphs": 0.022}
    (tmp_path / "stream_benchmark.json").write_text(
        json.dumps({"benchmarks": [_stream_run(m, t) for m, t in medians.items()]}))
    rows = [("build", 60, 0), ("tests-cuda", 40, 0), ("tests-triton", 115, 124), ("stream", 120, 0), ("loader", 30, 0),
            ("sampler", 45, 0)]
    (tmp_path / "timeline.tsv").write_text(
        "stage\tstart\tseconds\tstatus\tlimit\n" + "".join(f"{s}\t1000\t{t}\t{rc}\t200\n" for s, t, rc in rows))
    (tmp_path / "tests-cuda.log").write_text("120 passed, 2 skipped in 35.0s\n")
    (tmp_path / "tests-triton.log").write_text("80 passed in 90.0s\n")
    (tmp_path / "loader_benchmark.json").write_text(json.dumps({"benchmarks": [
        _loader_run("files", 11000), _loader_run("cache", 30000)]}))
    (tmp_path / "sampler_e2e.json").write_text(json.dumps(
        {"steps": 40, "batch_size": 128, "backend": "torch", "step_ratio": 1.015, "wall_ratio": 1.04,
         "runs": {"uniform": {"step_ms": 42.0, "wall_s": 20.0}, "focus": {"step_ms": 42.63, "wall_s": 20.8}}}))
    return tmp_path


def _loader_run(source: str, img_s: float) -> dict:
    return {"stats": {"median": 0.05}, "extra_info": {
        "kind": "data-loader", "source": source, "workers": 15, "pin_memory": True, "img_s": img_s,
        "consumes_img_s": {"eager": 3048, "fused": 10667}, "ratio_to_fused": round(img_s / 10667, 3),
        "fused_step_with_loader_ms": 12.4, "added_share_of_fused_step": 0.033}}


def test_report_ratios_targets_and_timeouts(results: Path):
    verdict = report(results, {"device": "NVIDIA H200"})
    stream = verdict["stream"]
    assert stream["modes"]["torch"]["ratio"] == 1.0
    assert stream["modes"]["triton+graphs"]["ratio"] == pytest.approx(0.45)
    assert stream["targets"]["triton+graphs"]["met"] and not stream["targets"]["cuda+graphs"]["met"]
    assert verdict["stages"]["tests-triton"]["status"] == "timeout"
    assert verdict["stages"]["tests-cuda"] == {"status": "ok", "tests": {"passed": 120, "skipped": 2}}
    assert verdict["not_measured"] == ["tests-triton (timeout)"]
    text = markdown(verdict)
    assert all(f"`{m}`" in text for m in MODES) and "| tests-triton | timeout | 115 / 200 |" in text
    loader = verdict["loader"]["sources"]
    assert not loader["files"]["met"] and loader["cache"]["met"]  # 1.03x and 2.81x the fused step; target 1.2x
    assert "| files | 15 | 11000 | 1.031 | 12.4 | no |" in text
    assert verdict["sampler"]["target"] == {"at_most": 1.02, "ratio": 1.015, "met": True}
    assert "| focus | 42.63 | 20.8 |" in text and "target step ratio at most 1.02: met" in text


def test_report_says_what_was_not_measured(results: Path):
    (results / "stream_benchmark.json").unlink()
    (results / "loader_benchmark.json").unlink()
    (results / "sampler_e2e.json").unlink()
    (results / "timeline.tsv").write_text("stage\tstart\tseconds\tstatus\tlimit\nbuild\t1000\t105\t1\t110\n")
    verdict = report(results, {})
    assert verdict["stream"] is None
    assert [m for m in verdict["not_measured"] if m.startswith("stream mode")] == [f"stream mode {m}" for m in MODES]
    assert "build (failed)" in verdict["not_measured"] and "stream (not run)" in verdict["not_measured"]
    loader = [m for m in verdict["not_measured"] if m.startswith("loader from")]
    assert loader == [f"loader from {s}" for s in LOADER_SOURCES]
    assert "loader (not run)" in verdict["not_measured"]
    assert verdict["sampler"] is None and "sampler focus/uniform train time" in verdict["not_measured"]
