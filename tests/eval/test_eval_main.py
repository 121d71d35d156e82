"""fastface.eval.__main__ and the console script: `python -m fastface.eval` and `fastface-eval`."""
import importlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_module_help_runs():
    out = subprocess.run([sys.executable, "-m", "fastface.eval", "--help"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0 and "--config" in out.stdout


def test_console_script_is_the_command_line():
    """pyproject's `fastface-eval` entry point names `main` of fastface.eval.run."""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        target = tomllib.load(fh)["project"]["scripts"]["fastface-eval"]
    module, _, name = target.partition(":")
    from fastface.eval.run import main

    assert getattr(importlib.import_module(module), name) is main
