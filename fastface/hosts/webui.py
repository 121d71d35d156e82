"""The WebUI side shared by A1111 and Forge: the accordion, paste fields, XYZ axes, callbacks and
the job life cycle. The thin script in `scripts/` forwards to these functions; the host adapter
(`a1111` or `forge`) is chosen per job from the loaded model.

Everything here imports the WebUI lazily inside functions (`modules`, `gradio`), so the module
itself imports anywhere and the tests can drive it with stand-ins.
"""
from __future__ import annotations

import functools
from typing import Any

from ..config import (FIELD_NAMES, METHOD_FIELDS, PRESET_NAMES, VIEW_FIELDS, FastFaceArgs, field_kind, meta,
                      validate_on)
from .. import __version__
from ..infotext import (INFOTEXT_KEY, VERSION_KEY, changed_fields, expand_pasted_params, paste_key, read_pasted,
                        ui_values)
from ..presets import PRESETS, apply_preset, from_script_args, validate
from ..version import commit_label, extension_folder, startup_line
from . import heap, host_info, recording
from .common import NOTE_KEY, TRACE_KEY, Job, PatchSet, log, note_value, rejected_note
from . import readout

TITLE = "FastFace"
XYZ_PREFIX = "[FastFace] "
XYZ_FIELDS = ("preset", "alpha_peak", "beta_peak", "phi", "am_mode", "sp_s_down", "sp_s_up", "sp_p",
              "sm_quantile", "sm_d_later", "enabled")
DEFAULTS = FastFaceArgs()


def host_for(p):
    """The host adapter for this job: Forge when the model carries Forge's patchers."""
    if hasattr(getattr(p, "sd_model", None), "forge_objects"):
        from . import forge
        return forge
    from . import a1111
    return a1111


# -- UI --------------------------------------------------------------------------------------------
# Controls that act only in some modes: every (controlling field, values) pair must hold for the
# control to be shown. Hiding keeps the value, so pasted infotext and the API are unaffected.
_DCG = ("dcg", (True,))
_SCALE_POWER = ("am_mode", ("scale-power",))
_SOFTMASK = ("am_mode", ("softmask",))
_ANY_AM = ("am_mode", ("scale-power", "softmask"))
ACTS_ONLY_WITH: dict[str, tuple] = {
    "alpha_peak": (_DCG,), "beta_peak": (_DCG,), "phi": (_DCG,), "schedule": (_DCG,),
    "rescale_steps": (_DCG,),
    "alpha_custom": (_DCG, ("schedule", ("custom",))), "beta_custom": (_DCG, ("schedule", ("custom",))),
    "sp_s_down": (_SCALE_POWER,), "sp_s_mid": (_SCALE_POWER,), "sp_s_up": (_SCALE_POWER,),
    "sp_p": (_SCALE_POWER,),
    "sm_quantile": (_SOFTMASK,), "sm_d_first": (_SOFTMASK,), "sm_d_later": (_SOFTMASK,),
    "sm_s_first": (_SOFTMASK,), "sm_s_later": (_SOFTMASK,), "sm_adain": (_SOFTMASK,),
    "sm_invert_first": (_SOFTMASK,),
    "am_down": (_ANY_AM,), "am_mid": (_ANY_AM,), "am_up": (_ANY_AM,), "clamp_max": (_ANY_AM,),
}
MODE_FIELDS: tuple[str, ...] = tuple(sorted({f for conds in ACTS_ONLY_WITH.values() for f, _ in conds},
                                            key=FIELD_NAMES.index))


def shown_controls(values) -> dict[str, bool]:
    """Which mode-dependent controls act with these values (UI values: dcg bool, mode strings)."""
    return {name: all(values.get(f) in allowed for f, allowed in conds) for name, conds in ACTS_ONLY_WITH.items()}


def _component(gr, name: str, elem_id, visible: bool = True):
    m, kind = meta(name), field_kind(name)
    common = dict(label=m["label"], elem_id=elem_id(name), tooltip=m["tip"], visible=visible)
    value = ui_values(DEFAULTS)[name]
    if kind == "bool":
        return gr.Checkbox(value=value, **common)
    if kind == "choice":
        if name == "preset":
            return gr.Dropdown(choices=list(m["choices"]), value=value, **common)
        return gr.Radio(choices=list(m["choices"]), value=value, **common)
    if kind == "list":
        return gr.Textbox(value=value, lines=1, **common)
    return gr.Slider(minimum=m["lo"], maximum=m["hi"], step=m["step"], value=value, **common)


