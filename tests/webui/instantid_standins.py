"""Random-weight stand-ins for every file a WebUI's InstantID path reads, for the opt-in real SDXL runs
(tests/webui/test_real_instantid.py). Nothing is downloaded: each file is made here, in the real key
layout, under the name and in the folder the host looks in, so the host's own loaders, detection and
preprocessors run.

    python tests/webui/instantid_standins.py --webui WEBUI --host a1111|forge|neo [--only PART,...] [--check [CODE]]

Run it with the WebUI's own Python (A1111: /work/scratch/a1111/venv/bin/python, Forge 2:
/work/scratch/forge/venv/bin/python, as their env.sh activate; it needs torch, safetensors and onnx).
WEBUI is the webui/ folder (A1111: with extensions/sd-webui-controlnet). PARTs (default all):

  adapter      models/ControlNet/ip-adapter_instant_id_sdxl.bin: InstantX's `ip-adapter.bin` layout, a
               torch pickle {"image_proj": …, "ip_adapter": …} (InstantID pipeline_stable_diffusion_xl_
               instantid.py set_image_proj_model / set_ip_adapter load those two entries):
               image_proj = Resampler(dim=1280, depth=4, dim_head=64, heads=20, num_queries=16,
               embedding_dim=512, output_dim=2048, ff_mult=4): 51 keys (latents, proj_in, proj_out,
               norm_out, layers.{0-3}.0.{norm1,norm2,to_q,to_kv,to_out}, layers.{0-3}.1.{0,1,3}), 82.0 M
               parameters; ip_adapter = 140 `{2n+1}.to_{k,v}_ip.weight` (the 70 SDXL attn2 in
               diffusers' attn_processors order, down 24, up 36, mid 10; (640 | 1280, 2048)), 340.8 M.
               fp16, 0.85 GB (the real file is fp32, 1.69 GB; both hosts cast on load).
               A1111: "instant_id" in the name makes it InstantID (scripts/ipadapter/ipadapter_model.py
               L280), the 2048 width SDXL; Forge family: any IP-Adapter name, InstantID is the
               preprocessor's flag (forge_ipadapter.py "InsightFace (InstantID)" → instant_id=True,
               IPAdapterPlus.py L609) and its model list filter wants "instant_id" / "instantid".
  identitynet  models/ControlNet/control_instant_id_sdxl.safetensors: InstantX's ControlNetModel/
               diffusion_pytorch_model.safetensors layout, a diffusers ControlNetModel with the SDXL
               config (IDENTITYNET below: cross_attention_dim 2048, addition_embed_type text_time,
               projection_class_embeddings_input_dim 2816, transformer_layers_per_block 1/2/10,
               linear projections, 3-channel hint): 844 keys, 1251.0 M parameters, fp16, 2.50 GB,
               written one tensor at a time (peak RAM < 0.1 GB). A1111: "instant_id" in the path gives
               ControlModelType.InstantID (scripts/controlnet_model_guess.py L233-234); both hosts
               convert the diffusers keys themselves.
  antelopev2   the fake insightface antelopev2 pack (standin_files.write_antelopev2, shared with
               pulid_standins.py) where the host reads it: A1111 extensions/sd-webui-controlnet/
               annotator/downloads/insightface/models/antelopev2 (scripts/preprocessor/legacy/
               processor.py L664-682, annotator/annotator_path.py); Forge 2 and Neo models/insightface/
               models/antelopev2 (sd_forge_ipadapter lib_ipadapter/IPAdapterPlus.py InsightFaceLoader,
               forge_legacy_preprocessors legacy_preprocessors/preprocessor.py install_antelopev2).

Every tensor is seeded per key (standin_files.random_fp16: the random SDXL checkpoint's rule, so the
residuals and tokens stay on the UNet's scale and finite in fp16). Random values, no relation to the
trained weights: the runs check the plumbing and FastFace's effect on it, not likeness.

Writing all three takes ~75 s on 2 cores at 1.4 GB peak RSS (0.85 GB + 2.50 GB on disk per WebUI).

Verified without a server by `--check` (in-process, with the host's own loader code from CODE, by
default WEBUI; run 2026-12-05 into scratch copies, peak RSS 3.7 GB on A1111 and 2.9 GB on Forge 2,
most of it the read-back's mapped file pages; a dropped or renamed IdentityNet key fails both):
  a1111  A1111 82a973c0 + sd-webui-controlnet 56cec5b2: scripts.utils.load_state_dict + controlnet_model_guess.
         build_model_by_guess on the adapter (PlugableIPAdapter, is_instantid, the Resampler loaded
         strictly; Resampler(embedding) and Resampler(0) are (1, 16, 2048) and finite) and on
         IdentityNet's keys as meta tensors (its diffusers conversion, the SDXL config it picks,
         ControlModelType.InstantID, the cldm ControlNet loaded with strict=True);
  forge  Forge 2 dfdcbab6 (--unet-in-fp16): backend.utils.load_torch_file + lib_ipadapter IPAdapter
         with the arguments IPAdapterApply.apply_ipadapter derives from the file for instant_id=True
         (strict Resampler load, tokens as above); ControlNetPatcher.try_build_from_state_dict on
         IdentityNet's meta tensors (huggingface_guess's diffusers detection and key map, no leftover
         key, cldm.ControlNet loaded with strict=True).
Both then read every IdentityNet tensor back from the file (finite fp16, the header's shapes).
Neo 2.26 reads the same names and folders as Forge 2 (checked in its source); `--check` on Neo is
not run here (no Neo venv on this machine).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standin_files import CONTEXT, ip_layer_shapes, random_fp16, write_antelopev2, write_safetensors_streamed  # noqa: E402

ADAPTER_NAME = "ip-adapter_instant_id_sdxl.bin"
IDENTITYNET_NAME = "control_instant_id_sdxl.safetensors"
FACE_DIM, TOKENS = 512, 16        # antelopev2 embedding → 16 face tokens

# The weight-shaping fields of InstantX's ControlNetModel/config.json (the standard diffusers SDXL
# ControlNet: both hosts' loaders take it for SDXL from these shapes alone)
IDENTITYNET = dict(
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    layers_per_block=2,
    in_channels=4,
    conditioning_channels=3,
    conditioning_embedding_out_channels=(16, 32, 96, 256),
    cross_attention_dim=CONTEXT,
    projection_class_embeddings_input_dim=2816,   # text_time: pooled 1280 + 6 time ids × 256
    time_embed_dim=1280,                          # 4 × block_out_channels[0]
)

# Resampler(dim=1280, depth=4, dim_head=64, heads=20, num_queries=16, embedding_dim=512, output_dim=2048,
# ff_mult=4): sd-webui-controlnet ipadapter_model.py init_proj_instantid, Forge IPAdapterPlus.py
# init_proj_instantid, InstantID's own set_image_proj_model
RESAMPLER = dict(dim=1280, depth=4, dim_head=64, heads=20, num_queries=TOKENS, embedding_dim=FACE_DIM,
                 output_dim=CONTEXT, ff_mult=4)

Shapes = list[tuple[str, tuple[int, ...]]]


def _linear(out: Shapes, prefix: str, n_out: int, n_in: int, bias: bool = True) -> None:
    out.append((f"{prefix}.weight", (n_out, n_in)))
    if bias:
        out.append((f"{prefix}.bias", (n_out,)))


def _conv(out: Shapes, prefix: str, n_out: int, n_in: int, k: int) -> None:
    out += [(f"{prefix}.weight", (n_out, n_in, k, k)), (f"{prefix}.bias", (n_out,))]


def _norm(out: Shapes, prefix: str, channels: int) -> None:
    out += [(f"{prefix}.weight", (channels,)), (f"{prefix}.bias", (channels,))]


def resampler_shapes() -> Shapes:
    """The Resampler's state-dict keys in its registration order (ipadapter image_proj_models.py)."""
    r = RESAMPLER
    inner = r["dim_head"] * r["heads"]
    out: Shapes = [("latents", (1, r["num_queries"], r["dim"]))]
    _linear(out, "proj_in", r["dim"], r["embedding_dim"])
    _linear(out, "proj_out", r["output_dim"], r["dim"])
    _norm(out, "norm_out", r["output_dim"])
    for i in range(r["depth"]):
        attn, ff = f"layers.{i}.0", f"layers.{i}.1"   # PerceiverAttention, FeedForward
        _norm(out, f"{attn}.norm1", r["dim"])
        _norm(out, f"{attn}.norm2", r["dim"])
        _linear(out, f"{attn}.to_q", inner, r["dim"], bias=False)
        _linear(out, f"{attn}.to_kv", 2 * inner, r["dim"], bias=False)
        _linear(out, f"{attn}.to_out", r["dim"], inner, bias=False)
        _norm(out, f"{ff}.0", r["dim"])   # LayerNorm, Linear, GELU, Linear
        _linear(out, f"{ff}.1", r["dim"] * r["ff_mult"], r["dim"], bias=False)
        _linear(out, f"{ff}.3", r["dim"], r["dim"] * r["ff_mult"], bias=False)
    return out


