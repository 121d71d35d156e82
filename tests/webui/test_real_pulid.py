"""Opt-in: FastFace with sd-webui-controlnet's PuLID in a real SDXL A1111, through the HTTP API.

Skipped unless both are set:

    FASTFACE_WEBUI_URL          an A1111 + sd-webui-controlnet + sd-webui-controlnet-evaclip server with an
                                SDXL checkpoint loaded, this extension installed, started with
                                FASTFACE_TRACE=1 (and HF_HUB_OFFLINE=1 for the stand-in EVA-CLIP)
    FASTFACE_PULID_UNIT         "1" for the built-in unit (module ip-adapter_pulid, model
                                FASTFACE_PULID_MODEL (default ip-adapter_pulid_sdxl_fp16), a 640² red
                                square on grey as the face image), or the unit as JSON / a JSON file;
                                the tests set its "pulid_mode" themselves
    FASTFACE_PULID_BASELINE_FILE  optional: pixels of a PuLID request made by the same WebUI with
                                FastFace *disabled as an extension*; the first run against such a
                                server writes it, a run against the server with FastFace compares

Random weights everywhere are fine: `tests/webui/pulid_standins.py` writes every file the real
preprocessor chain reads (antelopev2, facexlib, EVA02-CLIP-L-14-336, the PuLID adapter).
Each request is 64×64, 4 steps, Euler, CFG 1, one image unless said; every request is made at most
once per session (the PuLID-mode × preset matrix also serves the "changes the image" and
show-attention checks).
"""
from __future__ import annotations

import base64
import io
import json
import os

import pytest

from fastface.config import PRESET_NAMES
from fastface.method.schedule import branches_needed
from fastface.presets import PRESETS
from test_real_webui import (URL, check_calls, expected_preview_size, get, has_fastface, infotext, params,
                             png_pixels, png_size, trace, txt2img)
from webui_client import previews_added

UNIT = os.environ.get("FASTFACE_PULID_UNIT", "")
BASELINE_FILE = os.environ.get("FASTFACE_PULID_BASELINE_FILE", "")
MODEL = os.environ.get("FASTFACE_PULID_MODEL", "ip-adapter_pulid_sdxl_fp16")
pytestmark = pytest.mark.skipif(not (URL and UNIT), reason="FASTFACE_WEBUI_URL and FASTFACE_PULID_UNIT not set "
                                "(opt-in real SDXL A1111 PuLID tests)")

MODES = ("Fidelity", "Extremely style")      # sd-webui-controlnet scripts/enums.py PuLIDMode values
STEPS = 4
SDXL_ATTN2 = {"down": 24, "mid": 10, "up": 36}   # SDXL attn2 layers per UNet part (ControlNet hooks all 70)
PULID_TOKENS = 10


def face_png() -> str:
    """A 640² grey image with a red square: a face to the project's synthetic SCRFD (antelopev2
    stand-in; tests/likeness_models.py), and the crafted RetinaFace finds one anywhere."""
    from PIL import Image

    img = Image.new("RGB", (640, 640), (128, 128, 128))
    img.paste((200, 60, 40), (120, 120, 560, 560))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def pulid_unit(mode: str) -> dict:
    if UNIT in ("1", "default"):
        unit = {"enabled": True, "module": "ip-adapter_pulid", "model": MODEL, "weight": 1.0, "image": face_png()}
    elif os.path.isfile(UNIT):
        with open(UNIT) as f:
            unit = json.load(f)
    else:
        unit = json.loads(UNIT)
    return {**unit, "pulid_mode": mode}


_responses: dict = {}


def request(key, fastface, mode=MODES[0], unit=True, **overrides):
    """txt2img with the PuLID unit in `mode` (or none), made once per `key` per session."""
    if key not in _responses:
        scripts = {"controlnet": {"args": [pulid_unit(mode)]}} if unit else {}
        _responses[key] = txt2img(fastface, unit=False, alwayson_scripts=scripts, **overrides)
    return _responses[key]


def off(mode):
    return request(("off", mode), {"enabled": False, "preset": "Realistic"}, mode)


def on(mode, preset, show=False, batch_size=1):
    return request(("on", mode, preset, show, batch_size),
                   {"enabled": True, "preset": preset, "show_attention": show}, mode, batch_size=batch_size)


@pytest.fixture(scope="module", autouse=True)
def _server_has_pulid():
    models = get(URL, "/controlnet/model_list")["model_list"]
    if not any(m.split(" [")[0] == MODEL for m in models):
        pytest.skip(f"the server lists no {MODEL} (run tests/webui/pulid_standins.py): {models}")


@pytest.fixture(autouse=True)
def _needs_extension(request):
    if request.node.name != "test_baseline_without_extension" and not has_fastface():
        pytest.skip("this server has no FastFace (baseline run)")


