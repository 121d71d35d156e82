"""Write the ControlNet unit files the opt-in suites read (FASTFACE_FACEID_UNIT, FASTFACE_UNIT_DIR)
for a running WebUI — A1111 + sd-webui-controlnet or a Forge-family host (Forge 2, Forge Classic,
reForge, Neo) — from what it lists.

    python tests/webui/write_units.py --url http://127.0.0.1:7863 --out /tmp/units [--weight 0.8] [--only sdxl]

Model names are taken from the server's `/controlnet/model_list` exactly as it spells them (Forge 2
adds ` [hash]`, Neo does not), the preprocessors from `/controlnet/module_list`. The unit image is
a seeded random 256×256 picture: the test harnesses' fake insightface packs find one face in any
image. Writes `unit_<kind>.json` for each kind the server has a model for — plusv2, plus, faceid,
portrait (FaceID) and plain (a non-FaceID IP-Adapter) — and prints what it wrote and what it did
not find. Needs only the standard library and numpy + Pillow (any WebUI venv has them).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import urllib.request

# kind -> (model name test on the lower-cased, separator-free name, preprocessors in preference order)
KINDS = {
# (Forge's built-in names first, then sd-webui-controlnet's)
    "plusv2": (lambda m: "faceidplusv2" in m, ["InsightFace+CLIP-H (IPAdapter)", "ip-adapter_face_id_plus"]),
    "plus": (lambda m: "faceidplus" in m and "v2" not in m, ["InsightFace+CLIP-H (IPAdapter)", "ip-adapter_face_id_plus"]),
    "portrait": (lambda m: "faceidportrait" in m, ["InsightFace (IPAdapter)", "InsightFace+CLIP-H (IPAdapter)",
                                                  "ip-adapter_face_id"]),
    "faceid": (lambda m: re.search(r"faceid(?!plus|portrait)", m) is not None,
               ["InsightFace (IPAdapter)", "InsightFace+CLIP-H (IPAdapter)", "ip-adapter_face_id"]),
    # plain: not an identity adapter (InstantID's and PuLID's files also begin "ip-adapter")
    "plain": (lambda m: m.startswith("ipadapter") and not any(k in m for k in ("faceid", "instantid", "pulid")),
              ["CLIP-ViT-H (IPAdapter)", "ip-adapter_clip_h", "ip-adapter_clip_sd15"]),
}


def _get(url: str, path: str):
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=60) as resp:
        return json.loads(resp.read())


def face_image_b64(seed: int = 5, size: int = 256) -> str:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def squash(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name.lower().split(" [")[0])


def units_for(models: list[str], modules: list[str], weight: float, image: str) -> dict[str, dict]:
    """{kind: unit} for every kind with a model and a preprocessor on this server."""
    units = {}
    for kind, (is_kind, preprocessors) in KINDS.items():
        model = next((m for m in models if is_kind(squash(m))), None)
        module = next((p for p in preprocessors if p in modules), None)
        if model and module:
            units[kind] = {"enabled": True, "module": module, "model": model, "weight": weight,
                           "image": image, "resize_mode": "Crop and Resize", "control_mode": "Balanced",
                           "pixel_perfect": False, "processor_res": 512}
    return units


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--weight", type=float, default=0.8)
    ap.add_argument("--only", default="", help="only models whose name contains this (e.g. sdxl); "
                    "without it, no SDXL model (an SD1.5 server's units)")
    a = ap.parse_args(argv)
    listed = _get(a.url, "/controlnet/model_list")["model_list"]
    models = [m for m in listed if (a.only.lower() in m.lower() if a.only else "sdxl" not in m.lower())]
    modules = _get(a.url, "/controlnet/module_list")["module_list"]
    os.makedirs(a.out, exist_ok=True)
    units = units_for(models, modules, a.weight, face_image_b64())
    for kind, unit in units.items():
        with open(os.path.join(a.out, f"unit_{kind}.json"), "w") as f:
            json.dump(unit, f)
        print(f"unit_{kind}.json: {unit['model']} with {unit['module']}")
    for kind in KINDS.keys() - units.keys():
        print(f"no unit_{kind}.json: this server lists no model or preprocessor for it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
