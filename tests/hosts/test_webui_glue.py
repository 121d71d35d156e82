"""fastface.hosts.webui (UI, paste, API args, XYZ) with stand-ins for gradio and A1111's modules.

The stand-ins follow A1111 v1.10.1: `InputAccordion` is a checkbox-valued context manager
(modules/ui_components.py L88-130); components take `tooltip=` (modules/gradio_extensons.py L18);
`infotext_fields` entries may be callables of the parsed params (modules/infotext_utils.py
L476-516); XYZ's `AxisOption(label, type, apply, ..., choices=...)` and `axis_options`
(scripts/xyz_grid.py L214-238), found through `scripts.scripts_data`.
"""
import sys
import types
from types import SimpleNamespace

import pytest

from fastface.config import FIELD_NAMES, VIEW_FIELDS, FastFaceArgs, field_kind, meta
from fastface.hosts import webui
from fastface.hosts.common import NOTE_KEY, PatchSet
from fastface.infotext import INFOTEXT_KEY, paste_key, to_infotext, ui_values
from fastface.presets import PRESETS

from infotext_standin import parameter_line, parse_parameter_line


class FakeComponent:
    def __init__(self, kind, value=None, **kwargs):
        self.kind, self.value, self.kwargs, self.handlers = kind, value, kwargs, {}
        self.elem_id, self.tooltip = kwargs.get("elem_id"), kwargs.get("tooltip")

    def input(self, fn, inputs, outputs, **_):
        self.handlers.setdefault("input", []).append((fn, inputs, outputs))

    def change(self, fn, inputs, outputs, **_):
        self.handlers.setdefault("change", []).append((fn, inputs, outputs))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def fake_gradio(monkeypatch):
    gr = types.ModuleType("gradio")
    gr.created = []   # every component and container, in creation order (what `with` nests is not kept)

    def make(kind, **k):
        comp = FakeComponent(kind, k.pop("value", None), **k)
        gr.created.append(comp)
        return comp

    for kind in ("Checkbox", "Slider", "Radio", "Dropdown", "Textbox", "Accordion", "Row", "Group", "Markdown"):
        setattr(gr, kind, lambda *a, kind=kind, **k: make(kind, **k))
    gr.update = lambda **kw: {"__type__": "update", **kw}
    ui_components = types.ModuleType("modules.ui_components")
    ui_components.InputAccordion = lambda value, **k: FakeComponent("InputAccordion", value, **k)
    modules = sys.modules.get("modules") or types.ModuleType("modules")
    monkeypatch.setitem(sys.modules, "gradio", gr)
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.ui_components", ui_components)
    return gr


class FakeScript:
    def __init__(self, tab="txt2img"):
        self.tab = tab

    def elem_id(self, item):
        return f"script_{self.tab}_fastface_{item}"


def by_elem_id(gr, item, tab="txt2img"):
    [comp] = [c for c in gr.created if c.elem_id == f"script_{tab}_fastface_{item}"]
    return comp


def handler(comp, name, event="change"):
    [found] = [h for h in comp.handlers.get(event, []) if h[0].__name__ == name]
    return found


def test_ui_returns_every_field_in_order_with_tooltips(fake_gradio):
    script = FakeScript()
    comps = webui.build_ui(script, False)
    assert len(comps) == len(FIELD_NAMES)
    defaults = ui_values(FastFaceArgs())
    for name, comp in zip(FIELD_NAMES, comps):
        assert comp.value == defaults[name], name
        assert comp.elem_id == f"script_txt2img_fastface_{name}"
        if name != "enabled":
            assert comp.tooltip == meta(name)["tip"]
        if field_kind(name) == "float":
            assert comp.kind == "Slider" and (comp.kwargs["minimum"], comp.kwargs["maximum"]) == (meta(name)["lo"], meta(name)["hi"])
    assert comps[0].kind == "InputAccordion" and comps[0].value is False
    pasted = [n for n in FIELD_NAMES if n not in VIEW_FIELDS]   # a paste leaves view options alone
    assert "show_attention" in VIEW_FIELDS
    assert script.paste_field_names == [paste_key(n) for n in pasted]
    assert [c for c, _ in script.infotext_fields] == [c for n, c in zip(FIELD_NAMES, comps) if n in pasted]


