"""The stand-in builders' own pieces, without a WebUI (these run in CI): the streamed safetensors
writer against the `safetensors` library, and the InstantID key tables against the numbers of the
real files (the full check of the layouts is `instantid_standins.py --check`, with the hosts' loaders).
"""
from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

import instantid_standins as iid  # noqa: E402
from standin_files import SDXL_ATTN2, ip_layer_shapes, random_fp16, write_safetensors_streamed  # noqa: E402


def test_streamed_file_reads_back_as_the_tensors_it_was_made_of(tmp_path):
    shapes = [("a.weight", (3, 5)), ("b.bias", (7,)), ("c.norm.weight", (4,)), ("d.latents", (1, 2, 6)),
              ("e.conv.weight", (2, 3, 3, 3))]
    path = str(tmp_path / "x.safetensors")
    params = write_safetensors_streamed(path, shapes, lambda k, s: random_fp16(k, s, seed=3), metadata={"note": "t"})
    assert params == sum(math.prod(s) for _, s in shapes)
    assert not os.path.exists(path + ".part")
    loaded = safetensors_torch.load_file(path)
    assert list(loaded) == sorted(k for k, _ in shapes)
    for key, shape in shapes:
        assert loaded[key].dtype == torch.float16 and torch.equal(loaded[key], random_fp16(key, shape, seed=3)), key
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"note": "t"}


def test_fill_rule_is_per_key_and_seed():
    w = random_fp16("x.weight", (64, 32), seed=0)
    assert torch.equal(w, random_fp16("x.weight", (64, 32), seed=0))
    assert not torch.equal(w, random_fp16("y.weight", (64, 32), seed=0))
    assert not torch.equal(w, random_fp16("x.weight", (64, 32), seed=1))
    assert abs(w.float().std().item() - 0.02) < 0.005          # min(0.02, 32^-1/2)
    assert torch.equal(random_fp16("n.weight", (8,), 0), torch.ones(8, dtype=torch.float16))
    assert torch.equal(random_fp16("n.bias", (8,), 0), torch.zeros(8, dtype=torch.float16))


def test_identitynet_table_has_the_real_files_size_and_the_keys_the_hosts_detect():
    shapes = dict(iid.identitynet_shapes())
    assert len(shapes) == 844 and sum(math.prod(s) for s in shapes.values()) == 1_251_014_160   # 2.50 GB in fp16
    assert shapes["controlnet_cond_embedding.conv_in.weight"] == (16, 3, 3, 3)    # diffusers ControlNet, RGB hint
    assert shapes["add_embedding.linear_1.weight"] == (1280, 2816)                # → label_emb: SDXL
    assert "down_blocks.2.attentions.1.transformer_blocks.9.norm3.weight" in shapes   # full depth (A1111's sdxl config)
    attn2 = [s for k, s in shapes.items() if k.endswith("attn2.to_k.weight")]
    assert len(attn2) == 4 + 20 + 10 and {s[1] for s in attn2} == {2048}      # down 2×2 + 2×10, mid 10
    assert len([k for k in shapes if k.startswith("controlnet_down_blocks.") and k.endswith("weight")]) == 9


def test_adapter_table_is_the_instantid_resampler_and_70_ip_layers():
    proj = dict(iid.resampler_shapes())
    assert len(proj) == 51 and sum(math.prod(s) for s in proj.values()) == 81_978_624
    assert proj["latents"] == (1, 16, 1280) and proj["proj_in.weight"] == (1280, 512)
    assert proj["proj_out.weight"] == (2048, 1280) and proj["layers.3.0.to_kv.weight"] == (2560, 1280)
    ip = ip_layer_shapes()
    assert len(ip) == 140 and [s[0] for k, s in ip if "to_k" in k] == SDXL_ATTN2
    assert ip[0][0] == "1.to_k_ip.weight" and ip[-1][0] == "139.to_v_ip.weight"


def test_antelopev2_pack_has_the_five_files(tmp_path):
    pytest.importorskip("onnx")
    from standin_files import ANTELOPE_FILES, write_antelopev2

    folder = write_antelopev2(str(tmp_path / "antelopev2"))
    assert sorted(os.listdir(folder)) == sorted(ANTELOPE_FILES)
    import pulid_standins   # its antelopev2 part is this writer

    assert pulid_standins.write_antelopev2_pack is write_antelopev2
