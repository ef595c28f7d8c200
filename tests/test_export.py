"""``python -m focusformer_fast.export DIR --format onnx|pt2``: the ONNX model runs in onnxruntime and the
torch.export program in PyTorch, at two batch sizes, with the supernet's logits; errors are one line and
write nothing; a conversion outside the tolerance is refused."""

import pytest
import torch

from _exports import exported  # noqa: F401  (a fixture)
from focusformer_fast.models import export


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
