"""Export: safetensors + JSON round trip, loadable without the supernet; clear errors on bad files.

That the directory is a timm model is tests/test_timm_export.py.
"""

import json
import random
import subprocess
import sys

import pytest
import torch

from focusformer_fast import SearchSpace, Supernet
from focusformer_fast.models import export


@pytest.fixture()
def exported(tmp_path):
    torch.manual_seed(0)
    space = SearchSpace.preset("digits")
    net = Supernet(space).eval()
    arch = space.sample(random.Random(5))
    model = net.extract(arch).eval()
    export.save(model, tmp_path / "m", extra={"val_acc": 0.5})
    return net, arch, tmp_path / "m"


def test_round_trip_outputs_equal(exported):
    net, arch, path = exported
    x = torch.randn(3, 1, 8, 8)
    loaded = export.load(path)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x, arch), rtol=1e-5, atol=1e-5)
    record = json.loads((path / export.CONFIG_NAME).read_text())["focusformer"]
    assert record["format_version"] == export.FORMAT_VERSION and record["extra"] == {"val_acc": 0.5}
    assert record["arch"] == arch.to_dict()
    assert sorted(p.name for p in path.iterdir()) == [export.CONFIG_NAME, export.WEIGHTS_NAME]


def test_loads_in_a_process_without_the_supernet(exported):
    _, _, path = exported
    code = (
        "import torch\n"
        "from focusformer_fast.models import export\n"
        f"m = export.load({str(path)!r})\n"
        "print(m(torch.zeros(1, 1, 8, 8)).shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch.Size([1, 10])"


def test_bad_files_give_clear_errors(exported, tmp_path):
    _, _, path = exported
    with pytest.raises(ValueError, match="does not exist"):
        export.load(tmp_path / "nowhere")
    (path / export.WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        export.load(path)
    meta = json.loads((path / export.CONFIG_NAME).read_text())
    meta["focusformer"]["format_version"] = 99
    (path / export.CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version=99"):
        export.load(path)
    (path / export.CONFIG_NAME).write_text("{")
    with pytest.raises(ValueError, match="malformed"):
        export.load(path)


# -- python -m focusformer_fast.export DIR --format onnx|pt2 ----------------------------------
def _images(batch):
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))


def test_onnx_runs_in_onnxruntime_at_two_batch_sizes(exported, capsys):
    ort = pytest.importorskip("onnxruntime")
    from focusformer_fast.export.__main__ import main

    net, arch, path = exported
    assert main([str(path), "--format", "onnx"]) == 0
    assert f"wrote {path / 'model.onnx'}" in capsys.readouterr().out
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = _images(batch)
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        with torch.no_grad():
            torch.testing.assert_close(got, net(x, arch), rtol=0, atol=1e-4)


def test_pt2_program_runs_at_two_batch_sizes(exported, tmp_path):
    from focusformer_fast.export.__main__ import main

    net, arch, path = exported
    out = tmp_path / "deploy" / "subnet.pt2"
    assert main([str(path), "--format", "pt2", "--output", str(out)]) == 0
    program = torch.export.load(str(out)).module()
    for batch in (2, 7):
        x = _images(batch)
        with torch.no_grad():
            torch.testing.assert_close(program(x), net(x, arch), rtol=0, atol=1e-4)


def test_export_cli_errors_are_one_line_and_write_nothing(exported, tmp_path, capsys, monkeypatch):
    import importlib.util

    from focusformer_fast.export.__main__ import main

    _, _, path = exported

    def error_of(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")
        return err

    assert "does not exist" in error_of([str(tmp_path / "nowhere"), "--format", "pt2"])
    assert "invalid choice: 'tflite'" in error_of([str(path), "--format", "tflite"])
    (tmp_path / "taken.pt2").write_bytes(b"mine")
    assert "--force" in error_of([str(path), "--format", "pt2", "--output", str(tmp_path / "taken.pt2")])
    assert (tmp_path / "taken.pt2").read_bytes() == b"mine"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert "needs the [onnx] extra (onnxruntime not installed)" in error_of([str(path), "--format", "onnx"])
    monkeypatch.undo()
    err = error_of([str(path), "--format", "pt2", "--atol", "-1"])
    assert "--atol=-1.0 must be > 0" in err
    assert sorted(p.name for p in path.iterdir()) == [export.CONFIG_NAME, export.WEIGHTS_NAME]


def test_a_conversion_outside_tolerance_is_refused(exported, capsys):
    pytest.importorskip("onnxruntime")
    from focusformer_fast.export.__main__ import main

    _, _, path = exported
    assert main([str(path), "--format", "onnx", "--atol", "1e-30"]) == 2
    assert "differs from PyTorch by" in capsys.readouterr().err
    assert not (path / "model.onnx").exists()


def test_an_export_of_the_first_format_is_named_as_such(exported):
    _, _, path = exported
    (path / export.CONFIG_NAME).write_text(json.dumps({"format_version": 1, "config": {}, "extra": {}}))
    with pytest.raises(ValueError, match="format_version=1; this version reads 2"):
        export.load(path)
    (path / export.CONFIG_NAME).write_text(json.dumps({"focusformer": {"format_version": 2}, "num_classes": 10}))
    with pytest.raises(ValueError, match="malformed: no field 'architecture'"):
        export.load(path)