# Sections: (title, id, main rows, Advanced rows). A row holds what fits side by side in the
# WebUI's left column at its usual widths (about 600-700 px at a 1400 px window): a radio of three
# choices alone, two sliders with long labels, three with short ones.
_LAYOUT = (
    ("Guidance (DCG)", "guidance",
     (("dcg",), ("alpha_peak", "beta_peak", "phi")),
     (("schedule",), ("rescale_steps",), ("alpha_custom", "beta_custom"))),
    ("Attention (AM)", "attention",
     (("am_mode",), ("sp_s_down", "sp_s_up", "sp_p"), ("sm_quantile", "sm_d_later")),
     (("sp_s_mid", "clamp_max"), ("sm_d_first", "sm_adain"), ("sm_s_first", "sm_s_later"),
      ("sm_invert_first",), ("am_down", "am_mid", "am_up"))),
)
HOST_ROW = ("hires", "readout", "show_attention")
TXT2IMG_ONLY = ("hires",)   # img2img has no hires fix; the value stays in the args, API and infotext


def container_shown(names, shown: dict[str, bool]) -> bool:
    """A row or an Advanced section is shown when at least one of its controls is."""
    return any(shown.get(n, True) for n in names)


def preset_summary(preset_name, *method_values) -> str:
    """The line under the preset list: '' while the controls hold the preset's values, else e.g.
    'Realistic + 2 changes: α peak (identity), Attention transform'. Reads the UI values the way
    the job does (the preset, then the fields), so it counts what the infotext records."""
    if preset_name not in PRESETS:
        return ""
    args, issues = validate_on(PRESETS[preset_name], dict(zip(METHOD_FIELDS, method_values)))
    changed = [meta(n)["label"] for n in changed_fields(args)]
    bad = [meta(i.field)["label"] for i in issues if i.rejected and i.field in FIELD_NAMES]
    text = f"{preset_name} + {len(changed)} change{'' if len(changed) == 1 else 's'}: {', '.join(changed)}" if changed else ""
    if bad:
        text = (text + "; " if text else "") + "not a valid value: " + ", ".join(bad)
    return text


def build_ui(script, is_img2img: bool) -> list:
    """The accordion; returns the components in `FIELD_NAMES` order (the script's args).

    Side-effect free apart from attributes on `script` (A1111 calls ui() several times)."""
    import gradio as gr
    from modules.ui_components import InputAccordion

    elem_id = lambda name: script.elem_id(name)  # noqa: E731
    shown = shown_controls(ui_values(DEFAULTS))
    comps: dict[str, Any] = {}
    containers: list[tuple[Any, tuple]] = []   # (row or Advanced accordion, the controls in it)

    def rows(row_names):
        for names in row_names:
            with gr.Row(visible=container_shown(names, shown)) as row:
                for name in names:
                    comps[name] = _component(gr, name, elem_id, shown.get(name, True))
            containers.append((row, names))

    with InputAccordion(False, label=TITLE, elem_id=elem_id("enabled")) as enabled:
        comps["enabled"] = enabled
        comps["preset"] = _component(gr, "preset", elem_id)
        changes = gr.Markdown(value="", visible=False, elem_id=elem_id("preset_changes"))
        for title, section, main, advanced in _LAYOUT:
            with gr.Accordion(title, open=True, elem_id=elem_id(section)):
                rows(main)
                inner = tuple(n for names in advanced for n in names)
                with gr.Accordion("Advanced", open=False, elem_id=elem_id(f"{section}_advanced"),
                                  visible=container_shown(inner, shown)) as adv:
                    rows(advanced)
                containers.append((adv, inner))
        with gr.Row():
            for name in HOST_ROW:
                comps[name] = _component(gr, name, elem_id, not (is_img2img and name in TXT2IMG_ONLY))
    assert set(comps) == set(FIELD_NAMES), set(FIELD_NAMES) ^ set(comps)

    # Show only the controls that act in the chosen modes, and a row or an Advanced section only
    # when something in it is shown. `.change` also fires when a preset pick or a paste sets the
    # mode, and a visibility update leaves every value as it is.
    dependent = list(ACTS_ONLY_WITH)
    boxes = [(box, names) for box, names in containers if any(n in ACTS_ONLY_WITH for n in names)]

    def update_visibility(*mode_values):
        visible = shown_controls(dict(zip(MODE_FIELDS, mode_values)))
        return [gr.update(visible=visible[n]) for n in dependent] \
            + [gr.update(visible=container_shown(names, visible)) for _, names in boxes]

    for name in MODE_FIELDS:
        comps[name].change(fn=update_visibility, inputs=[comps[n] for n in MODE_FIELDS],
                           outputs=[comps[n] for n in dependent] + [box for box, _ in boxes],
                           show_progress=False)

    method_components = [comps[n] for n in METHOD_FIELDS]

    def fill_from_preset(preset_name):
        values = ui_values(PRESETS.get(preset_name, DEFAULTS))
        return [gr.update(value=values[n]) for n in METHOD_FIELDS]

    # .input, not .change: pasting infotext sets the preset *and* the fields; only a user's pick
    # of a preset should overwrite the fields.
    comps["preset"].input(fn=fill_from_preset, inputs=[comps["preset"]], outputs=method_components,
                          show_progress=False)

    # "Realistic + 2 changes": after any change of the preset or a method control (a pick, a
    # paste, a drag). A view of the values only: nothing stored changes.
    def show_changes(*values):
        text = preset_summary(*values)
        return gr.update(value=text, visible=bool(text))

    for name in ("preset",) + METHOD_FIELDS:
        comps[name].change(fn=show_changes, inputs=[comps["preset"]] + method_components,
                           outputs=[changes], show_progress=False)

    pasted = [n for n in FIELD_NAMES if n not in VIEW_FIELDS]   # view options survive a paste
    script.infotext_fields = [(comps[n], functools.partial(_pasted_value, name=n)) for n in pasted]
    script.paste_field_names = [paste_key(n) for n in pasted]
    return [comps[n] for n in FIELD_NAMES]


