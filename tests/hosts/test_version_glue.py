"""The version in the WebUI: the start-up line printed when the script registers its callbacks, and
`FastFace version` in the infotext of FastFace jobs, which a paste (UI or API) ignores.

The infotext goes through A1111 v1.10.1's writer and parser (tests/infotext_standin.py); the paste
through `on_infotext_pasted` and the script's `infotext_fields` as in tests/hosts/test_webui_glue.py."""
from __future__ import annotations

import logging
import sys
import types

import pytest

import fastface
from fastface.config import FIELD_NAMES, VIEW_FIELDS
from fastface.hosts import webui
from fastface.hosts.common import NOTE_KEY, PatchSet
from fastface import infotext
from fastface.infotext import INFOTEXT_KEY, ui_values
from fastface.presets import PRESETS

from infotext_standin import parameter_line, parse_parameter_line
import test_webui_glue
from test_webui_glue import FakeScript, job_p

fake_gradio = test_webui_glue.fake_gradio   # the stand-in gradio and InputAccordion fixture, shared

VERSION_KEY = "FastFace version"   # the key as users see it (ADetailer: `ADetailer version`)


# -- infotext ---------------------------------------------------------------------------------------
def test_a_fastface_job_writes_its_version_next_to_its_settings():
    p = job_p()
    webui.process(p, {"enabled": True, "preset": "Realistic", "alpha_peak": 2.0})
    params = p.extra_generation_params
    assert getattr(infotext, "VERSION_KEY", None) == VERSION_KEY
    assert params[VERSION_KEY] == fastface.__version__ == "0.2.0"
    keys = list(params)
    assert keys.index(VERSION_KEY) == keys.index(INFOTEXT_KEY) + 1
    line = parameter_line({"Steps": 4, "Seed": 1, **{k: v for k, v in params.items() if not callable(v)}})
    assert "FastFace version: 0.2.0" in line   # as ADetailer writes `ADetailer version: 25.3.0`
    assert parse_parameter_line(line)[VERSION_KEY] == "0.2.0"
    PatchSet.undo_all()


def test_the_off_preset_is_on_and_writes_the_version():
    p = job_p()
    webui.process(p, {"enabled": True, "preset": "Off"})
    assert p.extra_generation_params[VERSION_KEY] == fastface.__version__
    PatchSet.undo_all()


@pytest.mark.parametrize("request_args", [
    {"enabled": False, "preset": "Realistic"},                        # FastFace off: nothing written
    {"enabled": True, "preset": "Realistic", "am_mode": "sharpen"},   # rejected: off for the job, a note only
])
def test_no_version_when_fastface_is_off_for_the_job(request_args):
    p = job_p()
    webui.process(p, request_args)
    assert p.fastface_job is None and VERSION_KEY not in p.extra_generation_params


def job_infotext(args) -> dict:
    """What A1111 parses back from the parameter line of a FastFace job with these settings (its
    keys as `process` wrote them, with a note), e.g. from PNG Info or the API's `infotext`."""
    p = job_p()
    webui.process(p, *ui_values(args).values())
    p.fastface_job.note("no FaceID unit in sd-webui-controlnet: x, y")
    extra = {k: v() if callable(v) else v for k, v in p.extra_generation_params.items()}
    PatchSet.undo_all()
    return parse_parameter_line(parameter_line({"Steps": 4, "Sampler": "Euler", "Seed": 1, **extra,
                                                "Version": "v1.10.1"}))


def restored(script, params) -> dict:
    return {name: fn(params) for (_, fn), name in zip(script.infotext_fields, FIELD_NAMES)}


def test_pasting_the_version_back_sets_nothing_and_changes_nothing(fake_gradio, caplog):
    script = FakeScript()
    webui.build_ui(script, False)
    assert VERSION_KEY not in script.paste_field_names   # no control reads it
    args = PRESETS["Realistic portrait"].replace(alpha_peak=2.25, am_up=False)
    expected = {n: v for n, v in ui_values(args).items() if n not in VIEW_FIELDS}
    with caplog.at_level(logging.WARNING, logger="fastface"):
        for ui_path in (True, False):   # UI: the paste callback first; API `infotext`: no callback
            with_version = job_infotext(args)
            assert with_version[VERSION_KEY] == "0.2.0" and NOTE_KEY in with_version
            without = {k: v for k, v in with_version.items() if k != VERSION_KEY}
            if ui_path:
                webui.on_infotext_pasted("...", with_version)
                webui.on_infotext_pasted("...", without)
            assert restored(script, with_version) == restored(script, without) == expected
            assert {k: v for k, v in with_version.items() if k != VERSION_KEY} == without
    assert not caplog.records, "the version key is not mistaken for a FastFace setting"


def test_a_newer_or_unknown_version_pastes_the_same(fake_gradio):
    script = FakeScript()
    webui.build_ui(script, False)
    args = PRESETS["Stylistic"]
    params = job_infotext(args)
    assert params.pop(VERSION_KEY) == "0.2.0"
    params[VERSION_KEY] = "9.9.9-dev"
    webui.on_infotext_pasted("...", params)
    assert restored(script, params) == {n: v for n, v in ui_values(args).items() if n not in VIEW_FIELDS}


# -- the start-up line --------------------------------------------------------------------------------
class CallbackRecorder:
    """`modules.script_callbacks`: every `on_*` registration is recorded (A1111 v1.10.1
    modules/script_callbacks.py)."""

    def __init__(self):
        self.registered = []

    def __getattr__(self, name):
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda fn, *a, **k: self.registered.append((name, fn))


@pytest.fixture
def fake_callbacks(monkeypatch):
    for name in ("modules.launch_utils", "modules.extensions", "modules_forge", "modules_forge.forge_version"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    modules = types.ModuleType("modules")
    modules.__path__ = []
    callbacks = CallbackRecorder()
    modules.script_callbacks = callbacks
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.script_callbacks", callbacks)
    return callbacks


def startup_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"[FastFace] {fastface.__version__} (")]


def test_registering_the_script_prints_one_startup_line(fake_callbacks, capsys, monkeypatch):
    monkeypatch.setattr(webui, "extension_folder", lambda: "/nonexistent/sd-webui-fastface")
    webui.register_callbacks()
    assert startup_lines(capsys.readouterr().out) == ["[FastFace] 0.2.0 (no git) on unknown host"]
    assert ("on_infotext_pasted", webui.on_infotext_pasted) in fake_callbacks.registered   # the rest goes on


def test_startup_line_names_this_checkout_and_the_host(fake_callbacks, capsys, monkeypatch, tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("e34b2dae1a1329de348a3042c1fb78cfc9f77583\n")
    monkeypatch.setattr(webui, "extension_folder", lambda: str(tmp_path))
    monkeypatch.setattr(webui.host_info, "describe", lambda: "Forge Neo 2.26, built-in IP-Adapter (sd_forge_ipadapter)")
    webui.print_startup_line()
    assert startup_lines(capsys.readouterr().out) == [
        "[FastFace] 0.2.0 (e34b2da) on Forge Neo 2.26, built-in IP-Adapter (sd_forge_ipadapter)"]


def test_the_startup_line_never_raises(capsys, monkeypatch):
    def broken(*a, **k):
        raise OSError("disk gone")
    monkeypatch.setattr(webui, "extension_folder", broken)
    webui.print_startup_line()   # a warning at most; the script goes on loading
    assert startup_lines(capsys.readouterr().out) == []