def test_the_real_preprocessor_chain_runs_in_both_modes():
    """Without FastFace's effect (disabled): the PuLID unit changes the image (antelopev2, facexlib,
    EVA-CLIP and the adapter all ran; ControlNet answers 200 with the unit's line even when its
    preprocessor fails), and the two modes differ (the mode field reaches the unit)."""
    none = request("no unit", {"enabled": False, "preset": "Realistic"}, unit=False)
    fidelity, style = (png_pixels(off(m)["images"][0]) for m in MODES)
    assert png_pixels(none["images"][0]) not in (fidelity, style)
    assert fidelity != style
    for mode in MODES:
        assert "ip-adapter_pulid" in infotext(off(mode)) and MODEL in infotext(off(mode))


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("mode", MODES)
def test_rows_and_face_attention_per_step(mode, preset):
    """The documented rows per step (as test_real_webui's matrix) and, when AM is on for the preset,
    the transformed PuLID calls on every down and up SDXL attn2 layer of every step, never mid."""
    resp = on(mode, preset)
    assert resp["images"], resp["info"]
    assert "FastFace: " in infotext(resp) and f"preset={preset}" in infotext(resp)
    note = params(resp).get("FastFace note", "")
    assert "internal error" not in note, note
    assert "PuLID" in note and note.count(mode) == 1, note
    args = PRESETS[preset]
    expected = [branches_needed(k, STEPS, args).rows_per_image for k in range(STEPS)]
    if not args.dcg:
        expected = [2] * STEPS
    tr = trace(resp)
    assert [tr["rows"][f"0/{k}"] for k in range(STEPS)] == expected, (tr["rows"], expected)
    check_calls(resp, {f"0/{k}": 1 for k in range(STEPS)})
    if args.am_mode == "off":
        assert tr["am"] == {}, tr
        return
    parts = [p for p in ("down", "mid", "up") if getattr(args, f"am_{p}")]
    assert parts == ["down", "up"], parts   # the presets' default parts
    assert tr["am"] == {f"0/{k}/{p}": SDXL_ATTN2[p] for k in range(STEPS) for p in parts}, tr["am"]
    adapters = tr.get("am_adapters", {})   # transformed calls per adapter kind: all of them PuLID's here
    assert adapters.get("pulid", 0) == sum(tr["am"].values()) > 0 and not any(n for k, n in adapters.items() if k != "pulid"), tr


@pytest.mark.parametrize("mode", MODES)
def test_fastface_changes_the_image(mode):
    assert png_pixels(on(mode, "Realistic")["images"][0]) != png_pixels(off(mode)["images"][0])


def test_disabled_is_pixel_identical_and_jobs_leave_nothing_behind():
    """Disabled after enabled PuLID jobs of both modes = disabled before (not cached: made here)."""
    before = off(MODES[0])
    for mode in MODES:
        on(mode, "Realistic")
        txt2img({"enabled": True, "preset": "Realistic portrait"}, unit=False, steps=2,
                alwayson_scripts={"controlnet": {"args": [pulid_unit(mode)]}})
    again = txt2img({"enabled": False, "preset": "Realistic"}, unit=False,
                    alwayson_scripts={"controlnet": {"args": [pulid_unit(MODES[0])]}})
    assert png_pixels(before["images"][0]) == png_pixels(again["images"][0])


def test_baseline_without_extension():
    """Disabled FastFace gives the pixels of the WebUI without the extension (two servers)."""
    if not BASELINE_FILE:
        pytest.skip("FASTFACE_PULID_BASELINE_FILE not set")
    payload = {"controlnet": {"args": [pulid_unit(MODES[0])]}}
    if not has_fastface():
        first = png_pixels(txt2img(None, unit=False, alwayson_scripts=payload)["images"][0])
        second = png_pixels(txt2img(None, unit=False, alwayson_scripts=dict(payload))["images"][0])
        assert first == second, "the server without FastFace is not deterministic"
        with open(BASELINE_FILE, "wb") as f:
            f.write(first)
        pytest.skip(f"baseline written to {BASELINE_FILE}; now run against a server with FastFace")
    if not os.path.exists(BASELINE_FILE):
        pytest.skip("no baseline yet: run once against the WebUI without the extension")
    with open(BASELINE_FILE, "rb") as f:
        baseline = f.read()
    assert png_pixels(off(MODES[0])["images"][0]) == baseline


@pytest.mark.parametrize("mode,batch_size", [(MODES[0], 2), (MODES[1], 1)])
def test_show_attention_adds_one_preview_per_image_and_changes_no_pixel(mode, batch_size):
    plain = on(mode, "Realistic", show=False, batch_size=batch_size)
    shown = on(mode, "Realistic", show=True, batch_size=batch_size)
    # images: the generated ones first, then ControlNet's PuLID map (facexlib's face features) and
    # FastFace's previews; a preview is what the box adds
    extras = previews_added(plain, shown, batch_size)
    from fastface.views.attnmaps import token_layout

    layout = token_layout(PULID_TOKENS, pulid=True)   # two groups: the MLP's 5 tokens, the EVA-CLIP layers' 5
    for extra in extras:
        assert png_size(extra) == expected_preview_size((64, 64), STEPS, PULID_TOKENS, separate=len(layout.separate),
                                                        groups=len(layout.groups))
    assert infotext(shown) == infotext(plain)