def _resnet(out: Shapes, prefix: str, c_in: int, c_out: int) -> None:
    """diffusers ResnetBlock2D."""
    _norm(out, f"{prefix}.norm1", c_in)
    _conv(out, f"{prefix}.conv1", c_out, c_in, 3)
    _linear(out, f"{prefix}.time_emb_proj", c_out, IDENTITYNET["time_embed_dim"])
    _norm(out, f"{prefix}.norm2", c_out)
    _conv(out, f"{prefix}.conv2", c_out, c_out, 3)
    if c_in != c_out:
        _conv(out, f"{prefix}.conv_shortcut", c_out, c_in, 1)


def _transformer(out: Shapes, prefix: str, c: int, depth: int) -> None:
    """diffusers Transformer2DModel with use_linear_projection (proj_in / proj_out are Linear)."""
    _norm(out, f"{prefix}.norm", c)
    _linear(out, f"{prefix}.proj_in", c, c)
    for j in range(depth):
        block = f"{prefix}.transformer_blocks.{j}"
        for attn, kv_in in (("attn1", c), ("attn2", IDENTITYNET["cross_attention_dim"])):
            _norm(out, f"{block}.norm{1 if attn == 'attn1' else 2}", c)
            _linear(out, f"{block}.{attn}.to_q", c, c, bias=False)
            _linear(out, f"{block}.{attn}.to_k", c, kv_in, bias=False)
            _linear(out, f"{block}.{attn}.to_v", c, kv_in, bias=False)
            _linear(out, f"{block}.{attn}.to_out.0", c, c)
        _norm(out, f"{block}.norm3", c)
        _linear(out, f"{block}.ff.net.0.proj", 8 * c, c)   # GEGLU: 2 × 4c
        _linear(out, f"{block}.ff.net.2", c, 4 * c)
    _linear(out, f"{prefix}.proj_out", c, c)


