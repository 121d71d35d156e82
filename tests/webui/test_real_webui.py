"""Opt-in: drive a real, running A1111 (with sd-webui-controlnet) or Forge through its HTTP API.

Skipped unless FASTFACE_WEBUI_URL points at a server (e.g. http://127.0.0.1:7861) that has this
extension installed and was started with FASTFACE_TRACE=1 (so the infotext carries FastFace's
per-step row counts and attention-call counts). Random-weight checkpoints and FaceID adapters are
fine; see README "Development".

    FASTFACE_WEBUI_URL        the server
    FASTFACE_BASELINE_FILE    optional: pixels of the reference request made by the same WebUI
                              *without* the extension. Run the suite once against a server without
                              the extension (only `test_baseline_without_extension` runs and writes
                              the file), then against one with it (the test compares).
    FASTFACE_FACEID_UNIT      JSON (or a JSON file) of the ControlNet unit to send (default: A1111 FaceID with a
                              random precomputed embedding through `ipadapter_input`)
    FASTFACE_FACEID_MODEL     the default unit's model (default ip-adapter-faceid_sd15)
    FASTFACE_SDXL             "1" for an SDXL checkpoint (24 down + 36 up attn2 layers instead of 6 + 9)
    FASTFACE_MATRIX           "full" for every preset × {1,2,4,8} steps × every sampler (slow on
                              CPU); default: a cross-section (every preset × steps, samplers cycled)
    FASTFACE_HOST             "a1111" (default), "forge" (Forge 2), "forge-classic" (first-generation
                              Forge on ldm_patched), "reforge" (Panchovix's reForge) or "neo" (Forge
                              Neo): Forge's samplers, its cfg-1 shortcut (without DCG it evaluates the
                              prompt row alone) and the hires payload of Forge 2 and Neo

When the trace carries UNet calls per step ("calls"), they are checked against the documented
numbers (README, "UNet calls per step"): one call per model evaluation on both hosts, every preset.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import os
import struct

import pytest
import webui_client as client
from webui_client import get, img2img_payload, infotext, params, png_pixels, post, txt2img_payload, with_info  # noqa: F401

from fastface.config import PRESET_NAMES
from fastface.presets import PRESETS
from fastface.method.schedule import branches_needed

URL = os.environ.get("FASTFACE_WEBUI_URL", "").rstrip("/")
BASELINE_FILE = os.environ.get("FASTFACE_BASELINE_FILE", "")
pytestmark = pytest.mark.skipif(not URL, reason="FASTFACE_WEBUI_URL not set (opt-in real-WebUI tests)")


def has_fastface():
    scripts = get(URL, "/sdapi/v1/scripts")
    return "fastface" in [s.lower() for s in scripts["txt2img"]]


@pytest.fixture(autouse=True)
def _needs_extension(request):
    if request.node.name != "test_baseline_without_extension" and not has_fastface():
        pytest.skip("this server has no FastFace (baseline run)")

HOST = os.environ.get("FASTFACE_HOST", "a1111").lower()
FORGE = HOST in ("forge", "forge-classic", "reforge", "neo")
# Forge 2 and Neo: the API's hires fix needs hr_additional_modules; their API `infotext` field
# answers HTTP 500 by itself (checked without the extension on both)
HR_MODULES = HOST in client.HR_MODULE_HOSTS
SAMPLERS = (["Euler", "Euler a", "DPM++ 2M", "LCM"] if FORGE
            else ["Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "DDIM", "LCM"])
STEPS = [1, 2, 4, 8]


def face_unit():
    """The unit FASTFACE_FACEID_UNIT names, or the default A1111 FaceID unit (webui_client.face_unit)."""
    return client.face_unit()


def txt2img(fastface=None, url=None, unit=True, **overrides):
    """POST txt2img (64×64, 4 steps, Euler, CFG 1, a FaceID unit); `fastface` is the script's arg."""
    payload = txt2img_payload(fastface, unit=face_unit() if unit else None, **overrides)
    return with_info(post(url or URL, "/sdapi/v1/txt2img", payload))


