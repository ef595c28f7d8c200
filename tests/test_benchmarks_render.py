"""``benchmarks/render.py``: the device in a table's header, each backend's time and ratio in its cells, and
a results file without the benchmarks it renders refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


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
