"""What the fastface-eval tests share: tiny fake WebUI servers on 127.0.0.1 and the workspace helpers.

A fake server answers /sdapi/v1/scripts and /sdapi/v1/txt2img like A1111: a PNG with its
infotext, and `info.infotexts`. Its `FastFace ID` is a known function of the request
(identity photo, preset, seed), prompts containing "empty room" give `no face`, so the CSV, the
means, FFC and Δ vs Off are checked against values computed here (`hand_ids`). The fixtures that
start them (`servers`, stopped after each test) and the workspace (`workspace`) are in conftest.py."""
import base64
import csv
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from fastface.infotext import to_infotext
from fastface.presets import from_script_args


PRESET_BONUS = {"Off": 0.0, "Realistic": 0.1, "Stylistic": 0.05}


def fake_id(photo_b64: str, preset: str, seed: int, alpha_peak=None) -> float:
    base = 0.3 + (sum(base64.b64decode(photo_b64)[-50:]) % 7) / 100  # depends on the identity photo
    sweep = 0.0 if alpha_peak is None else 0.02 * (alpha_peak - 1.5)   # a swept α moves the ID
    return round(base + PRESET_BONUS[preset] + 0.01 * seed + sweep, 4)


class FakeWebUI:
    def __init__(self, name="A", fail_after=None, error_prompts=(), scripts=("fastface", "controlnet"),
                 face_images=None):
        self.name, self.fail_after, self.error_prompts, self.scripts = name, fail_after, error_prompts, scripts
        self.face_images = face_images
        self.requests = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/sdapi/v1/scripts":
                    return self._send(200, {"txt2img": list(owner.scripts), "img2img": []})
                self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    if owner.fail_after is not None and len(owner.requests) >= owner.fail_after:
                        self.close_connection = True
                        threading.Thread(target=owner.server.shutdown, daemon=True).start()
                        return self.connection.close()
                    owner.requests.append(payload)
                if any(p in payload["prompt"] for p in owner.error_prompts):
                    return self._send(500, {"error": "RuntimeError", "detail": "boom"})
                self._send(200, owner.answer(payload))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, payload):
        ff = payload["alwayson_scripts"]["FastFace"]["args"][0]
        unit = next(v for k, v in payload["alwayson_scripts"].items() if k.lower() == "controlnet")["args"][0]
        value = "no face" if "empty room" in payload["prompt"] else \
            f"{fake_id(unit['image'], ff['preset'], payload['seed'], ff.get('alpha_peak')):.3f}"
        setting = to_infotext(from_script_args([ff])[0])   # what the real script writes
        infotext = (f"{payload['prompt']}\nSteps: {payload['steps']}, Seed: {payload['seed']}, "
                    f"FastFace: \"{setting}\", FastFace ID: {value}, Server: {self.name}")
        img = Image.new("RGB", (payload["width"], payload["height"]), (payload["seed"] * 40 % 255, 90, 120))
        if self.face_images:  # a synthetic face whose colour depends on the preset (for local IDs)
            img = Image.fromarray(self.face_images[ff["preset"]])
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return {"images": [base64.b64encode(buf.getvalue()).decode()], "parameters": {},
                "info": json.dumps({"infotexts": [infotext], "index_of_first_image": 0})}

    def stop(self):
        try:
            self.server.shutdown()
        except Exception:
            pass
        self.server.server_close()


def write_config(workspace, servers, **extra):
    cfg = {"servers": [s.url if hasattr(s, "url") else s for s in servers], "identities": "ids",
           "prompts": "prompts.txt", "output": "out", "presets": ["Off", "Realistic"], "seeds": [1, 2],
           "steps": 2, "width": 64, "height": 64, "lambda": 0.7,
           "unit": {"module": "ip-adapter_face_id", "model": "ip-adapter-faceid_sd15"}, "bootstrap": 500}
    cfg.update(extra)
    path = workspace / "eval.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def rows_of(workspace):
    with open(workspace / "out" / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def hand_ids(workspace, preset):
    """The fake's ID for every image with a face, by (identity, prompt index, seed)."""
    photos = {"alice": workspace / "ids" / "alice" / "1.png", "bob": workspace / "ids" / "bob.png"}
    out = {}
    for ident, path in photos.items():
        b64 = base64.b64encode(path.read_bytes()).decode()
        for prompt in (0, 1):  # prompt 2 is the empty room: no face
            for seed in (1, 2):
                out[(ident, prompt, seed)] = round(fake_id(b64, preset, seed), 3)
    return out

