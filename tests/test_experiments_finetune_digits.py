"""``python -m focusformer_fast.experiments.finetune_digits`` on a tiny setting: the inherited vs fine-tuned
(with and without a teacher) accuracies it reports are those of its runs' results."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_digits_experiment_reports_its_runs(tmp_path, capsys):
    from focusformer_fast.experiments.finetune_digits import main as experiment

    work, output = tmp_path / "work", tmp_path / "docs" / "ft"
    assert experiment(["--seeds", "0", "--work", str(work), "--output", str(output), "--budget", "2M",
                       "--train-args", "--steps 10 --specialize-n 2 --num-budgets 2", "--finetune-args", "--steps 2"]) == 0
    raw = json.loads((tmp_path / "docs" / "ft_raw.json").read_text())
    table = (tmp_path / "docs" / "ft.md").read_text()
    for variant, run in (("finetune", "ft-s0"), ("finetune --teacher", "ftkd-s0")):
        results = json.loads((work / run / "results.json").read_text())
        assert raw["seeds"][0][variant] == results
        assert f"| `{variant}` | {100 * results['finetuned']['val_acc']:.2f} ± 0.00 | " \
               f"{100 * results['finetuned']['test_acc']:.2f} ± 0.00 |" in table
    assert raw["seeds"][0]["search"]["flops"] <= 2e6 and "torch" in raw["versions"]
    assert raw["devices"] == [results["versions"]["device"]]
    assert results["teacher"] == str(work / "run-s0" / "checkpoint.pt")
