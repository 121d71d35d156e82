"""fastface-eval against tiny fake WebUI servers on 127.0.0.1 (started here, stopped after each test).

A fake server answers /sdapi/v1/scripts and /sdapi/v1/txt2img like A1111: a PNG with its
infotext, and `info.infotexts`. Its `FastFace ID` is a known function of the request
(identity photo, preset, seed), prompts containing "empty room" give `no face`, so the CSV, the
means, FFC and Δ vs Off are checked against values computed here."""
import base64
import csv
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from fastface import eval as ev

PRESET_BONUS = {"Off": 0.0, "Realistic": 0.1, "Stylistic": 0.05}


def fake_id(photo_b64: str, preset: str, seed: int) -> float:
    base = 0.3 + (sum(base64.b64decode(photo_b64)[-50:]) % 7) / 100  # depends on the identity photo
    return round(base + PRESET_BONUS[preset] + 0.01 * seed, 4)


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
        value = "no face" if "empty room" in payload["prompt"] else f"{fake_id(unit['image'], ff['preset'], payload['seed']):.3f}"
        infotext = (f"{payload['prompt']}\nSteps: {payload['steps']}, Seed: {payload['seed']}, "
                    f"FastFace: \"preset={ff['preset']}\", FastFace ID: {value}, Server: {self.name}")
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


