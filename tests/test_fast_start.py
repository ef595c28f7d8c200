"""A command starts without the heavy libraries it does not use yet.

``--help`` of every command, and importing a command module, must not import Triton, Inductor,
timm, matplotlib, onnx or scipy: each costs 0.3-1.3 s of start-up on a 2-core machine. Read from
``sys.modules`` of a fresh process, not timed. timm still learns ``focusformer_vit`` from
``import focusformer_fast``, in either import order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch._inductor", "triton", "timm", "matplotlib", "onnx", "scipy")
COMMANDS = ("train", "search", "profile", "export.__main__", "finetune")


def _loaded_after(code: str) -> list[str]:
    """The :data:`HEAVY` modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", COMMANDS)
def test_help_imports_none_of_the_heavy_libraries(command):
    code = (f"import contextlib, io, sys\nfrom focusformer_fast.{command} import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            f"    main(['--help'])")
    assert _loaded_after(code) == []


def test_importing_the_package_and_train_imports_none_of_them():
    assert _loaded_after("import focusformer_fast, focusformer_fast.train, focusformer_fast.finetune") == []


@pytest.mark.parametrize("order", ["import focusformer_fast\nimport timm", "import timm\nimport focusformer_fast"])
def test_timm_knows_the_architecture_in_either_import_order(order):
    code = f"{order}\nassert timm.is_model('focusformer_vit'), 'not registered'"
    assert "timm" in _loaded_after(code)
