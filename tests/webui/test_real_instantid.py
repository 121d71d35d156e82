"""Opt-in: FastFace with InstantID (IP-Adapter unit + IdentityNet ControlNet unit) in a real SDXL
WebUI, through the HTTP API: A1111 + sd-webui-controlnet, Forge 2 or Neo (`FASTFACE_HOST`).

Skipped unless both are set:

    FASTFACE_WEBUI_URL     a server with an SDXL checkpoint loaded, this extension installed, started
                           with FASTFACE_TRACE=1, and the InstantID files in place: run
                           `tests/webui/instantid_standins.py --webui WEBUI --host a1111|forge|neo`
                           with the WebUI's Python first (random weights in the real layouts and
                           names, a fake antelopev2 pack; nothing is downloaded)
    FASTFACE_INSTANTID     "1"

Optional:

    FASTFACE_HOST          "a1111" (default), "forge" or "neo" (test_real_webui.py): Forge's CFG-1
                           shortcut evaluates the prompt row alone when DCG is off
    FASTFACE_INSTANTID_BASELINE_FILE  pixels of InstantID requests made by the same WebUI *without*
                           the extension (JSON, one entry per request); default
                           FASTFACE_BASELINE_FILE + ".instantid.json" when that is set. The first
                           run against a server without FastFace writes it, a run against the
                           server with FastFace compares.

The units: the IP-Adapter unit first, then the keypoint ControlNet unit (sd-webui-controlnet
asserts that order, scripts/controlnet.py L1188-1197), names read from the server's
/controlnet/module_list and /controlnet/model_list (A1111: instant_id_face_embedding +
ip-adapter_instant_id_sdxl, instant_id_face_keypoints + control_instant_id_sdxl; Forge family:
"InsightFace (InstantID)" + the adapter, instant_id_face_keypoints + IdentityNet, model names with
Forge 2's " [hash]"). Each request is 64×64 (SDXL's UNet takes multiples of 32 px; the FaceID SDXL
runs use 64), 4 steps, Euler, CFG 1, one image unless said, made at most once per session.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
from functools import lru_cache

import pytest

from fastface.config import PRESET_NAMES
from fastface.method.schedule import branches_needed
from fastface.presets import PRESETS
from test_real_webui import (FORGE, HOST, URL, check_calls, expected_preview_size, get, has_fastface, infotext,
                             params, png_pixels, png_size, trace, txt2img)
from webui_client import previews_added

ENABLED = os.environ.get("FASTFACE_INSTANTID", "") == "1"
_BASE = os.environ.get("FASTFACE_BASELINE_FILE", "")
BASELINE_FILE = os.environ.get("FASTFACE_INSTANTID_BASELINE_FILE", "") or (_BASE + ".instantid.json" if _BASE else "")
pytestmark = pytest.mark.skipif(not (URL and ENABLED), reason="FASTFACE_WEBUI_URL and FASTFACE_INSTANTID=1 not set "
                                "(opt-in real SDXL InstantID tests)")

MODES = ("Balanced", "ControlNet is more important")   # the ControlNet unit's control_mode
STEPS = 4
SIZE = (64, 64)
SDXL_ATTN2 = {"down": 24, "mid": 10, "up": 36}   # SDXL attn2 layers per UNet part (the IP-Adapter hooks all 70)
TOKENS = 16                                       # Resampler(num_queries=16)
# preprocessors in preference order: Forge family's, then sd-webui-controlnet's
EMBEDDING_MODULES = ("InsightFace (InstantID)", "instant_id_face_embedding")
KEYPOINT_MODULES = ("instant_id_face_keypoints",)


def squash(name: str) -> str:
    """A model name without Forge 2's " [hash]", lower-cased, without separators."""
    return re.sub(r"[\s_\-.]", "", name.lower().split(" [")[0])


@lru_cache(maxsize=None)
def server_names() -> dict:
    """The InstantID preprocessors and models as the server spells them (None where it lists none)."""
    models = get(URL, "/controlnet/model_list")["model_list"]
    modules = get(URL, "/controlnet/module_list")["module_list"]
    return {"embedding preprocessor": next((m for m in EMBEDDING_MODULES if m in modules), None),
            "IP-Adapter model": next((m for m in models if "instantid" in squash(m) and "ipadapter" in squash(m)), None),
            "keypoint preprocessor": next((m for m in KEYPOINT_MODULES if m in modules), None),
            "IdentityNet model": next((m for m in models if "instantid" in squash(m) and "ipadapter" not in squash(m)), None)}