@pytest.fixture
def servers():
    made = []

    def make(**kw):
        s = FakeWebUI(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def _photo(path, color):
    Image.new("RGB", (64, 64), color).save(path)


@pytest.fixture
def workspace(tmp_path):
    ids = tmp_path / "ids"
    (ids / "alice").mkdir(parents=True)
    _photo(ids / "alice" / "1.png", (200, 50, 40))
    _photo(ids / "bob.png", (30, 200, 90))  # a loose photo is an identity too
    (tmp_path / "prompts.txt").write_text(
        "# portraits\nA Photo of a person in a park\n\nwatercolor painting; a person reading\na person in an empty room\n")
    return tmp_path


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


def test_full_grid_writes_every_output(workspace, servers, capsys):
    a = servers()
    assert ev.main(["--config", write_config(workspace, [a])]) == 0
    rows = rows_of(workspace)
    assert len(rows) == 2 * 3 * 2 * 2 == len(a.requests)
    assert {r["category"] for r in rows if r["prompt_index"] == "1"} == {"style"}
    assert {r["category"] for r in rows if r["prompt_index"] == "0"} == {"realistic"}
    assert rows[0]["prompt"] == "a photo of a person in a park"  # the authors lower-case prompts
    assert {r["server"] for r in rows} == {a.url}
    # every image is on disk with its infotext
    for r in rows:
        with Image.open(workspace / "out" / r["file"]) as im:
            assert f"Seed: {r['seed']}" in im.info["parameters"]
    summary = json.loads((workspace / "out" / "summary.json").read_text())
    off, real = hand_ids(workspace, "Off"), hand_ids(workspace, "Realistic")
    s_off, s_real = summary["presets"]["Off"], summary["presets"]["Realistic"]
    assert s_off["ffc"] == s_real["ffc"] == 4 and s_off["with_id"] == 8
    assert s_off["mean_id"] == pytest.approx(np.mean(list(off.values())), abs=1e-9)
    assert s_real["mean_id"] == pytest.approx(np.mean(list(real.values())), abs=1e-9)
    assert s_real["delta_vs_off"] == pytest.approx(np.mean([real[k] - off[k] for k in off]), abs=1e-9)
    assert s_real["delta_ci95"][0] <= s_real["delta_vs_off"] <= s_real["delta_ci95"][1]
    assert s_off["ci95"][0] <= s_off["mean_id"] <= s_off["ci95"][1]
    assert summary["by_category"]["style"]["Off"]["images"] == 4
    md = (workspace / "out" / "summary.md").read_text()
    assert "| Realistic | 12 |" in md and "CLIP-T: not computed" in md
    assert "| Realistic | 12 |" in capsys.readouterr().out  # the summary is printed
    for picture in ("chart.png", "contact_sheet.png"):
        with Image.open(workspace / "out" / picture) as im:
            assert im.width > 200 and im.height > 150
    # the payload: FastFace dict args with the preset, readout on, the unit with the photo and λ
    p = a.requests[0]
    assert p["alwayson_scripts"]["FastFace"]["args"][0]["readout"] is True
    unit = p["alwayson_scripts"]["controlnet"]["args"][0]
    assert unit["weight"] == 0.7 and unit["enabled"] and unit["module"] == "ip-adapter_face_id"
    assert {q["alwayson_scripts"]["FastFace"]["args"][0]["preset"] for q in a.requests} == {"Off", "Realistic"}


def test_interrupted_run_resumes_from_disk(workspace, servers, capsys):
    dying = servers(fail_after=5)
    cfg = write_config(workspace, [dying])
    assert ev.main(["--config", cfg]) == ev.ServerError.code
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err and "Traceback" not in err
    first = rows_of(workspace)
    assert len(first) == 5
    kept = {r["file"]: (workspace / "out" / r["file"]).read_bytes() for r in first}
    healthy = servers()
    cfg = write_config(workspace, [healthy])
    assert ev.main(["--config", cfg]) == 0
    assert len(healthy.requests) == 24 - 5
    rows = rows_of(workspace)
    assert len(rows) == 24 and len({(r["identity"], r["prompt_index"], r["preset"], r["seed"]) for r in rows}) == 24
    for file, data in kept.items():
        assert (workspace / "out" / file).read_bytes() == data  # nothing already written is lost


def test_jobs_move_to_the_other_server_when_one_fails(workspace, servers, capsys):
    a, b = servers(name="A", fail_after=3), servers(name="B")
    assert ev.main(["--config", write_config(workspace, [a, b])]) == 0
    rows = rows_of(workspace)
    assert len(rows) == 24
    by_server = {s: sum(r["server"] == s for r in rows) for s in (a.url, b.url)}
    assert by_server[a.url] == 3 and by_server[b.url] == 21
    assert f"server {a.url} dropped" in capsys.readouterr().out


def test_two_servers_share_the_work(workspace, servers):
    a, b = servers(name="A"), servers(name="B")
    assert ev.main(["--config", write_config(workspace, [a, b])]) == 0
    assert len(a.requests) + len(b.requests) == 24 and a.requests and b.requests


def test_a_server_can_have_its_own_unit(workspace, servers):
    a, b = servers(name="A"), servers(name="B")
    forge_unit = {"module": "InsightFace+CLIP-H (IPAdapter)", "model": "ip-adapter-faceid-plusv2_sd15"}
    cfg = write_config(workspace, [a, {"url": b.url, "unit": forge_unit, "controlnet_key": "ControlNet"}])
    assert ev.main(["--config", cfg]) == 0
    assert a.requests and b.requests
    assert {q["alwayson_scripts"]["controlnet"]["args"][0]["model"] for q in a.requests} == {"ip-adapter-faceid_sd15"}
    units = [q["alwayson_scripts"]["ControlNet"]["args"][0] for q in b.requests]
    assert {u["module"] for u in units} == {forge_unit["module"]} and all(u["weight"] == 0.7 for u in units)


def test_a_server_error_names_the_item_and_keeps_the_rest(workspace, servers, capsys):
    a = servers(error_prompts=("watercolor",))
    assert ev.main(["--config", write_config(workspace, [a], attempts=1)]) == 4
    out = capsys.readouterr().out
    assert "prompt 1" in out and "HTTP 500" in out
    assert len(rows_of(workspace)) == 24 - 8


def test_unreachable_server_is_one_clear_line(workspace, capsys):
    cfg = write_config(workspace, ["http://127.0.0.1:9"])
    assert ev.main(["--config", cfg]) == ev.ServerError.code
    err = capsys.readouterr().err
    assert "no usable server" in err and "Traceback" not in err


def test_server_without_fastface_or_controlnet_is_refused(workspace, servers, capsys):
    a = servers(scripts=("controlnet",))
    assert ev.main(["--config", write_config(workspace, [a])]) == ev.ServerError.code
    assert "does not have the FastFace extension" in capsys.readouterr().out


@pytest.mark.parametrize("change, words", [
    ({"unit": None}, ["'unit'", "missing"]),
    ({"presets": ["Off", "Turbo"]}, ["'presets'", "Turbo"]),
    ({"servers": ["localhost:7860"]}, ["'servers'", "not an http"]),
    ({"seeds": [1, "two"]}, ["'seeds'"]),
    ({"steps": "four"}, ["'steps'", "expected int"]),
    ({"bogus": 1}, ["'bogus'", "unknown field"]),
    ({"identities": "nowhere"}, ["'identities'", "does not exist"]),
    ({"unit": {"module": "ip-adapter_face_id"}}, ["'unit'", "model"]),
    ({"output": "."}, ["'output'"]),
    ({"servers": [{"url": "http://127.0.0.1:9", "gpu": 1}]}, ["'servers'", "'gpu'"]),
    ({"servers": ["http://127.0.0.1:9", "http://127.0.0.1:9/"]}, ["'servers'", "twice"]),
])
def test_bad_config_names_the_field(workspace, capsys, change, words):
    cfg = json.loads(open(write_config(workspace, ["http://127.0.0.1:9"])).read())
    for k, v in change.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    path = workspace / "bad.json"
    path.write_text(json.dumps(cfg))
    assert ev.main(["--config", str(path)]) == ev.ConfigError.code
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err
    for w in words:
        assert w in err


def test_unreadable_config_files(tmp_path, capsys):
    assert ev.main(["--config", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such config file" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{not json")
    assert ev.main(["--config", str(tmp_path / "broken.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (tmp_path / "broken.toml").write_text("servers = [")
    assert ev.main(["--config", str(tmp_path / "broken.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_toml_config_works(workspace, servers):
    a = servers()
    (workspace / "eval.toml").write_text(
        f'servers = ["{a.url}"]\nidentities = "ids"\nprompts = "prompts.txt"\noutput = "out"\n'
        'presets = ["Realistic"]\nseeds = [3]\nsteps = 1\nwidth = 64\nheight = 64\nbootstrap = 200\n'
        '[unit]\nmodule = "ip-adapter_face_id"\nmodel = "m"\n')
    assert ev.main(["--config", str(workspace / "eval.toml")]) == 0
    rows = rows_of(workspace)
    assert {r["preset"] for r in rows} == {"Off", "Realistic"}  # Off is always the baseline
    assert len(rows) == 2 * 3 * 2


def test_file_names_are_sanitised_and_stay_inside(tmp_path):
    assert ev.safe_name("../../etc/passwd") == "etc_passwd"
    assert "/" not in ev.safe_name("a/b\\c") and "\\" not in ev.safe_name("a/b\\c")
    assert ev.safe_name("..") .startswith("x") and ev.safe_name("") .startswith("x")
    assert ev.safe_name("Zoë, café") == "Zoe_cafe"
    long_a, long_b = ev.safe_name("a" * 300 + "1"), ev.safe_name("a" * 300 + "2")
    assert len(long_a) <= 48 and long_a != long_b
    job = ev.Job("../evil", ev.Prompt(0, "x/../../y; style"), "Off", 1)
    target = ev.inside(str(tmp_path), job.relpath())
    assert target.startswith(str(tmp_path.resolve()) + os.sep)
    with pytest.raises(ev.EvalError):
        ev.inside(str(tmp_path), "../outside.png")


def test_bootstrap_interval_hand_values():
    assert ev.bootstrap_ci([0.4] * 5) == (0.4, 0.4)
    # n = 2: resampled means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 → 2.5 % and 97.5 % at 0 and 1
    assert ev.bootstrap_ci([0.0, 1.0], n_boot=20000) == (0.0, 1.0)
    # n = 3, one 1: P(mean 0) = 8/27 > 2.5 %, P(mean 1) = 1/27 > 2.5 %
    assert ev.bootstrap_ci([0.0, 0.0, 1.0], n_boot=20000) == (0.0, 1.0)
    lo, hi = ev.bootstrap_ci(list(np.linspace(0, 1, 200)), n_boot=4000)
    assert 0.45 < lo < 0.5 < hi < 0.55  # ≈ mean ± 1.96·σ/√n = 0.5 ± 0.040


def test_readout_parsing():
    assert ev.readout_from_infotext("p\nSteps: 4, FastFace ID: 0.634, Seed: 1") == (0.634, True)
    assert ev.readout_from_infotext("p\nSteps: 4, FastFace ID: no face") == (None, False)
    assert ev.readout_from_infotext("p\nSteps: 4, FastFace: \"preset=Off\"") == (None, None)


def test_module_help_runs():
    out = subprocess.run([sys.executable, "-m", "fastface.eval", "--help"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and "--config" in out.stdout


def test_local_ids_from_face_models(workspace, servers, tmp_path):
    """With `face_models`, the ID is computed here (synthetic pack): reference = the identity photo."""
    from fastface import likeness

    if likeness.unavailable_reason() is not None:
        pytest.skip("insightface, onnxruntime and opencv are in the test extra")
    pytest.importorskip("onnx")
    import likeness_models as lm

    red, orange = (200, 60, 40), (230, 140, 70)
    pack = lm.build_pack(str(tmp_path / "buffalo_l"))
    for path in (workspace / "ids" / "alice" / "1.png", workspace / "ids" / "bob.png"):
        Image.fromarray(lm.face_image(red)).save(path)
    a = servers(face_images={"Off": lm.face_image(red), "Realistic": lm.face_image(orange)})
    assert ev.main(["--config", write_config(workspace, [a], face_models=pack, seeds=[1])]) == 0
    rows = rows_of(workspace)
    assert "readout" not in a.requests[0]["alwayson_scripts"]["FastFace"]["args"][0]  # not asked of the server
    hand = float(np.dot(lm.expected_embedding(red), lm.expected_embedding(orange)))
    for r in rows:
        assert r["face_found"] == "true"
        assert float(r["id"]) == pytest.approx(1.0 if r["preset"] == "Off" else hand, abs=1e-3)
    summary = json.loads((workspace / "out" / "summary.json").read_text())
    assert summary["presets"]["Realistic"]["delta_vs_off"] == pytest.approx(hand - 1.0, abs=1e-3)
