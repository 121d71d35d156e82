"""fastface.eval.variants and the tuning run: presets plus overrides, sweeps, their validation by
the schema, --dry-run, the confirm, resume in the middle of a sweep, the Pareto front, AE."""
import json

import pytest
import torch
from PIL import Image

from eval_support import rows_of, write_config
from fastface.eval import metrics
from fastface.eval.config import ConfigError, ServerError, load_config
from fastface.eval.run import NotConfirmed, main, run
from fastface.eval.stats import pareto_front, summarize
from fastface.infotext import parse_infotext

SWEEP = {"preset": "Realistic", "alpha_peak": [1.0, 2.0], "beta_peak": [2, 4]}
SWEEP_SETTINGS = ["preset=Realistic, a=1.0, b=2.0", "preset=Realistic, a=1.0, b=4.0",
                  "preset=Realistic, a=2.0, b=2.0", "preset=Realistic, a=2.0, b=4.0"]


def test_a_2x2_sweep_makes_exactly_the_grid_and_its_infotexts(workspace, servers, capsys):
    a = servers()
    cfg = write_config(workspace, [a], presets=["Off"], sweep=SWEEP, seeds=[1])
    assert main(["--config", cfg, "--yes"]) == 0
    rows = rows_of(workspace)
    # 2 identities × 3 prompts × (Off + 4 sweep points) × 1 seed, each once
    assert len(rows) == len(a.requests) == 2 * 3 * 5
    assert sorted({r["preset"] for r in rows}) == sorted(["Off"] + SWEEP_SETTINGS)
    sent = {json.dumps(q["alwayson_scripts"]["FastFace"]["args"][0], sort_keys=True) for q in a.requests}
    expected = [{"preset": "Off"}] + [{"preset": "Realistic", "alpha_peak": x, "beta_peak": y}
                                      for x in (1.0, 2.0) for y in (2, 4)]
    assert sent == {json.dumps({**e, "enabled": True, "readout": True}, sort_keys=True) for e in expected}
    for r in rows:   # each image's infotext carries its variant's setting: the label pastes back
        with Image.open(workspace / "out" / r["file"]) as im:
            setting = "preset=Off" if r["preset"] == "Off" else r["preset"]
            assert f'FastFace: "{setting}"' in im.info["parameters"]
    for setting in SWEEP_SETTINGS:
        args, issues = parse_infotext(setting)
        assert not issues and args.alpha_peak == float(setting.split("a=")[1].split(",")[0])
    summary = json.loads((workspace / "out" / "summary.json").read_text())
    best = summary["pareto"]["fronts"]["all"]   # no CLIP-T or AE here: the best mean ID (the fake's ID grows with α)
    assert best == ["preset=Realistic, a=2.0, b=2.0"]
    assert f'FastFace: "{best[0]}"`' in (workspace / "out" / "summary.md").read_text()
    assert "fastface-eval: 30 images (2 identities × 3 prompts × 5 variants × 1 seeds)" in capsys.readouterr().out


@pytest.mark.parametrize("sweep, words", [
    ({"alpha_pek": [1.0]}, ["'sweep'", "alpha_pek", "not a FastFace setting"]),
    ({"alpha_peak": []}, ["'sweep'", "alpha_peak", "non-empty list"]),
    ({"alpha_peak": [1.0, 99.0]}, ["'sweep'", "alpha_peak", "99", "outside"]),
    ({"am_mode": ["off"]}, ["'sweep'", "am_mode", "not a numeric field"]),
    ({"alpha_peak": [1.0, "x"]}, ["'sweep'", "alpha_peak", "'x' is not a number"]),
])
def test_a_bad_sweep_is_one_line_naming_it(workspace, servers, capsys, sweep, words):
    a = servers()
    assert main(["--config", write_config(workspace, [a], sweep=sweep), "--yes"]) == ConfigError.code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not a.requests and not (workspace / "out").exists()