def trace(resp):
    raw = params(resp).get("FastFace trace")
    assert raw, "start the server with FASTFACE_TRACE=1"
    return json.loads(raw)


def check_calls(resp, evaluations):
    """UNet calls per step = the documented number per model evaluation (fastface.hosts.forge.
    unet_calls_per_evaluation on Forge: one, the id-only rows ride in Forge's own call; A1111: one
    batched call) × the evaluations of each step. Skipped for a trace without calls (older build)."""
    calls = trace(resp).get("calls")
    if calls is None:
        return
    assert calls == evaluations, (calls, evaluations)   # one call per evaluation


def test_script_is_registered():
    scripts = get(URL, "/sdapi/v1/scripts")
    assert "fastface" in [s.lower() for s in scripts["txt2img"]] and "fastface" in [s.lower() for s in scripts["img2img"]]


def _matrix():
    if os.environ.get("FASTFACE_MATRIX") == "full":
        return list(itertools.product(PRESET_NAMES, STEPS, SAMPLERS))
    return [(p, s, m) for (p, s), m in zip(itertools.product(PRESET_NAMES, STEPS), itertools.cycle(SAMPLERS))]


@pytest.mark.parametrize("preset,steps,sampler", _matrix())
def test_generation_and_rows_per_step(preset, steps, sampler):
    resp = txt2img({"enabled": True, "preset": preset}, steps=steps, sampler_name=sampler)
    assert resp["images"], resp["info"]
    assert "FastFace: " in infotext(resp) and f"preset={preset}" in infotext(resp)
    assert "internal error" not in params(resp).get("FastFace note", "")
    rows = trace(resp)["rows"]
    args = PRESETS[preset]
    if sampler == "DDIM":  # A1111's timestep samplers make len(timesteps) − 1 = steps − 1 model steps
        steps -= 1
    expected = [branches_needed(k, steps, args).rows_per_image for k in range(steps)]
    if not args.dcg:  # the WebUI's own cond + uncond; Forge skips the uncond at CFG 1
        expected = [1 if FORGE else 2] * steps
    if steps == 0:
        assert rows == {}
        return
    if sampler == "DPM++ SDE":  # second order: the rows of a step's two evaluations add up
        got = [rows.get(f"0/{k}", 0) for k in range(steps)]
        calls = [2] * (steps - 1) + [1]
        assert got == [e * c for e, c in zip(expected, calls)] or got == [e * 2 for e in expected], (rows, expected)
        evaluations = {f"0/{k}": (got[k] // expected[k]) for k in range(steps)}
    else:
        assert [rows[f"0/{k}"] for k in range(steps)] == expected, (rows, expected)
        evaluations = {f"0/{k}": 1 for k in range(steps)}
    check_calls(resp, evaluations)


# attn2 layers of the down and up blocks: SD1.5 6 + 9, SDXL 24 + 36 (the 1 / 10 mid ones are never transformed)
SDXL = os.environ.get("FASTFACE_SDXL", "") == "1"
ATTN2_DOWN_UP = (24, 36) if SDXL else (6, 9)


def test_attention_transform_reaches_down_and_up_not_mid():
    resp = txt2img({"enabled": True, "preset": "Realistic"})
    parts = {key.split("/")[2] for key in trace(resp)["am"]}
    assert parts == {"down", "up"}, trace(resp)
    steps = {key.split("/")[1] for key in trace(resp)["am"]}
    assert steps == {"0", "1", "2", "3"}
    am = trace(resp)["am"]   # one UNet call per step: each layer transformed once
    assert all((am[f"0/{k}/down"], am[f"0/{k}/up"]) == ATTN2_DOWN_UP for k in range(4)), am


def hires_upscaler() -> str:
    return client.hires_upscaler(URL)


def hires_payload(**overrides) -> dict:
    return client.hires_payload(URL, HOST, **overrides)


def test_hires_fix_and_batch_two():
    resp = txt2img({"enabled": True, "preset": "Realistic"}, batch_size=2, **hires_payload())
    assert len(resp["images"]) >= 2  # Forge's IP-Adapter unit also returns its detection map
    rows = trace(resp)["rows"]
    assert [rows["0/0"], rows["0/1"], rows["0/2"], rows["0/3"]] == [4, 6, 6, 4]
    assert [rows["1/0"], rows["1/1"]] == [4, 4]  # hires pass: 2 steps, none boosted
    check_calls(resp, {key: 1 for key in ("0/0", "0/1", "0/2", "0/3", "1/0", "1/1")})


def test_invalid_value_switches_fastface_off_and_says_why():
    resp = txt2img({"enabled": True, "preset": "Realistic", "am_mode": "sharpen"})
    assert resp["images"]
    note = params(resp).get("FastFace note", "")
    assert "am_mode" in note and "sharpen" in note
    assert "FastFace: " not in infotext(resp)


def test_api_infotext_field_restores_fastface():
    if HR_MODULES:  # Forge 2 and Neo (checked without the extension: the same request fails);
        pytest.skip(  # Forge Classic's, reForge's and A1111's `infotext` field works
            f"{HOST}: the host's API apply_infotext answers HTTP 500 to any `infotext` with or without "
            "FastFace (isinstance() with a parameterized generic in api.py get_field_value)")
    made = txt2img({"enabled": True, "preset": "Stylistic", "alpha_peak": 2.0})
    line = infotext(made).splitlines()[-1]
    again = txt2img(None, infotext=line)
    assert "FastFace: " in infotext(again)
    assert 'preset=Stylistic, a=2.0' in infotext(again)


def test_disabled_is_pixel_identical_and_jobs_leave_nothing_behind():
    off = txt2img({"enabled": False, "preset": "Realistic"})
    for i in range(20):
        txt2img({"enabled": i % 2 == 0, "preset": "Realistic"}, steps=2)
    off_again = txt2img({"enabled": False, "preset": "Realistic"})
    assert png_pixels(off["images"][0]) == png_pixels(off_again["images"][0])


def test_baseline_without_extension():
    """Disabled FastFace gives the same pixels as the WebUI without the extension (two runs)."""
    if not BASELINE_FILE:
        pytest.skip("FASTFACE_BASELINE_FILE not set")
    if not has_fastface():
        with open(BASELINE_FILE, "wb") as f:
            f.write(png_pixels(txt2img(None)["images"][0]))
        pytest.skip(f"baseline written to {BASELINE_FILE}; now run against a server with FastFace")
    if not os.path.exists(BASELINE_FILE):
        pytest.skip("no baseline yet: run once against the WebUI without the extension")
    with open(BASELINE_FILE, "rb") as f:
        baseline = f.read()
    assert png_pixels(txt2img({"enabled": False, "preset": "Realistic"})["images"][0]) == baseline
    assert png_pixels(txt2img(None)["images"][0]) == baseline


def test_images_are_not_blank():
    """The pixel comparisons of this suite mean something only if the images do: random-weight
    checkpoints on Forge 2 and Neo give NaN conditioning (black images) with the default emphasis
    "Original" (it divides by a mean that can be 0); set the option emphasis = "No norm" first."""
    pixels = png_pixels(txt2img({"enabled": False, "preset": "Realistic"})["images"][0])
    assert len(set(pixels)) > 2, "a blank image: set the server's emphasis option to 'No norm'"


def test_fastface_changes_the_image():
    off = txt2img({"enabled": False, "preset": "Realistic"})
    on = txt2img({"enabled": True, "preset": "Realistic"})
    assert png_pixels(off["images"][0]) != png_pixels(on["images"][0])


def xyz_script_args(xyz, x_type: int, x_choices: list) -> list:
    """The XYZ script's arguments in the host's own signature, read from its script-info (A1111 and
    Forge: 18; reForge: 21, with other options between the axes and the seeds): X = the axis with
    its dropdown values, Y and Z = "Nothing" (index 0), legend and sub images on, everything else
    at the host's defaults. Each axis has a textbox and then a dropdown, both labelled "X values"."""
    args, seen = [], {}
    for arg in xyz["args"]:
        label = arg["label"]
        nth = seen[label] = seen.get(label, -1) + 1
        if label == "X type":
            value = x_type
        elif label in ("Y type", "Z type"):
            value = 0
        elif label in ("X values", "Y values", "Z values"):
            value = "" if nth == 0 else (list(x_choices) if label == "X values" else [])
        elif label in ("Draw legend", "Include Sub Images"):
            value = True
        else:
            value = arg.get("value")
        args.append(value)
    return args


def test_xyz_preset_axis_applies_per_cell():
    """The XYZ plot script with a `[FastFace] Preset` axis: each cell's infotext has its preset."""
    info = get(URL, "/sdapi/v1/script-info")
    xyz = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    labels = next(a for a in xyz["args"] if a["label"] == "X type")["choices"]
    assert labels.count("[FastFace] Preset") == 1, "axis registered once"
    x_type = labels.index("[FastFace] Preset")
    # an axis with choices takes its values from the dropdown list (xyz_grid.py run())
    script_args = xyz_script_args(xyz, x_type, ["Stylistic", "Realistic portrait"])
    resp = txt2img({"enabled": False, "preset": "Realistic"}, script_name="x/y/z plot", script_args=script_args)
    cells = [t for t in resp["info_json"]["infotexts"] if "FastFace: " in t]
    assert any("preset=Stylistic" in t for t in cells) and any("preset=Realistic portrait" in t for t in cells)


# -- "Show face attention" ------------------------------------------------------------------------
# FASTFACE_UNIT_DIR: a folder with unit_<kind>.json ControlNet units (faceid, plus, plusv2, portrait,
# plain), e.g. written by a script like the harness's payload maker; the tests below that need a
# kind skip without its file. Sizes are those `fastface.views.attnpreview.preview_size` documents.
UNIT_DIR = os.environ.get("FASTFACE_UNIT_DIR", "")


def png_size(b64: str) -> tuple[int, int]:
    data = base64.b64decode(b64)
    return struct.unpack(">II", data[16:24])


def unit_of(kind: str, faces: int = 1):
    path = os.path.join(UNIT_DIR, f"unit_{kind}.json")
    if not UNIT_DIR or not os.path.isfile(path):
        pytest.skip(f"no {path} (set FASTFACE_UNIT_DIR)")
    with open(path) as f:
        unit = json.load(f)
    if faces > 1:   # Portrait: several faces, one (N, 512) embedding tensor → 16 tokens per face
        import torch

        buf = io.BytesIO()
        emb = torch.randn(faces, 512, generator=torch.Generator().manual_seed(11))
        torch.save(torch.nn.functional.normalize(emb, dim=-1), buf)
        unit["ipadapter_input"] = [base64.b64encode(buf.getvalue()).decode()]
    return unit


def expected_preview_size(image_wh, steps, tokens, *, separate=0, groups=1, passes=1, panel=160):
    """attnpreview's documented layout: rows = 3 parts × (1 + separate tokens) per pass."""
    from fastface.views import attnpreview as ap

    pw, ph = ap.panel_size(image_wh, panel)
    rows = 3 * (1 + separate) * passes
    width = ap.LABEL_W + steps * (2 * groups * pw + ap.CELL_GAP) + ap.MARGIN
    height = ap.TITLE_H + ap.HEADER_H + rows * (ph + ap.CAPTION_H) + (passes if passes > 1 else 0) * ap.PASS_H + ap.MARGIN
    return width, height


def _unit_separate() -> int:
    """Rows of their own for token 0 in the default unit's preview: FaceID-Plus (v2) units."""
    return 1 if "plus" in str(face_unit().get("model", "")).lower() else 0


def _with_units(units):
    return {"controlnet": {"args": units}}


def _show(preset, on=True, **fields):
    return {"enabled": True, "preset": preset, "show_attention": on, **fields}


@pytest.mark.parametrize("preset", ["Realistic", "Stylistic"])
def test_show_attention_adds_one_preview_per_image_and_changes_no_pixel(preset):
    off = txt2img(_show(preset, False), batch_size=2)
    on = txt2img(_show(preset, True), batch_size=2)
    n = len(off["images"])   # the generated images (and a grid first, if the server returns it)
    assert len(on["images"]) == n + 2, (n, len(on["images"]))
    for a, b in zip(off["images"][:n], on["images"][:n]):
        assert png_pixels(a) == png_pixels(b)
    for extra in on["images"][n:]:
        assert png_size(extra) == expected_preview_size((64, 64), 4, 4, separate=_unit_separate())
    assert "show_attention" not in infotext(on) and infotext(on) == infotext(off)
    assert len(on["info_json"]["infotexts"]) == len(off["info_json"]["infotexts"])   # no infotext of their own


def test_show_attention_in_img2img():
    made = txt2img({"enabled": False, "preset": "Realistic"})
    payload = img2img_payload(made["images"][0], unit=face_unit())
    # The first img2img of a fresh A1111 gives other pixels than every later identical request,
    # with the preview off both times (seen 2026-11-26: first ≠ second, second = third): a host
    # first-call effect, so one warm-up request comes before the comparison.
    payload["alwayson_scripts"]["FastFace"] = {"args": [_show("Realistic", False)]}
    post(URL, "/sdapi/v1/img2img", payload)
    outs = {}
    for on in (False, True):
        payload["alwayson_scripts"]["FastFace"] = {"args": [_show("Realistic", on)]}
        outs[on] = post(URL, "/sdapi/v1/img2img", payload)
    assert len(outs[True]["images"]) == len(outs[False]["images"]) + 1
    assert png_pixels(outs[True]["images"][0]) == png_pixels(outs[False]["images"][0])
    # img2img at strength 0.6 runs int(4 · 0.6) = 2 steps
    assert png_size(outs[True]["images"][-1])[1] == expected_preview_size((64, 64), 2, 4, separate=_unit_separate())[1]


@pytest.mark.parametrize("kind,faces", [("portrait", 1), ("portrait", 2), ("plus", 1), ("plusv2", 1)])
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_other_faceid_adapters_every_preset(kind, faces, preset):
    """FaceID-Portrait (16 tokens per face) and FaceID-Plus v1 / v2: AM reaches them (trace), the
    preview shows every token (its size follows the token layout), no pixel changes with the box."""
    if faces > 1 and preset not in ("Realistic", "Realistic portrait"):
        pytest.skip("several faces: the AM presets are enough")
    unit = unit_of(kind, faces)
    off = txt2img(_show(preset, False), steps=2, alwayson_scripts=_with_units([unit]), unit=False)
    on = txt2img(_show(preset, True), steps=2, alwayson_scripts=_with_units([unit]), unit=False)
    assert "internal error" not in params(on).get("FastFace note", "")
    am = trace(on)["am"]
    if PRESETS[preset].am_mode != "off":
        assert {k.split("/")[2] for k in am} == {"down", "up"} and {k.split("/")[1] for k in am} == {"0", "1"}, am
    else:
        assert am == {}
    n = len(off["images"])
    assert len(on["images"]) == n + 1 and png_pixels(on["images"][0]) == png_pixels(off["images"][0])
    # sd-webui-controlnet merges several faces into one set of 16 Portrait tokens (ipadapter_impls.md
    # §3.2), so the preview shows one 4×4 mosaic; one mosaic per face is drawn where a host keeps
    # 16 tokens per face (tests/views/test_attnmaps.py)
    tokens = 16 if kind == "portrait" else 4
    # Plus-v2's token 0 has rows of its own; so has Plus v1's on the Forge family, whose attention
    # patch does not say which Plus it is (its v2 flag stays on the ControlNet patcher, Neo
    # forge_ipadapter.py L105-107): attnmaps.token_layout shows such a Plus the v2 way
    separate = 1 if kind == "plusv2" or (kind == "plus" and FORGE) else 0
    groups = 1
    assert png_size(on["images"][-1]) == expected_preview_size((64, 64), 2, tokens, separate=separate, groups=groups)


def test_plain_ip_adapter_beside_faceid_is_untouched():
    """A non-FaceID IP-Adapter unit next to the FaceID one: the transformed-call counts of the trace
    are those of the FaceID unit alone (the plain unit's layers run ControlNet's own code)."""
    plain, faceid = unit_of("plain"), unit_of("faceid")
    alone = txt2img(_show("Realistic"), steps=2, alwayson_scripts=_with_units([faceid]), unit=False)
    both = txt2img(_show("Realistic"), steps=2, alwayson_scripts=_with_units([faceid, plain]), unit=False)
    assert trace(both)["am"] == trace(alone)["am"] and trace(alone)["am"]
    assert png_pixels(both["images"][0]) != png_pixels(alone["images"][0])   # the plain unit did act
    plain_only = txt2img(_show("Realistic"), steps=2, alwayson_scripts=_with_units([plain]), unit=False)
    assert trace(plain_only)["am"] == {}
    assert len(plain_only["images"]) == len(txt2img(_show("Realistic", False), steps=2,
                                                    alwayson_scripts=_with_units([plain]), unit=False)["images"])


# -- every sampler the host lists; nothing of one job in the next -------------------------------------
CFG_PP_NOTE = "CFG++ sampler:"   # fastface.hosts.common.CFG_PP_NOTE begins so
# A1111's k-diffusion dpm_fast / dpm_adaptive pick their own solver steps (orders, error control):
# their callbacks do not follow the step count, so only the rows of each call are checked there
OWN_STEPS = ("DPM fast", "DPM adaptive")


def _rows_per_evaluation(sampler: str, steps: int) -> list[int]:
    """The documented rows per image of one model evaluation at each step: `branches_needed`'s,
    and the uncond kept on every step for a CFG++ sampler (it renoises with it)."""
    args = PRESETS["Realistic"]
    rows = [branches_needed(k, steps, args).rows_per_image for k in range(steps)]
    return [3] * steps if sampler.endswith("CFG++") else rows


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_every_sampler_of_the_host_with_dcg(cfg):
    """Each sampler the server lists, Realistic at 4 steps: the image comes out, every UNet call
    carries the documented rows of one evaluation (a step's calls × its rows per evaluation), no
    internal error, and a CFG++ sampler's note is there (and only there). Prints one line per sampler."""
    problems, lines = [], []
    for sampler in [s["name"] for s in get(URL, "/sdapi/v1/samplers")]:
        resp = txt2img({"enabled": True, "preset": "Realistic"}, sampler_name=sampler, cfg_scale=cfg)
        note = params(resp).get("FastFace note", "")
        tr = trace(resp)
        rows, calls = tr["rows"], tr.get("calls", {})
        steps = len([k for k in rows if k.startswith("0/")])
        per_eval = _rows_per_evaluation(sampler, steps)
        got = [rows.get(f"0/{k}", 0) for k in range(steps)]
        n_calls = [calls.get(f"0/{k}", 1) for k in range(steps)]
        lines.append(f"{sampler}: rows {got}, calls {n_calls}, note {note!r}")
        if not resp["images"] or "internal error" in note:
            problems.append(f"{sampler}: no image or an internal error ({note})")
        if sampler in OWN_STEPS:
            if any(r not in (2 * c, 3 * c) for r, c in zip(got, n_calls)):
                problems.append(f"{sampler}: rows {got} with calls {n_calls}, not 2 or 3 rows per call")
        elif steps not in (4, 3) or got != [r * c for r, c in zip(per_eval, n_calls)]:
            problems.append(f"{sampler}: rows {got} with calls {n_calls}, expected {per_eval} per evaluation")
        if (CFG_PP_NOTE in note) != sampler.endswith("CFG++"):
            problems.append(f"{sampler}: CFG++ note {'missing' if sampler.endswith('CFG++') else 'unexpected'}")
    print("\n".join(lines))
    assert not problems, "\n".join(problems)


def _second_face_unit() -> dict:
    """Another FaceID unit: another model where FASTFACE_UNIT_DIR has one (unit_faceid / unit_plus
    beside the default unit's), another face (embedding or picture) and another weight."""
    first = face_unit()
    unit = dict(first)
    for kind in ("faceid", "plus", "plusv2"):
        path = os.path.join(UNIT_DIR, f"unit_{kind}.json")
        if UNIT_DIR and os.path.isfile(path):
            with open(path) as f:
                candidate = json.load(f)
            if candidate.get("model") != first.get("model"):
                unit = candidate
                break
    unit["weight"] = 0.5 if float(first.get("weight", 1.0)) != 0.5 else 0.65
    if unit.get("ipadapter_input"):
        import torch

        buf = io.BytesIO()
        torch.save(torch.nn.functional.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(13)), dim=-1), buf)
        unit["ipadapter_input"] = [base64.b64encode(buf.getvalue()).decode()]
    elif unit.get("image"):
        from write_units import face_image_b64

        unit["image"] = face_image_b64(seed=13)
    return unit