def _pasted_value(params, name):
    return read_pasted(params, name)


# -- job life cycle ---------------------------------------------------------------------------------
def resolve_args(p, script_args) -> tuple[FastFaceArgs, list]:
    """Script args (UI positional values or one API dict) plus XYZ overrides for this cell."""
    args, issues = from_script_args(script_args)
    overrides = dict(getattr(p, "fastface_xyz", None) or {})
    if overrides:
        if "preset" in overrides:
            preset_args, more = validate({"preset": overrides.pop("preset")}, base=args)
            issues += more
            args = apply_preset(args, preset_args.preset)
        overrides.setdefault("enabled", True)  # a FastFace axis means FastFace on, unless it says so
        args, more = validate(overrides, base=args)
        issues += more
    return args, issues


def process(p, *script_args) -> None:
    """Script.process: resolve and validate args, start the job, write the infotext."""
    stale = PatchSet.undo_all()
    if stale:
        log.warning("undid %d patch(es) left by a generation that did not finish", stale)
    p.fastface_job = None
    try:
        args, issues = resolve_args(p, script_args)
    except Exception as exc:  # never fail the generation
        log.error("could not read FastFace's settings (%s); FastFace is off for this job", exc)
        return
    rejected = [i for i in issues if i.rejected]
    for issue in issues:
        (log.warning if issue.rejected else log.info)("setting %s", issue)
    if rejected:
        if args.enabled:
            p.extra_generation_params[NOTE_KEY] = "FastFace is off for this job: " + note_value(
                rejected_note(i) for i in rejected)
        return
    if not args.enabled:
        return
    host = host_for(p)
    job = Job(args=args, host=host.name, issues=issues, patches=PatchSet("FastFace job"))
    recording.begin(job)
    p.fastface_job = job
    params = job.infotext_params()
    p.extra_generation_params[INFOTEXT_KEY] = params[INFOTEXT_KEY]
    p.extra_generation_params[VERSION_KEY] = __version__
    # notes and the trace are only known after sampling: A1111 and Forge call these when they
    # build the infotext (a None result drops the key)
    p.extra_generation_params[NOTE_KEY] = lambda **_: job.infotext_params().get(NOTE_KEY)
    p.extra_generation_params[TRACE_KEY] = lambda **_: job.infotext_params().get(TRACE_KEY)
    readout.begin(job, p)


def before_sampling(p, *script_args, **kwargs) -> None:
    """Script.process_before_every_sampling: patch this pass (base, or hires)."""
    job = getattr(p, "fastface_job", None)
    if job is None or not job.active:
        return
    host = host_for(p)
    try:
        host.start_pass(job, p)
    except Exception as exc:
        job.fail(f"{host.name} set-up", exc)
    host.start_recording_pass(job, p)   # never raises: a preview problem only stops the recording


