"""install.py: installs nothing next to the host's onnxruntime(-gpu); the readout's absence is one line."""
import importlib.util
import pathlib
import runpy
import sys

import pytest

INSTALL = pathlib.Path(__file__).resolve().parent.parent / "install.py"


def load(monkeypatch, present):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: real(name, *a) if name in present or name not in ("insightface", "onnxruntime") else None)
    monkeypatch.setitem(sys.modules, "launch", None)  # importing launch would fail: nothing may be installed
    return runpy.run_path(str(INSTALL))


def test_missing_insightface_is_one_line_and_nothing_is_installed(monkeypatch, capsys):
    module = load(monkeypatch, present={"onnxruntime"})
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == ["[FastFace] likeness readout off: insightface not installed in the WebUI's Python"]
    assert not module["REQUIREMENTS"]


def test_an_onnxruntime_gpu_is_left_alone(monkeypatch, capsys):
    module = load(monkeypatch, present=set())
    assert "onnxruntime" in module["NEVER_INSTALL"] and "insightface" in module["NEVER_INSTALL"]
    monkeypatch.setattr(module["importlib"].metadata, "distributions",
                        lambda: [type("D", (), {"metadata": {"Name": "onnxruntime-gpu"}})()])
    assert module["onnxruntime_distributions"]() == ["onnxruntime-gpu"]
    assert "leaves it alone" in module["readout_status"]()


def test_all_present_prints_nothing(monkeypatch, capsys):
    if importlib.util.find_spec("insightface") is None or importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("insightface and onnxruntime are in the test extra")
    load(monkeypatch, present={"insightface", "onnxruntime"})
    assert capsys.readouterr().out == ""
