"""Export: safetensors + JSON round trip, loadable without the supernet; clear errors on bad files.

That the directory is a timm model is tests/test_timm_export.py.
"""

import json
import random
import subprocess
import sys

import pytest
import torch

from focusformer_fast import SearchSpace, Supernet, export


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
        "from focusformer_fast import export\n"
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