def identitynet_shapes() -> Shapes:
    """IdentityNet's state-dict keys and shapes in diffusers ControlNetModel's registration order
    (conv_in, time and add embeddings, the hint encoder, down blocks, their zero convs, the mid zero
    conv, the mid block); equal to `ControlNetModel(**config).state_dict()` of diffusers 0.31 with
    InstantX's config (checked in the Forge venv, which has diffusers)."""
    cfg = IDENTITYNET
    chans, temb = cfg["block_out_channels"], cfg["time_embed_dim"]
    out: Shapes = []
    _conv(out, "conv_in", chans[0], cfg["in_channels"], 3)
    _linear(out, "time_embedding.linear_1", temb, chans[0])
    _linear(out, "time_embedding.linear_2", temb, temb)
    _linear(out, "add_embedding.linear_1", temb, cfg["projection_class_embeddings_input_dim"])
    _linear(out, "add_embedding.linear_2", temb, temb)
    hint = cfg["conditioning_embedding_out_channels"]
    _conv(out, "controlnet_cond_embedding.conv_in", hint[0], cfg["conditioning_channels"], 3)
    for i in range(len(hint) - 1):
        _conv(out, f"controlnet_cond_embedding.blocks.{2 * i}", hint[i], hint[i], 3)
        _conv(out, f"controlnet_cond_embedding.blocks.{2 * i + 1}", hint[i + 1], hint[i], 3)
    _conv(out, "controlnet_cond_embedding.conv_out", chans[0], hint[-1], 3)
    zero_convs = [chans[0]]   # one per down-block output the UNet receives, conv_in's first
    c_in = chans[0]
    for b, (c, kind, depth) in enumerate(zip(chans, cfg["down_block_types"], cfg["transformer_layers_per_block"])):
        if kind == "CrossAttnDownBlock2D":   # attentions registered before resnets
            for j in range(cfg["layers_per_block"]):
                _transformer(out, f"down_blocks.{b}.attentions.{j}", c, depth)
        for j in range(cfg["layers_per_block"]):
            _resnet(out, f"down_blocks.{b}.resnets.{j}", c_in if j == 0 else c, c)
            zero_convs.append(c)
        if b < len(chans) - 1:
            _conv(out, f"down_blocks.{b}.downsamplers.0.conv", c, c, 3)
            zero_convs.append(c)
        c_in = c
    for i, c in enumerate(zero_convs):
        _conv(out, f"controlnet_down_blocks.{i}", c, c, 1)
    _conv(out, "controlnet_mid_block", chans[-1], chans[-1], 1)
    _transformer(out, "mid_block.attentions.0", chans[-1], cfg["transformer_layers_per_block"][-1])
    _resnet(out, "mid_block.resnets.0", chans[-1], chans[-1])
    _resnet(out, "mid_block.resnets.1", chans[-1], chans[-1])
    return out


