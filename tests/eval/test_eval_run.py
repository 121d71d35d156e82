"""fastface.eval.run: whole runs against fake WebUI servers: every output, resume, several servers,
failed items."""
import json

import numpy as np
import pytest
from PIL import Image

from eval_support import hand_ids, rows_of, write_config
from fastface.eval.config import ServerError
from fastface.eval.run import main


def test_full_grid_writes_every_output(workspace, servers, capsys):
    a = servers()
    assert main(["--config", write_config(workspace, [a])]) == 0
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
    assert main(["--config", cfg]) == ServerError.code
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err and "Traceback" not in err
    first = rows_of(workspace)
    assert len(first) == 5
    kept = {r["file"]: (workspace / "out" / r["file"]).read_bytes() for r in first}
    healthy = servers()
    cfg = write_config(workspace, [healthy])
    assert main(["--config", cfg]) == 0
    assert len(healthy.requests) == 24 - 5
    rows = rows_of(workspace)
    assert len(rows) == 24 and len({(r["identity"], r["prompt_index"], r["preset"], r["seed"]) for r in rows}) == 24
    for file, data in kept.items():
        assert (workspace / "out" / file).read_bytes() == data  # nothing already written is lost


def test_jobs_move_to_the_other_server_when_one_fails(workspace, servers, capsys):
    a, b = servers(name="A", fail_after=3), servers(name="B")
    assert main(["--config", write_config(workspace, [a, b])]) == 0
    rows = rows_of(workspace)
    assert len(rows) == 24
    by_server = {s: sum(r["server"] == s for r in rows) for s in (a.url, b.url)}
    assert by_server[a.url] == 3 and by_server[b.url] == 21
    assert f"server {a.url} dropped" in capsys.readouterr().out


def test_two_servers_share_the_work(workspace, servers):
    a, b = servers(name="A"), servers(name="B")
    assert main(["--config", write_config(workspace, [a, b])]) == 0
    assert len(a.requests) + len(b.requests) == 24 and a.requests and b.requests


def test_a_server_error_names_the_item_and_keeps_the_rest(workspace, servers, capsys):
    a = servers(error_prompts=("watercolor",))
    assert main(["--config", write_config(workspace, [a], attempts=1)]) == 4
    out = capsys.readouterr().out
    assert "prompt 1" in out and "HTTP 500" in out
    assert len(rows_of(workspace)) == 24 - 8