def face_png() -> str:
    """A 640² grey picture with a red square on the left and a blue one on the right. The fake
    antelopev2 detector (tests/likeness_models.py) finds a face where a square is red in the channel
    order its blob sees: A1111 hands both preprocessors BGR (processor.py L746) and Forge's
    IP-Adapter BGR (IPAdapterPlus.py L254 tensorToNP), so the red square; Forge's keypoint preprocessor
    hands RGB (legacy preprocessor.py L816), so the blue one. Each path finds one face region (checked
    with both venvs' insightface at 640, 512 and 64 px)."""
    from PIL import Image

    img = Image.new("RGB", (640, 640), (128, 128, 128))
    # 192-px squares (6 detector cells) with room right and below: the detector puts a face's box and
    # landmarks a few cells right of and below a firing cell
    img.paste((200, 60, 40), (40, 160, 232, 352))
    img.paste((40, 60, 200), (336, 160, 528, 352))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def instantid_units(mode: str, ip: bool = True, cn: bool = True) -> list[dict]:
    ip_module, ip_model, cn_module, cn_model = server_names().values()
    image = face_png()
    common = {"enabled": True, "weight": 1.0, "image": image, "resize_mode": "Crop and Resize",
              "pixel_perfect": False, "processor_res": 512}
    units = []
    if ip:
        units.append({**common, "module": ip_module, "model": ip_model, "control_mode": "Balanced"})
    if cn:
        units.append({**common, "module": cn_module, "model": cn_model, "control_mode": mode})
    return units


def assert_not_blank(resp, count: int) -> None:
    for b64 in resp["images"][:count]:
        assert len(set(png_pixels(b64))) > 2, ("a blank image: on Forge 2 and Neo set the server's emphasis option "
                                               "to 'No norm' (random weights)")


_responses: dict = {}


def request(key, fastface, mode=MODES[0], ip=True, cn=True, batch_size=1, **overrides):
    """txt2img with the InstantID pair (control mode `mode` on the ControlNet unit), made once per
    `key` per session; its generated images are checked not to be blank."""
    if key not in _responses:
        units = instantid_units(mode, ip, cn)
        scripts = {"controlnet": {"args": units}} if units else {}
        resp = txt2img(fastface, unit=False, alwayson_scripts=scripts, batch_size=batch_size, **overrides)
        assert resp["images"], resp["info"]
        assert_not_blank(resp, batch_size)
        _responses[key] = resp
    return _responses[key]


def off(mode=MODES[0]):
    return request(("off", mode), {"enabled": False, "preset": "Realistic"}, mode)


def on(mode, preset, show=False, batch_size=1):
    return request(("on", mode, preset, show, batch_size),
                   {"enabled": True, "preset": preset, "show_attention": show}, mode, batch_size=batch_size)


@pytest.fixture(scope="module", autouse=True)
def _server_has_instantid():
    missing = [what for what, name in server_names().items() if name is None]
    if missing:
        pytest.skip(f"the server lists no InstantID {', '.join(missing)} (run tests/webui/instantid_standins.py "
                    f"--webui WEBUI --host {HOST} with the WebUI's Python, then restart it)")


@pytest.fixture(autouse=True)
def _needs_extension(request):
    if request.node.name != "test_baseline_without_extension" and not has_fastface():
        pytest.skip("this server has no FastFace (baseline run)")


def expected_rows(preset: str) -> list[int]:
    """`branches_needed`'s rows per image per step; without DCG the host's own rows (cond + uncond,
    the cond alone on the Forge family at CFG 1)."""
    args = PRESETS[preset]
    if not args.dcg:
        return [1 if FORGE else 2] * STEPS
    return [branches_needed(k, STEPS, args).rows_per_image for k in range(STEPS)]


# The Forge family's "ControlNet is more important" weights the ControlNet signal of cond and uncond
# rows differently (backend/patcher/controlnet.py L87-138) before FastFace's UNet wrapper runs, so
# the id-only rows take a UNet call of their own there (forge/batching.py `install_batching`, with a
# note): the rows per step are the same, the calls are two per step on steps with the id-only branch.
SEPARATE_CALL_NOTE = "the id-only branch takes its own UNet call"


def expected_calls(preset: str, mode: str) -> list[int]:
    args = PRESETS[preset]
    separate = FORGE and mode != "Balanced" and args.dcg
    return [2 if separate and branches_needed(k, STEPS, args).id_only else 1 for k in range(STEPS)]