@pytest.mark.parametrize("variant, words", [
    ({"preset": "Realistic", "alpha_peak": 99}, ["'presets'", "variant 2", "alpha_peak", "outside"]),
    ({"preset": "Realistic", "bogus": 1}, ["'presets'", "variant 2", "'bogus'"]),
    ({"preset": "Nope"}, ["'presets'", "variant 2", "'Nope'"]),
    ({"preset": "Realistic", "am_mode": "sharp"}, ["'presets'", "variant 2", "am_mode"]),
])
def test_a_bad_variant_names_the_field_and_the_variant(workspace, capsys, variant, words):
    assert main(["--config", write_config(workspace, ["http://127.0.0.1:9"], presets=["Off", variant])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


def test_variant_labels_names_and_duplicates(workspace):
    cfg = load_config(write_config(workspace, ["http://127.0.0.1:9"], presets=[
        "Realistic", {"preset": "Realistic", "sp_p": 1.5}, {"name": "strong", "preset": "Stylistic", "beta_peak": 4},
        {"preset": "Realistic"}], sweep={"alpha_peak": [1.5, 2.0]}))
    # Off first; the bare preset keeps its name; an unnamed variant is labelled by its setting; a
    # variant or sweep point with a setting already listed (Realistic, α = 1.5) is made once
    assert cfg.presets == ["Off", "Realistic", "preset=Realistic, p=1.5", "strong", "preset=Realistic, a=2.0"]
    assert [v.setting for v in cfg.variants][3] == "preset=Stylistic, b=4.0"
    with pytest.raises(ConfigError, match="two variants are called 'strong'"):
        load_config(write_config(workspace, ["http://127.0.0.1:9"], presets=[
            {"name": "strong", "alpha_peak": 2}, {"name": "strong", "alpha_peak": 3}]))


def test_dry_run_prints_variants_and_jobs_and_touches_nothing(workspace, capsys):
    cfg = write_config(workspace, ["http://127.0.0.1:9"], presets=["Off"], sweep=SWEEP)   # nothing listens there
    assert main(["--config", cfg, "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("variant: ")] == \
        ["variant: preset=Off"] + [f"variant: {s}" for s in SWEEP_SETTINGS]
    assert "jobs: 60" in out   # 2 identities × 3 prompts × 5 variants × 2 seeds
    assert not (workspace / "out").exists()


def test_an_unconfirmed_run_generates_nothing(workspace, servers):
    a = servers()
    cfg = load_config(write_config(workspace, [a], presets=["Off"], sweep=SWEEP))
    asked = []
    with pytest.raises(NotConfirmed):
        run(cfg, out=lambda *_: None, confirm=lambda n: asked.append(n) or False)
    assert asked == [2 * 3 * 5 * 2] and not a.requests


def test_resume_in_the_middle_of_a_sweep_loses_nothing(workspace, servers, capsys):
    dying = servers(fail_after=7)
    assert main(["--config", write_config(workspace, [dying], presets=["Off"], sweep=SWEEP, seeds=[1]), "--yes"]) == ServerError.code
    first = rows_of(workspace)
    kept = {r["file"]: (workspace / "out" / r["file"]).read_bytes() for r in first}
    assert len(first) == 7
    healthy = servers()
    assert main(["--config", write_config(workspace, [healthy], presets=["Off"], sweep=SWEEP, seeds=[1]), "--yes"]) == 0
    rows = rows_of(workspace)
    keys = {(r["identity"], r["prompt_index"], r["preset"], r["seed"]) for r in rows}
    assert len(rows) == len(keys) == 30 and len(healthy.requests) == 30 - 7
    for file, data in kept.items():
        assert (workspace / "out" / file).read_bytes() == data


def test_an_older_results_file_is_upgraded_on_resume(workspace, servers):
    a = servers()
    cfg = write_config(workspace, [a], presets=["Off"], seeds=[1])
    out = workspace / "out"
    out.mkdir()
    old_header = "identity,prompt_index,prompt,category,preset,seed,id,face_found,seconds,server,file,clip_t\n"
    (out / "results.csv").write_text(old_header)   # the columns before AE existed
    assert main(["--config", cfg, "--yes"]) == 0
    rows = rows_of(workspace)
    assert len(rows) == 6 and all(r["ae"] == "" and r["file"].endswith(".png") for r in rows)


def test_pareto_front_of_hand_made_points():
    points = {"Off": (0.30, 0.20), "A": (0.25, 0.40), "B": (0.28, 0.35), "C": (0.20, 0.45),
              "D": (0.27, 0.34), "E": (0.25, 0.38), "F": (None, 0.99)}
    # D loses to B (lower in both), E to A (same x, lower y); F has no x; Off has the best x
    assert pareto_front(points) == ["C", "A", "B", "Off"]


def _rows(values):
    """One result row per (variant, ID, CLIP-T) triple, all faces found."""
    return [{"identity": "x", "prompt_index": str(i), "prompt": "p", "category": "realistic", "preset": v,
             "seed": "1", "id": str(score), "face_found": "true", "seconds": "1", "server": "s", "file": "f",
             "clip_t": str(clip), "ae": ""} for i, (v, score, clip) in enumerate(values)]


def test_summary_front_and_ranking_from_hand_made_rows(tmp_path):
    rows = _rows([("Off", 0.30, 0.30), ("Off", 0.32, 0.30), ("a", 0.50, 0.20), ("a", 0.52, 0.22),
                  ("b", 0.40, 0.28), ("b", 0.42, 0.26), ("c", 0.38, 0.24), ("c", 0.40, 0.24)])
    summary = summarize(rows, ["Off", "a", "b", "c"], 200, settings={"a": "preset=Realistic, a=2.0"})
    assert summary["pareto"]["metric"] == "clip_t"
    # means (CLIP-T, ID): Off (0.30, 0.31), a (0.21, 0.51), b (0.27, 0.41), c (0.24, 0.39): c loses to b
    assert summary["pareto"]["fronts"]["all"] == ["a", "b", "Off"]
    from fastface.eval.stats import summary_markdown
    md = summary_markdown(summary)
    table = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[1:5] == ["a", "b", "c", "Off"]   # ranked by mean ID
    assert 'FastFace: "preset=Realistic, a=2.0"`' in md and 'FastFace: "preset=b"`' in md
    from fastface.eval.pictures import pareto_chart
    assert pareto_chart(summary, str(tmp_path / "pareto.png"))
    with Image.open(tmp_path / "pareto.png") as im:
        assert im.size == (1100, 560)


class FixedClip:
    """Stands in for the CLIP model: one known, normalised image embedding."""

    def __init__(self):
        g = torch.Generator().manual_seed(3)
        e = torch.randn(1, 768, generator=g)
        self.embedding = e / e.norm()

    def image_embedding(self, image):
        return self.embedding


def _random_predictor():
    g = torch.Generator().manual_seed(0)
    return {f"{prefix}.{kind}": torch.randn(shape if kind == "weight" else shape[:1], generator=g) * 0.05
            for prefix, shape in metrics.AESTHETIC_LAYERS.items() for kind in ("weight", "bias")}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_aesthetic_score_on_a_random_predictor_equals_the_direct_computation(tmp_path, suffix):
    state = _random_predictor()
    path = tmp_path / ("sac+logos+ava1-l14-linearMSE" + suffix)
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file
        save_file(state, str(path))
    clip = FixedClip()
    scorer = metrics.AestheticScorer(str(path), clip)
    x = clip.embedding.double()
    for prefix in ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7"):   # linears only: no activation
        x = x @ state[prefix + ".weight"].double().T + state[prefix + ".bias"].double()
    assert scorer(Image.new("RGB", (8, 8))) == pytest.approx(float(x), rel=1e-5, abs=1e-6)


def test_a_file_of_another_layout_is_refused_by_name(tmp_path):
    state = _random_predictor()
    state.pop("layers.7.bias")
    with pytest.raises(ValueError, match="layers.7.bias"):
        metrics.aesthetic_mlp(state)
    state = _random_predictor()
    state["layers.0.weight"] = torch.zeros(1024, 512)
    with pytest.raises(ValueError, match=r"layers.0.weight has shape \(1024, 512\)"):
        metrics.aesthetic_mlp(state)


def test_without_aesthetic_weights_the_column_is_absent_and_the_summary_says_why(workspace, servers):
    a = servers()
    assert main(["--config", write_config(workspace, [a], seeds=[1]), "--yes"]) == 0
    md = (workspace / "out" / "summary.md").read_text()
    assert "AE: not computed (set aesthetic_model" in md and " AE |" not in md
    assert not (workspace / "out" / "pareto.png").exists()   # no second metric: no chart, the best ID listed
    assert "Best mean ID (no Pareto front without CLIP-T or AE)" in md
    cfg = write_config(workspace, [a], seeds=[1], aesthetic_model="ae.pth")
    (workspace / "ae.pth").write_bytes(b"")
    assert "not computed: the aesthetic predictor scores CLIP ViT-L/14 embeddings; set clip_model too" in \
        metrics.load_aesthetic(load_config(cfg), None)[1]