def test_jobs_with_two_faceid_units_and_weights_leave_nothing_behind():
    """FastFace jobs with two different FaceID units at different weights, interleaved with
    disabled jobs (Neo's patcher shares every object but dicts and lists between clones, its
    IP-Adapter keeps state on the class): every disabled job gives the pixels of the first, a
    repeated FastFace job gives its own pixels again."""
    first, second = face_unit(), _second_face_unit()
    units = {"first": [first], "second": [second]}
    plan = [("off", "first"), ("Realistic", "first"), ("off", "second"), ("Realistic portrait", "second"),
            ("off", "first"), ("Stylistic", "second"), ("Realistic", "first"), ("off", "second"),
            ("Realistic portrait", "second"), ("off", "first"), ("Stylistic", "second"), ("off", "second")]
    seen: dict = {}
    for preset, which in plan:
        args = {"enabled": False, "preset": "Realistic"} if preset == "off" else {"enabled": True, "preset": preset}
        resp = txt2img(args, alwayson_scripts=_with_units(units[which]), unit=False)
        pixels = png_pixels(resp["images"][0])
        key = (preset, which)
        if key in seen:
            assert pixels == seen[key], f"{key} changed after the jobs before it"
        seen[key] = pixels
    assert seen[("off", "first")] != seen[("off", "second")]          # the two units differ
    assert seen[("Realistic", "first")] != seen[("off", "first")]     # FastFace acted


@pytest.mark.skipif(os.environ.get("FASTFACE_DROPPED_UNIT", "") != "1",
                    reason="FASTFACE_DROPPED_UNIT=1 only against a host whose IP-Adapter drops the unit (Neo without "
                           "its local fix, A1111 without insightface and a unit with an image)")
def test_a_unit_the_host_dropped_is_named_in_the_note():
    """The host logged an error and installed no IP-Adapter: the image still comes out, and the
    note names the unit's model and the server log instead of "no FaceID unit"."""
    unit = face_unit()
    resp = txt2img({"enabled": True, "preset": "Realistic"})
    note = params(resp).get("FastFace note", "")
    print(note)
    assert resp["images"]
    assert str(unit["model"]).split(" [")[0] in note and "server log" in note, note
    assert "no FaceID unit" not in note and "internal error" not in note
