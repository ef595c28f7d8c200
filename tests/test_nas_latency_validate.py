"""Validating a latency table (``nas.latency.validate``): predictor statistics, seeded validation archs, a
report of the table's and the FLOPs' errors and rank correlations; on a GPU a bf16 table of autoformer-t
predicts graph-mode latency (a smaller run than the target check)."""

from __future__ import annotations

import pytest
import scipy.stats

from _latency_tables import table  # noqa: F401  (a fixture)
from _latency_tables import DIGITS, FAST
from focusformer_fast.nas.latency.build import build_table
from focusformer_fast.nas.latency.table import LatencyModel, LatencyTable
from focusformer_fast.nas.latency.validate import predictor_stats, summary_lines, validate, validation_archs
from focusformer_fast.space import SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")


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


@pytest.mark.gpu
def test_gpu_table_predicts_graph_latency_of_autoformer_t() -> None:
    """A smaller run than the target check (100 subnets at batch 1 and 64, via the CLI's --validate)."""
    table = build_table(SearchSpace.preset("autoformer-t"), [1], device="cuda", dtype="bf16", progress=False)
    report = validate(table, 30, seed=1, device="cuda", progress=False)
    lut = report["batches"]["1"]["lut"]
    assert lut["mape"] <= 0.02 and lut["spearman"] >= 0.9, summary_lines(report)
