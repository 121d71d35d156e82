"""Opt-in: out of memory inside a job on a real A1111 or Forge, raised by the fault-injection
extension (tests/webui/fault_injection, copied into the WebUI's `extensions/` beside FastFace).

Skipped unless FASTFACE_WEBUI_URL points at such a server and FASTFACE_FAULTS=1 (see
test_real_webui.py for the other variables; FASTFACE_HOST says which host). Random weights are fine.

FastFace's own memory (face branch, DCG's extra rows, readout): every request returns its image,
the note says FastFace ran out of memory, later disabled jobs are pixel-identical to the first one,
a repeated FastFace job is identical to the one before the fault. The WebUI's own memory (a UNet
call without FastFace's rows, the VAE): the request fails as the WebUI fails it (HTTP 500 from its
API's exception handler), and the jobs after it are clean.
"""
from __future__ import annotations

import json
import os
import urllib.error

import pytest

from test_real_webui import URL, face_unit, get, png_pixels, post

pytestmark = pytest.mark.skipif(not URL or os.environ.get("FASTFACE_FAULTS") != "1",
                                reason="FASTFACE_WEBUI_URL and FASTFACE_FAULTS=1 (opt-in, fault-injection extension)")
FAULT_SCRIPT = "FastFace fault injection"
REALISTIC = {"enabled": True, "preset": "Realistic"}     # DCG's third row on steps 1-2, AM on down / up
MEMORY_WORDS = "FastFace ran out of GPU memory in"


def request(fastface, fault="", **overrides):
    """txt2img as test_real_webui's (64×64, 4 steps, Euler, a FaceID unit) at CFG 5, so that the
    WebUI's own rows are batch × 2 and DCG's id-only rows are extra; plus the fault spec."""
    payload = {"prompt": "a photo of a person, portrait", "negative_prompt": "blurry", "steps": 4, "width": 64,
               "height": 64, "cfg_scale": 5.0, "sampler_name": "Euler", "seed": 1234, "batch_size": 1,
               "alwayson_scripts": {"controlnet": {"args": [face_unit()]}, FAULT_SCRIPT: {"args": [fault]}}}
    if fastface is not None:
        payload["alwayson_scripts"]["FastFace"] = {"args": [fastface]}
    payload.update(overrides)
    resp = post(URL, "/sdapi/v1/txt2img", payload)
    resp["info_json"] = json.loads(resp["info"])
    return resp


def extra(resp) -> dict:
    return resp["info_json"].get("extra_generation_params", {})


def pixels(resp) -> bytes:
    return png_pixels(resp["images"][0])


@pytest.fixture(scope="module")
def before():
    """The first disabled job and a FastFace job, before any fault."""
    names = [s.lower() for s in get(URL, "/sdapi/v1/scripts")["txt2img"]]
    if FAULT_SCRIPT.lower() not in names:
        pytest.skip("the fault-injection extension is not installed on this server")
    off = request({"enabled": False, "preset": "Realistic"})
    on = request(REALISTIC)
    assert not extra(on).get("FastFace note", "").startswith(MEMORY_WORDS)
    return {"off": pixels(off), "on": pixels(on)}


def assert_clean_after(before):
    """A disabled job equals the first one; a FastFace job equals the one before the fault."""
    assert pixels(request({"enabled": False, "preset": "Realistic"})) == before["off"]
    again = request(REALISTIC)
    assert pixels(again) == before["on"]
    assert MEMORY_WORDS not in extra(again).get("FastFace note", "")


@pytest.mark.parametrize("fault,place,fastface", [
    ("face:2", "the face branch", REALISTIC),
    ("face:2", "the face branch", {"enabled": True, "preset": "Scale-power only"}),
    ("face:1", "the face branch", {**REALISTIC, "show_attention": True}),
    ("dcg:1", "the UNet call that carries DCG's extra rows", REALISTIC),
    ("readout:1", "the likeness readout", REALISTIC),
], ids=["face", "face-am-only", "face-with-preview", "dcg", "readout"])
def test_fastfaces_own_oom_gives_the_image_and_a_note(before, fault, place, fastface):
    resp = request(fastface, fault)
    assert extra(resp).get("FastFace fault", "").endswith("raised"), extra(resp)   # it fired
    assert resp["images"], "the image must come out"
    note = extra(resp).get("FastFace note", "")
    assert f"{MEMORY_WORDS} {place}" in note, note
    assert "internal error" not in note
    assert_clean_after(before)


@pytest.mark.parametrize("fault,fastface", [
    ("host_unet:1", REALISTIC), ("host_unet:1", {"enabled": False, "preset": "Realistic"}),
    ("vae:1", REALISTIC), ("vae:1", None),
], ids=["unet-fastface-on", "unet-fastface-off", "vae-fastface-on", "vae-no-fastface"])
def test_the_webuis_own_oom_fails_the_request_and_leaves_nothing(before, fault, fastface):
    try:
        resp = request(fastface, fault)
    except urllib.error.HTTPError as err:   # the WebUI's API answers its own error with HTTP 500
        assert err.code >= 500, err.code
    else:   # a host that answers 200 with an error field and no image also failed the job
        assert not resp.get("images") or "error" in resp, "the WebUI's own out-of-memory error was swallowed"
    assert_clean_after(before)