def test_ui_can_be_built_again_without_side_effects(fake_gradio, monkeypatch):
    before = dict(sys.modules)
    webui.build_ui(FakeScript(), False)
    webui.build_ui(FakeScript(), True)
    assert not PatchSet.live
    assert set(sys.modules) - set(before) <= {"fastface.hosts.webui"}


def test_preset_pick_fills_the_method_controls(fake_gradio):
    comps = dict(zip(FIELD_NAMES, webui.build_ui(FakeScript(), False)))
    [(fn, inputs, outputs)] = comps["preset"].handlers["input"]
    # pasting must not re-fill from the preset: its change handler only updates the changes line
    assert [o for _, _, o in comps["preset"].handlers["change"]] == [[by_elem_id(fake_gradio, "preset_changes")]]
    updates = fn("Realistic portrait")
    values = ui_values(PRESETS["Realistic portrait"])
    names = [n for n in FIELD_NAMES if n not in ("enabled", "preset", "readout") + VIEW_FIELDS]
    assert outputs == [comps[n] for n in names]  # picking a preset keeps the readout and view choices
    assert [u["value"] for u in updates] == [values[n] for n in names]


def test_paste_fields_restore_every_control(fake_gradio):
    script = FakeScript()
    webui.build_ui(script, False)
    args = PRESETS["Realistic portrait"].replace(alpha_peak=2.25, am_up=False, beta_custom=(1.0, 4.0))
    ui_params = {"Steps": "4", INFOTEXT_KEY: to_infotext(args)}
    webui.on_infotext_pasted("...", ui_params)            # UI path: callback first
    api_params = {"Steps": "4", INFOTEXT_KEY: to_infotext(args)}  # API path: no callback
    for params in (ui_params, api_params):
        restored = {name: fn(params) for (_, fn), name in zip(script.infotext_fields, FIELD_NAMES)}
        assert restored == {n: v for n, v in ui_values(args).items() if n not in VIEW_FIELDS}
    off = {"Steps": "4"}
    webui.on_infotext_pasted("...", off)
    assert {n: fn(off) for (_, fn), n in zip(script.infotext_fields, FIELD_NAMES)}["enabled"] is False


def job_p():
    return SimpleNamespace(extra_generation_params={}, sd_model=SimpleNamespace())


def test_process_writes_infotext_and_starts_a_job():
    p = job_p()
    webui.process(p, {"enabled": True, "preset": "Realistic", "alpha_peak": 2.0})
    assert p.fastface_job is not None and p.fastface_job.args.alpha_peak == 2.0
    assert p.extra_generation_params[INFOTEXT_KEY] == "preset=Realistic, a=2.0"
    assert p.extra_generation_params[NOTE_KEY]() is None  # no notes: the key is dropped
    p.fastface_job.note("hello")
    assert p.extra_generation_params[NOTE_KEY]() == "hello"
    PatchSet.undo_all()


def test_positional_api_args_like_the_ui():
    p = job_p()
    args = PRESETS["Stylistic"].replace(phi=0.5)
    values = list(ui_values(args).values())
    webui.process(p, *values)
    assert p.fastface_job.args == args
    PatchSet.undo_all()


def test_rejected_api_value_turns_fastface_off_and_says_why():
    p = job_p()
    webui.process(p, {"enabled": True, "preset": "Realistic", "am_mode": "sharpen"})
    assert p.fastface_job is None
    assert INFOTEXT_KEY not in p.extra_generation_params
    note = p.extra_generation_params[NOTE_KEY]
    assert note == ("FastFace is off for this job: rejected am_mode "
                    "(expected one of off, scale-power, softmask; got 'sharpen')")
    line = parameter_line({"Steps": 4, "Seed": 1, **p.extra_generation_params})
    assert parse_parameter_line(line)[NOTE_KEY] == note   # A1111 quotes it and reads it back whole


def test_disabled_writes_nothing():
    p = job_p()
    webui.process(p, {"enabled": False, "preset": "Realistic"})
    assert p.fastface_job is None and p.extra_generation_params == {}


