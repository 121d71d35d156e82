"""Talking to a WebUI over HTTP: the txt2img payload of a job, the server check, one generation
(PNG bytes with their infotext) and the `FastFace ID` the server's likeness readout wrote."""
from __future__ import annotations

import base64
import io
import json
import re
import urllib.error
import urllib.request
from typing import Any, Optional, Sequence

from .config import Config, variant_of
from .grid import Job

ID_KEY = "FastFace ID"


def b64_file(path: str) -> str:
    with open(path, "rb") as fh:
        return base64.b64encode(fh.read()).decode("ascii")


def build_payload(cfg: Config, job: Job, photos: Sequence[str], server: Optional[str] = None) -> dict:
    override = cfg.server_overrides.get(server or "", {})
    unit = {"enabled": True, **cfg.unit, **override.get("unit", {}), "weight": cfg.lam}  # λ is the unit weight
    controlnet_key = override.get("controlnet_key") or cfg.controlnet_key
    if cfg.merge_photos and len(photos) > 1:
        unit["image"] = [{"image": b64_file(p), "mask": None} for p in photos]
        unit["input_mode"] = "merge"
    else:
        unit["image"] = b64_file(photos[0])
    # units after the identity unit (InstantID's keypoint ControlNet), each as written, with the
    # identity's photo where it names no image of its own (InstantID's default: the reference's keypoints)
    after = [{"enabled": True, **u, "image": u.get("image") or b64_file(photos[0])} for u in cfg.units_after]
    fastface = {**cfg.fastface, **variant_of(cfg, job.preset).fields, "enabled": True}
    if cfg.face_models is None:
        fastface["readout"] = True
    payload = {
        "prompt": job.prompt.text + cfg.prompt_suffix,
        "negative_prompt": cfg.negative_prompt,
        "seed": job.seed, "steps": cfg.steps, "width": cfg.width, "height": cfg.height,
        "cfg_scale": cfg.cfg_scale, "sampler_name": cfg.sampler, "batch_size": 1, "n_iter": 1,
        "send_images": True, "save_images": False,
        **cfg.payload,
        "alwayson_scripts": {**cfg.payload.get("alwayson_scripts", {}),
                             "FastFace": {"args": [fastface]},
                             controlnet_key: {"args": [unit] + after}},
    }
    if cfg.scheduler:
        payload["scheduler"] = cfg.scheduler
    if cfg.checkpoint:
        payload["override_settings"] = {**payload.get("override_settings", {}), "sd_model_checkpoint": cfg.checkpoint}
    return payload


class Unreachable(Exception):
    """The server did not answer (connection refused, timed out): drop it."""


class RequestFailed(Exception):
    """The server answered with an error for this request."""


def http_json(url: str, payload: Optional[dict] = None, timeout: float = 30.0) -> Any:
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                     method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace").replace("\n", " ")
        raise RequestFailed(f"HTTP {exc.code} from {url}: {detail}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"{url}: {reason}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise RequestFailed(f"{url} answered something that is not JSON") from None


def check_server(server: str, cfg: Config) -> Optional[str]:
    """None when the server answers and runs FastFace and ControlNet; else why not (one line)."""
    try:
        scripts = http_json(server + "/sdapi/v1/scripts", timeout=min(cfg.timeout, 30))
    except (Unreachable, RequestFailed) as exc:
        return f"server {server} is not usable: {exc}"
    names = [str(s).lower() for s in (scripts or {}).get("txt2img", [])]
    if names and "fastface" not in names:
        return f"server {server} does not have the FastFace extension (txt2img scripts: {', '.join(names)})"
    key = cfg.server_overrides.get(server, {}).get("controlnet_key") or cfg.controlnet_key
    if names and key.lower() not in names:
        return (f"server {server} has no '{key}' script for the FaceID unit "
                f"(set controlnet_key; txt2img scripts: {', '.join(names)})")
    return None


def generate(server: str, payload: dict, timeout: float) -> tuple[bytes, str]:
    """(PNG bytes with the infotext, infotext) of the request's first image."""
    reply = http_json(server + "/sdapi/v1/txt2img", payload, timeout=timeout)
    images = reply.get("images") or []
    try:
        info = json.loads(reply.get("info") or "{}")
    except ValueError:
        info = {}
    first = int(info.get("index_of_first_image", 0) or 0)
    if len(images) <= first:
        raise RequestFailed(f"{server} returned no image")
    infotexts = info.get("infotexts") or []
    infotext = infotexts[first] if len(infotexts) > first else str(info.get("infotext", ""))
    from PIL import Image, PngImagePlugin

    try:
        image = Image.open(io.BytesIO(base64.b64decode(images[first].split(",", 1)[-1])))
        image.load()
    except Exception as exc:
        raise RequestFailed(f"{server} returned an image that does not decode ({exc})") from None
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", infotext)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=meta)
    return out.getvalue(), infotext


_ID_RE = re.compile(r"(?:^|,\s*|\n)FastFace ID:\s*(\"[^\"]*\"|[^,\n]*)")


def readout_from_infotext(infotext: str) -> tuple[Optional[float], Optional[bool]]:
    """(ID, face found) from the `FastFace ID` infotext entry; (None, None) when it is absent."""
    match = _ID_RE.search(infotext or "")
    if not match:
        return None, None
    value = match.group(1).strip().strip('"')
    try:
        return float(value), True
    except ValueError:
        return None, False