def adapter_state_dict(seed: int = 0) -> dict:
    """{"image_proj": Resampler keys, "ip_adapter": 140 to_k_ip / to_v_ip}, fp16."""
    return {"image_proj": {k: random_fp16(f"image_proj.{k}", s, seed) for k, s in resampler_shapes()},
            "ip_adapter": {k: random_fp16(f"ip_adapter.{k}", s, seed) for k, s in ip_layer_shapes()}}


# -- where each host looks ------------------------------------------------------------------------------
def controlnet_models_dir(webui: str) -> str:
    # A1111 + sd-webui-controlnet: scripts/global_state.py cn_models_dir; Forge / Neo: modules_forge/shared.py controlnet_dir
    return os.path.join(webui, "models", "ControlNet")


def antelopev2_dir(webui: str, host: str) -> str:
    if host == "a1111":
        return os.path.join(webui, "extensions", "sd-webui-controlnet", "annotator", "downloads",
                            "insightface", "models", "antelopev2")
    return os.path.join(webui, "models", "insightface", "models", "antelopev2")


def write_adapter(webui: str, seed: int = 0) -> str:
    import torch

    out = os.path.join(controlnet_models_dir(webui), ADAPTER_NAME)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    sd = adapter_state_dict(seed)
    params = sum(v.numel() for part in sd.values() for v in part.values())
    torch.save(sd, out + ".part")
    os.replace(out + ".part", out)
    print(f"adapter: {out}: {len(sd['image_proj'])} image_proj + {len(sd['ip_adapter'])} ip_adapter keys, "
          f"{params / 1e6:.1f} M params (fp16), {os.path.getsize(out) / 1e9:.2f} GB")
    return out


def write_identitynet(webui: str, seed: int = 0) -> str:
    out = os.path.join(controlnet_models_dir(webui), IDENTITYNET_NAME)
    shapes = identitynet_shapes()
    params = write_safetensors_streamed(out, shapes, lambda k, s: random_fp16(k, s, seed),
                                        metadata={"note": "FastFace test stand-in: random weights in the layout of "
                                                          "InstantX/InstantID ControlNetModel (IdentityNet)"})
    print(f"identitynet: {out}: {len(shapes)} keys, {params / 1e6:.1f} M params (fp16), "
          f"{os.path.getsize(out) / 1e9:.2f} GB")
    return out