class AxisOption:
    def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label, self.type, self.apply, self.choices = label, type, apply, choices


@pytest.fixture
def fake_xyz(monkeypatch):
    xyz = types.ModuleType("xyz_grid.py")
    xyz.AxisOption, xyz.axis_options = AxisOption, [AxisOption("Seed", int, None)]
    script_class = type("Script", (), {"__module__": "xyz_grid.py"})
    scripts = types.ModuleType("modules.scripts")
    scripts.scripts_data = [SimpleNamespace(script_class=script_class, module=xyz)]
    monkeypatch.setitem(sys.modules, "modules.scripts", scripts)
    if "modules" not in sys.modules:
        monkeypatch.setitem(sys.modules, "modules", types.ModuleType("modules"))
    monkeypatch.setattr(sys.modules["modules"], "scripts", scripts, raising=False)
    return xyz


def test_xyz_axes_registered_once_and_applied_per_cell(fake_xyz):
    webui.add_xyz_axes()
    webui.add_xyz_axes()
    labels = [o.label for o in fake_xyz.axis_options if o.label.startswith("[FastFace]")]
    assert len(labels) == len(set(labels)) == len(webui.XYZ_FIELDS)
    by_label = {o.label: o for o in fake_xyz.axis_options}
    preset_axis = by_label["[FastFace] Preset"]
    assert preset_axis.choices() == list(PRESETS)
    alpha_axis = by_label["[FastFace] α peak (identity)"]

    base = job_p()
    cells = []
    for preset in ("Stylistic", "Realistic portrait"):
        for alpha in (1.0, 2.0):
            cell = SimpleNamespace(**vars(base))  # XYZ works on a shallow copy per cell
            preset_axis.apply(cell, preset, None)
            alpha_axis.apply(cell, alpha, None)
            cells.append(webui.resolve_args(cell, [{"enabled": False, "preset": "Off"}])[0])
    assert [(a.enabled, a.preset, a.alpha_peak, a.am_mode) for a in cells] == [
        (True, "Stylistic", 1.0, "off"), (True, "Stylistic", 2.0, "off"),
        (True, "Realistic portrait", 1.0, "softmask"), (True, "Realistic portrait", 2.0, "softmask")]
    assert not hasattr(base, "fastface_xyz")

    enabled_axis = by_label["[FastFace] Enabled"]
    cell = SimpleNamespace(**vars(base))
    enabled_axis.apply(cell, "False", None)
    assert webui.resolve_args(cell, [{"enabled": True, "preset": "Realistic"}])[0].enabled is False


# -- "Show face attention" and mode-dependent visibility ---------------------------------------------
def test_show_attention_is_a_ui_checkbox_and_an_api_field(fake_gradio):
    comps = dict(zip(FIELD_NAMES, webui.build_ui(FakeScript(), False)))
    box = comps["show_attention"]
    assert box.kind == "Checkbox" and box.value is False and box.kwargs["label"] == "Show face attention"
    assert FIELD_NAMES[-1] == "show_attention"   # appended: older positional API clients keep working
    p = job_p()
    webui.process(p, {"enabled": True, "preset": "Realistic", "show_attention": True})
    assert p.fastface_job.args.show_attention is True
    assert p.extra_generation_params[INFOTEXT_KEY] == "preset=Realistic"   # not a generation parameter
    PatchSet.undo_all()


def _visible_after(comps, **modes):
    """Fire the mode controls' change handler with `modes` and read back the visibility updates."""
    values = {n: ui_values(FastFaceArgs())[n] for n in webui.MODE_FIELDS}
    values.update(modes)
    fn, inputs, outputs = handler(comps[webui.MODE_FIELDS[0]], "update_visibility")
    updates = fn(*[values[n] for n in webui.MODE_FIELDS])
    assert inputs == [comps[n] for n in webui.MODE_FIELDS]
    names = {id(c): n for n, c in comps.items()}
    for c in outputs:   # the rows and Advanced sections, by their elem_id or their controls
        names.setdefault(id(c), c.elem_id or "row")
    assert all(set(u) == {"__type__", "visible"} for u in updates)   # values are never touched
    return {names[id(c)]: u["visible"] for c, u in zip(outputs, updates) if names[id(c)] != "row"}


