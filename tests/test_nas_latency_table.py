"""Latency tables (``nas.latency.table``) of the digits space, built on this CPU with a few timed reps so they
check logic, not speed: every block shape, stem and head covered; the save/load round trip; the predictor
(stem + blocks + head, blocks as marginal costs of the raw measurements); batch sizes; a table from another
device or version warned about, or refused when strict; corrupt and missing files refused; a failed save
keeps the old file."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from _latency_tables import DIGITS, table, table_file  # noqa: F401  (fixtures)
from focusformer_fast.nas.latency.table import FORMAT_VERSION as TABLE_FORMAT_VERSION
from focusformer_fast.nas.latency.table import LatencyModel, LatencyTable, LatencyTableWarning, block_key
from focusformer_fast.nas.latency.validate import validation_archs
from focusformer_fast.space import Arch, SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")


def _archs(n: int = 6) -> list[Arch]:
    return [DIGITS.smallest(), DIGITS.middle(), DIGITS.largest(), *validation_archs(DIGITS, n, seed=3)]


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