# -- checks with the host's own loader code (no server) ---------------------------------------------------
def _meta_state_dict(path: str) -> dict:
    """The file's tensors as meta tensors (names, shapes, dtypes from the header): loaders that only
    read keys and shapes run on them without 2.5 GB of RAM."""
    import torch
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k: torch.empty(f.get_slice(k).get_shape(), dtype=torch.float16, device="meta") for k in f.keys()}


def _read_back(path: str, shapes: Shapes) -> None:
    """Every tensor of the file, one at a time: the header's shapes, fp16, finite."""
    import torch
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        assert sorted(f.keys()) == sorted(k for k, _ in shapes), "keys differ from identitynet_shapes()"
        for key, shape in shapes:
            t = f.get_tensor(key)
            assert t.dtype == torch.float16 and tuple(t.shape) == shape and torch.isfinite(t).all(), key


def _check_tokens(cond, uncond) -> None:
    import torch

    for t in (cond, uncond):
        assert tuple(t.shape) == (1, TOKENS, CONTEXT) and torch.isfinite(t).all(), tuple(t.shape)
    assert not torch.equal(cond, uncond)


def check_a1111(code: str, adapter: str, identitynet: str) -> None:
    import torch

    sys.argv = sys.argv[:1]   # A1111's modules parse the command line on import
    sgm_repo = os.path.join(code, "repositories", "generative-models")
    # sgm first (cldm.py imports it), then off the path: its scripts/__init__.py would shadow the
    # extension's namespace package `scripts`
    sys.path.insert(0, sgm_repo)
    import sgm.modules.diffusionmodules.openaimodel  # noqa: F401
    sys.path.remove(sgm_repo)
    sys.path[:0] = [os.path.join(code, "extensions", "sd-webui-controlnet"), code]
    from scripts import cldm, controlnet_model_guess as guess
    from scripts.enums import ControlModelType
    from scripts.utils import load_state_dict

    ip = guess.build_model_by_guess(load_state_dict(adapter), None, adapter)
    assert ip.type == ControlModelType.IPAdapter and ip.model.ipadapter.is_instantid and ip.model.ipadapter.is_sdxl
    emb = torch.randn(FACE_DIM, generator=torch.Generator().manual_seed(1)) * 20
    embeds = ip.model.ipadapter._get_image_embeds_instantid(emb)
    _check_tokens(embeds.cond_emb, embeds.uncond_emb)
    print(f"a1111 adapter: {type(ip.model).__name__}, is_instantid, Resampler strict load, tokens {tuple(embeds.cond_emb.shape)}")
    del ip

    class StrictOnMeta(guess.PlugableControlModel):
        def __init__(self, config, state_dict=None):
            torch.nn.Module.__init__(self)
            self.config = config
            with torch.device("meta"):
                self.control_model = cldm.ControlNet(**config)
            self.control_model.load_state_dict(state_dict, strict=True)
            self.gpu_component, self.is_control_lora = None, False

    guess.PlugableControlModel = StrictOnMeta
    cn = guess.build_model_by_guess(_meta_state_dict(identitynet), None, identitynet)
    assert cn.type == ControlModelType.InstantID, cn.type
    cfg = cn.model.config
    assert cfg["context_dim"] == CONTEXT and cfg["adm_in_channels"] == 2816 and cfg["transformer_depth"] == [0, 2, 10], cfg
    print(f"a1111 identitynet: {cn.type}, controlnet_sdxl_config, cldm ControlNet strict load of "
          f"{len(cn.model.control_model.state_dict())} keys")


