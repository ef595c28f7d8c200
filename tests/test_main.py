"""The package's commands (``python -m focusformer_fast``, ``focusformer_fast.__main__``): it lists them, the
console scripts point at them; every flag of each says its default, and ``--version`` prints the version."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from focusformer_fast import __main__ as package_main
from focusformer_fast import finetune, profile, search, train
from focusformer_fast.export import __main__ as export_cli
from focusformer_fast.training import config
from focusformer_fast.utils.version import __version__

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


COMMANDS = {"train": train, "search": search, "profile": profile, "export": export_cli, "finetune": finetune}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_says_its_default_and_version_is_printed(name, capsys):
    parser = (config if name == "train" else COMMANDS[name]).build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", "version") and not action.required:
            assert "default" in (action.help or ""), action.option_strings
    with pytest.raises(SystemExit) as done:
        COMMANDS[name].main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip().endswith(__version__)


def _console_scripts(pyproject: Path) -> dict[str, str]:
    """``[project.scripts]`` of ``pyproject`` (name = "module:function" lines; tomllib needs Python 3.11)."""
    text = pyproject.read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip().strip('"') for k, v in pairs}


def test_the_package_lists_its_commands_and_console_scripts_point_at_them():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "focusformer_fast"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0
    scripts = _console_scripts(REPO / "pyproject.toml")
    for name, module in COMMANDS.items():
        assert f"python -m focusformer_fast.{name}" in proc.stdout and f"focusformer-{name}" in proc.stdout
        target, _, attr = scripts[f"focusformer-{name}"].partition(":")
        assert getattr(importlib.import_module(target), attr) is module.main
    assert package_main.main(["--bogus"]) == 2