@functools.lru_cache(maxsize=1)
def _api_returns_extra_images() -> bool:
    """Whether the WebUI's txt2img API answers with `processed.extra_images` too: read from the API
    function itself (Forge 2 api.py L502 and Forge Classic L501 chain them; reForge 3b56b268
    L488 / L559 encode `processed.images` only). Unknown (no API module, no source): True, so that
    nothing changes where FastFace cannot tell."""
    try:
        import inspect

        from modules.api import api   # the WebUI's own module
        return "extra_images" in inspect.getsource(api.Api.text2imgapi)
    except Exception:
        return True


def postprocess_image(p, pp, *args) -> None:
    """Script.postprocess_image: the likeness readout of this image (reads the image, never changes it)."""
    if getattr(p, "fastface_job", None) is not None:
        readout.on_image(p, getattr(pp, "image", None))


def postprocess(p, *args) -> None:
    """Script.postprocess: undo every patch of the job."""
    job = getattr(p, "fastface_job", None)
    if job is None:
        return
    host_for(p).end_job(job, p)
    readout.finish(p)
    recording.finish(job, p, args[0] if args else None, _api_returns_extra_images())   # "Show face attention"
    # The infotext has been written with the callables; the API's `info` JSON serialises this dict
    # later and would show null for them, so store the final values.
    final = job.infotext_params()
    for key in (NOTE_KEY, TRACE_KEY):
        if key in final:
            p.extra_generation_params[key] = final[key]
        else:
            p.extra_generation_params.pop(key, None)
    # last: the job's tensors are freed by now; what the host keeps (the images) is live and stays
    heap.release_freed_heap()


# -- callbacks (registered once, at import of the script) --------------------------------------------
def on_infotext_pasted(infotext: str, params: dict) -> None:
    expand_pasted_params(params)


def _xyz_module():
    from modules import scripts

    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid"):
            return data.module
    return None


def _xyz_apply(name):
    def apply(p, x, xs):
        p.fastface_xyz = {**(getattr(p, "fastface_xyz", None) or {}), name: x}
    return apply


def add_xyz_axes() -> None:
    """[FastFace] axes in the XYZ plot script; added once (checked by label)."""
    xyz = _xyz_module()
    if xyz is None:
        return
    if any(getattr(o, "label", "").startswith(XYZ_PREFIX) for o in xyz.axis_options):
        return
    for name in XYZ_FIELDS:
        m, kind = meta(name), field_kind(name)
        label = XYZ_PREFIX + ("Enabled" if name == "enabled" else m["label"])
        if kind == "choice":
            option = xyz.AxisOption(label, str, _xyz_apply(name), choices=lambda m=m: list(m["choices"]))
        elif kind == "bool":
            option = xyz.AxisOption(label, str, _xyz_apply(name), choices=lambda: ["True", "False"])
        else:
            option = xyz.AxisOption(label, float, _xyz_apply(name))
        xyz.axis_options.append(option)


def print_startup_line() -> None:
    """'[FastFace] 0.2.0 (e34b2da) on AUTOMATIC1111 v1.10.1, sd-webui-controlnet 1.1.455' in the
    server log: what a bug report quotes. print, not the logger: it reaches the log whatever the
    logging set-up. Never raises."""
    try:
        print(startup_line(__version__, commit_label(extension_folder()), host_info.describe()), flush=True)
    except Exception as exc:  # pragma: no cover - each part already says what it cannot tell
        log.warning("%s (start-up line not printed: %s)", __version__, exc)


def register_callbacks() -> None:
    """Once per load of the script: the start-up line, then the WebUI callbacks."""
    print_startup_line()
    from modules import script_callbacks

    script_callbacks.on_infotext_pasted(on_infotext_pasted)
    # The XYZ script (root scripts/, loaded before extensions) is usually there already; API-only
    # servers never run on_before_ui, so add the axes now and again before the UI (deduplicated).
    try:
        add_xyz_axes()
    except Exception as exc:  # pragma: no cover - defensive
        log.warning("XYZ axes not added: %s", exc)
    script_callbacks.on_before_ui(add_xyz_axes)
    script_callbacks.on_script_unloaded(PatchSet.undo_all)
    try:
        readout.register_setting(script_callbacks)
    except Exception as exc:  # pragma: no cover - defensive
        log.warning("likeness readout setting not added: %s", exc)
    try:
        from . import a1111
        script_callbacks.on_cfg_denoiser(a1111.on_cfg_denoiser)
    except Exception as exc:  # pragma: no cover - defensive
        log.warning("CFG denoiser hook not registered: %s", exc)
    try:
        from . import forge
        forge.register_callbacks(script_callbacks)
    except Exception as exc:  # pragma: no cover - defensive
        log.warning("Forge step hook not registered: %s", exc)


assert PRESET_NAMES == tuple(PRESETS)