def test_only_controls_of_the_chosen_modes_are_shown(fake_gradio):
    comps = dict(zip(FIELD_NAMES, webui.build_ui(FakeScript(), False)))
    # initial state follows the defaults: scale-power, intermediate schedule, DCG on
    initial = {n: comps[n].kwargs.get("visible", True) for n in FIELD_NAMES}  # the accordion toggle: always
    assert initial["sp_s_down"] and initial["sp_p"] and not initial["sm_quantile"] and not initial["sm_invert_first"]
    assert not initial["alpha_custom"] and initial["alpha_peak"] and initial["show_attention"] and initial["am_mode"]
    for name in webui.MODE_FIELDS:   # every controlling field updates the same outputs
        assert handler(comps[name], "update_visibility")[2][:len(webui.ACTS_ONLY_WITH)] == [
            comps[n] for n in webui.ACTS_ONLY_WITH]

    soft = _visible_after(comps, am_mode="softmask")
    assert all(soft[n] for n in ("sm_quantile", "sm_d_first", "sm_d_later", "sm_s_first", "sm_s_later",
                                 "sm_adain", "sm_invert_first", "am_down", "clamp_max"))
    assert not any(soft[n] for n in ("sp_s_down", "sp_s_mid", "sp_s_up", "sp_p"))
    off = _visible_after(comps, am_mode="off")
    assert not any(off[n] for n in ("sp_p", "sm_quantile", "am_down", "am_up", "clamp_max"))
    custom = _visible_after(comps, schedule="custom")
    assert custom["alpha_custom"] and custom["beta_custom"]
    no_dcg = _visible_after(comps, schedule="custom", dcg=False)
    assert not any(no_dcg[n] for n in ("alpha_peak", "beta_peak", "phi", "alpha_custom", "rescale_steps"))
    assert no_dcg["sp_p"]   # AM controls do not depend on DCG


def test_every_field_is_either_always_shown_or_tied_to_a_mode():
    from fastface.config import METHOD_FIELDS
    always = {"dcg", "am_mode", "hires"}
    assert set(webui.ACTS_ONLY_WITH) | always == set(METHOD_FIELDS)
    assert set(webui.MODE_FIELDS) == {"dcg", "schedule", "am_mode"}
    assert webui.shown_controls({"dcg": True, "schedule": "custom", "am_mode": "scale-power"})["alpha_custom"]


# -- issue #17: what a newcomer reads in the accordion ------------------------------------------------
def test_an_advanced_section_with_nothing_to_show_is_hidden(fake_gradio):
    comps = dict(zip(FIELD_NAMES, webui.build_ui(FakeScript(), False)))
    guidance = by_elem_id(fake_gradio, "guidance_advanced")
    attention = by_elem_id(fake_gradio, "attention_advanced")
    assert guidance.kind == attention.kind == "Accordion"
    assert guidance.kwargs["visible"] and attention.kwargs["visible"]   # the defaults: DCG and scale-power
    for preset, dcg_box, am_box in (("Softmask only", False, True), ("Stylistic", True, False),
                                    ("Off", False, False), ("Realistic portrait", True, True)):
        values = ui_values(PRESETS[preset])
        shown = _visible_after(comps, **{n: values[n] for n in webui.MODE_FIELDS})
        assert (shown["script_txt2img_fastface_guidance_advanced"],
                shown["script_txt2img_fastface_attention_advanced"]) == (dcg_box, am_box), preset


def test_rows_and_sections_follow_their_controls():
    """Every row and Advanced section is shown exactly when one of its controls is, for every
    combination of the modes."""
    import itertools
    for dcg, schedule, am in itertools.product((True, False), ("intermediate", "custom"), ("off", "scale-power", "softmask")):
        shown = webui.shown_controls({"dcg": dcg, "schedule": schedule, "am_mode": am})
        for _, _, main, advanced in webui._LAYOUT:
            inner = [n for names in advanced for n in names]
            assert webui.container_shown(inner, shown) == any(shown[n] for n in inner)
            for names in main + advanced:
                assert webui.container_shown(names, shown) == any(shown.get(n, True) for n in names)