def check_rows_am_and_note(resp, preset: str, mode: str = "Balanced") -> None:
    """Rows per step, one UNet call per step (two on the Forge family in a weighting control mode),
    AM on the InstantID branch of every down and up attn2 layer and no mid one (when the preset has
    AM), the note."""
    assert "FastFace: " in infotext(resp) and f"preset={preset}" in infotext(resp)
    args = PRESETS[preset]
    note = params(resp).get("FastFace note", "")
    assert "internal error" not in note and "no FaceID unit" not in note, note
    if args.dcg or args.am_mode != "off":
        assert "InstantID" in note, note
    tr = trace(resp)
    assert [tr["rows"][f"0/{k}"] for k in range(STEPS)] == expected_rows(preset), (tr["rows"], preset)
    calls = expected_calls(preset, mode)
    check_calls(resp, {f"0/{k}": calls[k] for k in range(STEPS)})
    if 2 in calls:
        assert SEPARATE_CALL_NOTE in note, note
    if args.am_mode == "off":
        assert tr["am"] == {}, tr
        return
    parts = [p for p in ("down", "mid", "up") if getattr(args, f"am_{p}")]
    assert parts == ["down", "up"], parts   # the presets' default parts
    # per UNet call: the separate id-only call runs the face branch of every layer again
    assert tr["am"] == {f"0/{k}/{p}": SDXL_ATTN2[p] * calls[k] for k in range(STEPS) for p in parts}, tr["am"]
    adapters = tr.get("am_adapters", {})    # transformed calls per adapter kind: all of them InstantID's
    assert adapters.get("instantid", 0) == sum(tr["am"].values()) > 0, tr
    assert not any(n for kind, n in adapters.items() if kind != "instantid"), tr


def test_both_units_act():
    """Without FastFace's effect (disabled): the IP-Adapter unit changes the image, and IdentityNet
    changes it again: the preprocessors found a face and both models loaded (ControlNet answers 200,
    and writes the unit into the infotext, even when a preprocessor fails)."""
    none = request("no units", {"enabled": False, "preset": "Realistic"}, ip=False, cn=False)
    ip_only = request("ip only", {"enabled": False, "preset": "Realistic"}, cn=False)
    pair = off()
    assert len({png_pixels(r["images"][0]) for r in (none, ip_only, pair)}) == 3


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_rows_and_face_attention_per_step(preset):
    check_rows_am_and_note(on(MODES[0], preset), preset)


@pytest.mark.parametrize("mode", MODES)
def test_both_control_modes_run_with_the_documented_rows(mode):
    """Realistic in each control mode: 2/3/3/2 rows, one call per step (the Forge family's weighting
    mode: two, with the note), AM as above (the Balanced request is the preset matrix's)."""
    check_rows_am_and_note(on(mode, "Realistic"), "Realistic", mode)


@pytest.mark.parametrize("mode", MODES)
def test_fastface_changes_the_image(mode):
    assert png_pixels(on(mode, "Realistic")["images"][0]) != png_pixels(off(mode)["images"][0])


def _read_baseline() -> dict:
    if not os.path.exists(BASELINE_FILE):
        return {}
    with open(BASELINE_FILE) as f:
        return json.load(f)


def test_baseline_without_extension():
    """Disabled FastFace gives the pixels of the WebUI without the extension (two servers), in each
    control mode."""
    if not BASELINE_FILE:
        pytest.skip("FASTFACE_INSTANTID_BASELINE_FILE (or FASTFACE_BASELINE_FILE) not set")
    keys = {mode: f"instantid {mode}" for mode in MODES}
    if not has_fastface():
        baseline = _read_baseline()
        for mode, key in keys.items():
            payload = {"controlnet": {"args": instantid_units(mode)}}
            first = png_pixels(txt2img(None, unit=False, alwayson_scripts=payload)["images"][0])
            second = png_pixels(txt2img(None, unit=False, alwayson_scripts=json.loads(json.dumps(payload)))["images"][0])
            assert first == second, f"the server without FastFace is not deterministic ({mode})"
            assert len(set(first)) > 2, "a blank image: set the server's emphasis option to 'No norm'"
            baseline[key] = base64.b64encode(first).decode()
        with open(BASELINE_FILE, "w") as f:
            json.dump(baseline, f)
        pytest.skip(f"baseline written to {BASELINE_FILE}; now run against a server with FastFace")
    baseline = _read_baseline()
    if not all(key in baseline for key in keys.values()):
        pytest.skip(f"no InstantID baseline in {BASELINE_FILE} yet: run once against the WebUI without the extension")
    for mode, key in keys.items():
        assert png_pixels(off(mode)["images"][0]) == base64.b64decode(baseline[key]), mode


@pytest.mark.parametrize("mode,batch_size", [(MODES[0], 2), (MODES[1], 1)])
def test_show_attention_adds_one_preview_per_image_and_changes_no_pixel(mode, batch_size):
    plain = on(mode, "Realistic", show=False, batch_size=batch_size)
    shown = on(mode, "Realistic", show=True, batch_size=batch_size)
    # images: the generated ones first, then ControlNet's maps (the keypoint drawing) and FastFace's
    # previews; a preview is what the box adds
    extras = previews_added(plain, shown, batch_size)
    for extra in extras:   # InstantID's 16 tokens as one 4×4 face mosaic, none in rows apart (no background token)
        assert png_size(extra) == expected_preview_size(SIZE, STEPS, TOKENS, separate=0, groups=1)
    assert infotext(shown) == infotext(plain)
