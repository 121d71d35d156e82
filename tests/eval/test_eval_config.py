"""fastface.eval.config: a bad or unreadable config is one line naming the file and the field; TOML works."""
import json

import pytest

from eval_support import rows_of, write_config
from fastface.eval.config import ConfigError
from fastface.eval.run import main


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
    assert main(["--config", str(path)]) == ConfigError.code
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err
    for w in words:
        assert w in err


def test_unreadable_config_files(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such config file" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["--config", str(tmp_path / "broken.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (tmp_path / "broken.toml").write_text("servers = [")
    assert main(["--config", str(tmp_path / "broken.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_toml_config_works(workspace, servers):
    a = servers()
    (workspace / "eval.toml").write_text(
        f'servers = ["{a.url}"]\nidentities = "ids"\nprompts = "prompts.txt"\noutput = "out"\n'
        'presets = ["Realistic"]\nseeds = [3]\nsteps = 1\nwidth = 64\nheight = 64\nbootstrap = 200\n'
        '[unit]\nmodule = "ip-adapter_face_id"\nmodel = "m"\n')
    assert main(["--config", str(workspace / "eval.toml")]) == 0
    rows = rows_of(workspace)
    assert {r["preset"] for r in rows} == {"Off", "Realistic"}  # Off is always the baseline
    assert len(rows) == 2 * 3 * 2

