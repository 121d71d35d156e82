"""The HTTP side of the opt-in real-WebUI checks, shared by the pytest suites (test_real_webui.py
and the files importing from it) and the soak script (soak.py): requests, the payloads FastFace
jobs are sent as, the FaceID unit, the hires-fix settings each host accepts, and the pixel
comparison. Standard library only (torch for the default unit's embedding); nothing here reads
which server to use: callers pass the URL and the host.
"""
from __future__ import annotations

import base64
import io
import json
import os
import struct
import urllib.request
import zlib

# Forge 2 and Neo: the API's hires fix needs hr_additional_modules
HR_MODULE_HOSTS = ("forge", "neo")


def post(url, path, payload, timeout=900):
    req = urllib.request.Request(url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def get(url, path):
    with urllib.request.urlopen(url + path, timeout=60) as resp:
        return json.loads(resp.read())


def face_unit(source: str | None = None) -> dict:
    """The ControlNet FaceID unit: `source` (default: the FASTFACE_FACEID_UNIT variable) is JSON or
    the path of a JSON file (a base64 image is too long for an env variable); without one, A1111's
    FaceID with a seeded random precomputed embedding through `ipadapter_input`."""
    unit = os.environ.get("FASTFACE_FACEID_UNIT") if source is None else source
    if unit:
        if os.path.isfile(unit):
            with open(unit) as f:
                return json.load(f)
        return json.loads(unit)
    import torch

    buf = io.BytesIO()
    torch.save(torch.nn.functional.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(7)), dim=-1), buf)
    return {"enabled": True, "module": "ip-adapter_face_id", "model": os.environ.get("FASTFACE_FACEID_MODEL", "ip-adapter-faceid_sd15"), "weight": 0.8,
            "ipadapter_input": [base64.b64encode(buf.getvalue()).decode()]}


def _with_scripts(payload: dict, unit: dict | None, fastface, overrides: dict) -> dict:
    """`payload` with `overrides` and the ControlNet unit / FastFace argument (each only when given)."""
    payload.update(overrides)
    if unit is not None:
        payload["alwayson_scripts"]["controlnet"] = {"args": [unit]}
    if fastface is not None:
        payload["alwayson_scripts"]["FastFace"] = {"args": [fastface]}
    return payload


def txt2img_payload(fastface=None, unit: dict | None = None, **overrides) -> dict:
    """txt2img at 64×64, 4 steps, Euler, CFG 1; `unit` the ControlNet unit (none: no unit) and
    `fastface` the script's argument (None: FastFace not named at all)."""
    payload = {"prompt": "a photo of a person, portrait", "negative_prompt": "blurry", "steps": 4, "width": 64,
               "height": 64, "cfg_scale": 1.0, "sampler_name": "Euler", "seed": 1234, "batch_size": 1,
               "alwayson_scripts": {}}
    return _with_scripts(payload, unit, fastface, overrides)


def img2img_payload(init_image: str, fastface=None, unit: dict | None = None, **overrides) -> dict:
    """img2img of `init_image` (base64) at 64×64, strength 0.6 (int(4 · 0.6) = 2 steps run), Euler, CFG 1."""
    payload = {"init_images": [init_image], "denoising_strength": 0.6, "prompt": "a photo of a person",
               "negative_prompt": "blurry", "steps": 4, "width": 64, "height": 64, "cfg_scale": 1.0,
               "sampler_name": "Euler", "seed": 1234, "alwayson_scripts": {}}
    return _with_scripts(payload, unit, fastface, overrides)


def with_info(resp: dict) -> dict:
    """The response with its `info` string parsed into `info_json`."""
    resp["info_json"] = json.loads(resp["info"])
    return resp


def infotext(resp):
    return resp["info_json"]["infotexts"][0]


def params(resp):
    return resp["info_json"].get("extra_generation_params", {})


def png_pixels(b64: str) -> bytes:
    """The decompressed IDAT stream of a PNG: equal bytes ⇔ equal pixels (same encoder)."""
    data = base64.b64decode(b64)
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos: pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8: pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)


def previews_added(plain: dict, shown: dict, batch_size: int) -> list[str]:
    """The images (base64) a request with Show face attention (`shown`) adds to the same request
    without it (`plain`): no generated pixel changes, every image of `plain` is still there (e.g.
    ControlNet's own maps), and one preview per generated image."""
    plain_px, shown_px = ([png_pixels(b) for b in r["images"]] for r in (plain, shown))
    assert shown_px[:batch_size] == plain_px[:batch_size]   # no generated pixel changes
    assert all(px in shown_px for px in plain_px)
    extras = [b for b, px in zip(shown["images"], shown_px) if px not in plain_px]
    assert len(extras) == batch_size, (len(plain_px), len(shown_px))
    return extras


def hires_upscaler(url: str) -> str:
    """"Latent" where the host has it; Neo removed the latent upscalers (modules/shared.py
    `latent_upscale_modes = {}`), so there one of its plain upscalers."""
    try:
        latent = [m.get("name") for m in get(url, "/sdapi/v1/latent-upscale-modes")]
    except Exception:
        latent = []
    if "Latent" in latent:
        return "Latent"
    names = [u.get("name") for u in get(url, "/sdapi/v1/upscalers")]
    return next(n for n in ("Lanczos", "Nearest", "None") if n in names)


def hires_payload(url: str, host: str, upscaler: str | None = None, **overrides) -> dict:
    """The hires-fix fields (×1.5, 2 second-pass steps, strength 0.5) for `host`; `upscaler`
    skips asking the server again."""
    extra = {"hr_additional_modules": ["Use same choices"]} if host in HR_MODULE_HOSTS else {}
    return dict(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.5,
                hr_upscaler=upscaler or hires_upscaler(url), **extra, **overrides)