def test_hires_checkbox_only_in_txt2img_value_kept(fake_gradio):
    txt = dict(zip(FIELD_NAMES, webui.build_ui(FakeScript("txt2img"), False)))
    img = dict(zip(FIELD_NAMES, webui.build_ui(FakeScript("img2img"), True)))
    assert txt["hires"].kwargs["visible"] is True and img["hires"].kwargs["visible"] is False
    assert img["hires"].value is True                          # still an arg, with its default
    assert len(img) == len(FIELD_NAMES)                           # the args and their order stay
    for name in webui.MODE_FIELDS:                                # and no mode change shows it again
        assert all(img["hires"] not in outputs for _, _, outputs in img[name].handlers["change"])


def test_rows_fit_the_webui_column(fake_gradio):
    """At most three controls side by side, a radio of three or more choices alone, and at most two
    sliders in a row where a label is long (they wrapped at 1400 px, issue #17)."""
    webui.build_ui(FakeScript(), False)
    for _, _, main, advanced in webui._LAYOUT:
        for names in main + advanced:
            assert len(names) <= 3, names
            if any(field_kind(n) == "choice" and len(meta(n)["choices"]) >= 3 for n in names):
                assert len(names) == 1, names   # gradio 4 wraps a third choice next to another radio
            if any(len(meta(n)["label"]) > 18 for n in names if field_kind(n) == "float"):
                assert sum(field_kind(n) == "float" for n in names) <= 2, names
    laid_out = [n for _, _, main, adv in webui._LAYOUT for names in main + adv for n in names]
    assert sorted(laid_out + list(webui.HOST_ROW) + ["enabled", "preset"]) == sorted(FIELD_NAMES)


def test_preset_line_counts_the_changed_controls(fake_gradio):
    comps = dict(zip(FIELD_NAMES, webui.build_ui(FakeScript(), False)))
    line = by_elem_id(fake_gradio, "preset_changes")
    assert line.kind == "Markdown" and line.kwargs["visible"] is False
    assert line not in comps.values()                             # not an arg: nothing stored changes
    method = [n for n in FIELD_NAMES if n in webui.METHOD_FIELDS]

    def summary(args, preset=None):
        values = ui_values(args)
        fn, inputs, outputs = handler(comps["preset"], "show_changes")
        assert inputs == [comps["preset"]] + [comps[n] for n in method] and outputs == [line]
        return fn(preset or args.preset, *[values[n] for n in method])

    assert summary(PRESETS["Realistic"]) == {"__type__": "update", "value": "", "visible": False}
    changed = PRESETS["Realistic"].replace(am_mode="softmask", alpha_peak=2.0)
    assert summary(changed) == {"__type__": "update", "visible": True,
                                "value": "Realistic + 2 changes: α peak (identity), Attention transform"}
    assert summary(PRESETS["Realistic"].replace(phi=0.5))["value"] == "Realistic + 1 change: Rescale φ"
    # the count is what the infotext records (preset plus the changed fields)
    assert to_infotext(changed.replace(enabled=True)) == "preset=Realistic, a=2.0, am=softmask"
    # picking the preset that the values match clears the line; every control triggers it
    assert summary(changed, preset="Realistic")["visible"] is True
    for name in ["preset"] + method:
        assert handler(comps[name], "show_changes")[2] == [line]
    assert "show_changes" not in [h[0].__name__ for h in comps["readout"].handlers.get("change", [])]
    bad = webui.preset_summary("Realistic", *[("1/x" if n == "alpha_custom" else ui_values(PRESETS["Realistic"])[n])
                                              for n in method])
    assert bad == "not a valid value: Custom α list"


def test_tooltips_are_plain_text():
    import re
    for name in FIELD_NAMES:
        tip = meta(name)["tip"]
        assert not re.search(r"\*\w|\w\*|`|__|\[[^\]]*\]\(", tip), (name, tip)   # no Markdown marks
    assert "Softmask only" in meta("preset")["tip"] and "*" not in meta("preset")["tip"]