def check_forge(code: str, adapter: str, identitynet: str) -> None:
    import torch

    sys.argv = sys.argv[:1] + ["--always-cpu", "--unet-in-fp16"]   # backend.args parses them on import
    sys.path.insert(0, code)
    import modules.paths  # noqa: F401  (Forge's own sys.path: repositories, packages_3rdparty)
    sys.path.insert(0, os.path.join(code, "extensions-builtin", "sd_forge_ipadapter"))
    from backend.utils import load_torch_file
    from lib_ipadapter.IPAdapterPlus import IPAdapter
    from modules_forge import supported_controlnet as sc

    sd = load_torch_file(adapter, safe_load=True)   # modules_forge/shared.py try_load_supported_control_model
    # IPAdapterApply.apply_ipadapter with instant_id=True: widths from the file, 16 tokens, is_plus
    # (the Resampler's "latents") overridden by instant_id for the projection
    width = sd["ip_adapter"]["1.to_k_ip.weight"].shape[1]
    ip = IPAdapter(sd, cross_attention_dim=width, output_cross_attention_dim=width, clip_embeddings_dim=None,
                   clip_extra_context_tokens=16, is_sdxl=width == 2048, is_plus=True, is_faceid=False,
                   is_instant_id=True)
    # (faces, 1, 512): apply_ipadapter stacks each face's (1, 512) antelopev2 embedding
    emb = torch.randn(1, 1, FACE_DIM, generator=torch.Generator().manual_seed(1)) * 20
    _check_tokens(*ip.get_image_embeds_instantid(emb))
    print(f"forge adapter: IPAdapter(is_instant_id), Resampler strict load, {len(ip.ip_layers.to_kvs)} to_kv layers")
    del ip, sd

    loaded = {}

    class StrictControlNet(sc.cldm.ControlNet):
        def load_state_dict(self, state_dict, strict=False, **kw):
            loaded["keys"] = len(state_dict)
            return super().load_state_dict(state_dict, strict=True, **kw)

    sc.cldm.ControlNet = StrictControlNet
    printed = io.StringIO()
    with torch.device("meta"), contextlib.redirect_stdout(printed):
        patcher = sc.ControlNetPatcher.try_build_from_state_dict(_meta_state_dict(identitynet), identitynet)
    assert isinstance(patcher, sc.ControlNetPatcher), printed.getvalue()
    assert "leftover keys" not in printed.getvalue(), printed.getvalue()
    print(f"forge identitynet: ControlNetPatcher, diffusers key map without leftovers, cldm ControlNet strict "
          f"load of {loaded['keys']} keys")


def check(host: str, code: str, webui: str) -> None:
    adapter = os.path.join(controlnet_models_dir(webui), ADAPTER_NAME)
    identitynet = os.path.join(controlnet_models_dir(webui), IDENTITYNET_NAME)
    cwd = os.getcwd()
    os.chdir(code)   # host modules resolve some paths from the working directory
    try:
        (check_a1111 if host == "a1111" else check_forge)(code, adapter, identitynet)
    finally:
        os.chdir(cwd)
    _read_back(identitynet, identitynet_shapes())
    print(f"identitynet: {len(identitynet_shapes())} tensors read back, fp16 and finite")


PARTS = ("adapter", "identitynet", "antelopev2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--webui", required=True, help="the webui/ folder the files go into")
    ap.add_argument("--host", required=True, choices=("a1111", "forge", "neo"))
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", nargs="?", const="", default=None, metavar="CODE",
                    help="then load the files with the host's own loader code from CODE (default: WEBUI)")
    a = ap.parse_args(argv)
    a.webui = os.path.abspath(a.webui)
    parts = [p.strip() for p in a.only.split(",") if p.strip()]
    if set(parts) - set(PARTS):
        ap.error(f"unknown part(s) {sorted(set(parts) - set(PARTS))}")
    marker = ("extensions", "sd-webui-controlnet") if a.host == "a1111" else ("extensions-builtin", "sd_forge_ipadapter")
    if not os.path.isdir(os.path.join(a.webui, *marker)):
        ap.error(f"{a.webui} has no {os.path.join(*marker)}: not a {a.host} webui/ folder")
    for part in parts:
        t0 = time.time()
        if part == "adapter":
            write_adapter(a.webui, a.seed)
        elif part == "identitynet":
            write_identitynet(a.webui, a.seed)
        else:
            write_antelopev2(antelopev2_dir(a.webui, a.host))
        print(f"  {part}: {time.time() - t0:.1f} s")
    if a.check is not None:
        if a.host == "neo":
            ap.error("--check knows A1111's and Forge 2's loaders; Neo reads the Forge 2 layout")
        check(a.host, os.path.abspath(a.check or a.webui), a.webui)
        import resource

        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
