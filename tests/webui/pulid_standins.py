"""Random-weight stand-ins for every file sd-webui-controlnet's PuLID path reads, for the opt-in real
A1111 run (tests/webui/test_real_pulid.py). Nothing is downloaded: each file is made here, with the
real name, place and key layout, so the host's own loaders and the whole preprocessor chain run.

    python tests/webui/pulid_standins.py --webui A1111/webui [--facexlib-weights DIR] [--only PART,...]

Run it with the WebUI's own Python (it needs torch, safetensors, onnx and facexlib, as the WebUI
does). PARTs (default all), what each writes, and the code that reads it
(sd-webui-controlnet 1.1.455 = 56cec5b2, facexlib 0.3.0, sd-webui-controlnet-evaclip 39966e79):

  adapter     models/ControlNet/ip-adapter_pulid_sdxl_fp16.safetensors, fp16, PuLID v1 in IP-Adapter
              layout: 110 `image_proj.*` keys (PuLIDEncoder: body.{0,1,3,4,6}, mapping_{i} and
              mapping_patch_{i}.{0,1,3,4,6}, i < 5; weight + bias each; 54.9 M parameters) and 140
              `ip_adapter.{2n+1}.to_{k,v}_ip.weight` (the 70 SDXL attn2, ControlNet's order input 24,
              output 36, middle 10; (640 | 1280, 2048); 340.8 M). "pulid" in the file name makes it
              PuLID, the 2048 context makes it SDXL (scripts/ipadapter/ipadapter_model.py:275-296).
  antelopev2  extensions/sd-webui-controlnet/annotator/downloads/insightface/models/antelopev2/: the
              five files `install_antelopev2` wants (scripts/preprocessor/legacy/processor.py:664-682;
              it downloads only what is missing): the project's synthetic SCRFD detector
              (tests/likeness_models.py: a red square is a face) as scrfd_10g_bnkps.onnx, its
              recogniser as glintr100.onnx and byte copies of it as 1k3d68, 2d106det and genderage
              (insightface keeps one model per task, so the copies are dropped).
  facexlib    webui/models/GFPGAN/ (A1111 points facexlib's loaders there: modules/gfpgan_model.py
              setup_model -> face_restoration_utils.patch_facexlib; plain facexlib would use
              <site-packages>/facexlib/weights, utils/misc.py; both download only a missing file):
              detection_Resnet50_Final.pth, a RetinaFace-ResNet50 whose heads are crafted so
              that every prior of the coarsest level (stride 32, boxes 256 and 512 px) is a face with a
              5-point template and the finer levels find none (FaceRestoreHelper keeps the centre one:
              one 512x512 aligned crop); random parsing_parsenet.pth (FaceRestoreHelper always loads
              it) and parsing_bisenet.pth (the PuLID chain's parser). Legacy (non-zip) pickles:
              A1111's safe unpickler (modules/safe.py) rejects the newer zip entries of torch >= 2.x.
  evaclip     extensions/sd-webui-controlnet-evaclip/models/models--QuanSun--EVA-CLIP/snapshots/<rev>/
              EVA02_CLIP_L_336_psz14_s6B.pt + refs/main, in Hugging Face cache layout: `logit_scale`
              and the 304.4 M-parameter vision tower (`visual.*`, fp16, the model's own init under a
              fixed seed). With HF_HUB_OFFLINE=1 the extension's own
              create_model_and_transforms("EVA02-CLIP-L-14-336", "eva_clip") finds it and loads it
              with strict=False (eva_clip/factory.py:285-289); the text tower (unused by PuLID) stays
              random. A one-key file would load too, but then the vision weights are drawn from the
              process's RNG when the model first loads, so two servers (or one after other
              requests) give other PuLID tokens and other pixels.

Random values, no relation to trained weights: the run checks the plumbing and FastFace's effect on
it, not likeness.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standin_files import CONTEXT, SDXL_ATTN2  # noqa: E402  (CONTEXT: SDXL text context = PuLID token width)
from standin_files import write_antelopev2 as write_antelopev2_pack  # noqa: E402

ADAPTER_NAME = "ip-adapter_pulid_sdxl_fp16.safetensors"
EVA_REPO, EVA_FILE, EVA_REV = "QuanSun/EVA-CLIP", "EVA02_CLIP_L_336_psz14_s6B.pt", "0" * 40
# ArcFace's 5-point template on 112x112 (eyes, nose, mouth corners), relative to the centre, in box units
FACE_TEMPLATE = [(38.29, 51.70), (73.53, 51.50), (56.03, 71.74), (41.55, 92.37), (70.73, 92.20)]


def _linear(sd, prefix, g, out_f, in_f, bias=True):
    import torch
    sd[prefix + ".weight"] = (torch.randn(out_f, in_f, generator=g) * in_f ** -0.5).half()
    if bias:
        sd[prefix + ".bias"] = (torch.randn(out_f, generator=g) * 0.02).half()


def _layer_norm(sd, prefix, dim):
    import torch
    sd[prefix + ".weight"] = torch.ones(dim, dtype=torch.float16)
    sd[prefix + ".bias"] = torch.zeros(dim, dtype=torch.float16)


def _mlp(sd, prefix, g, dims):
    """nn.Sequential(Linear, LayerNorm, LeakyReLU, Linear, LayerNorm, LeakyReLU, Linear): 0, 1, 3, 4, 6."""
    d_in, h1, h2, d_out = dims
    _linear(sd, f"{prefix}.0", g, h1, d_in)
    _layer_norm(sd, f"{prefix}.1", h1)
    _linear(sd, f"{prefix}.3", g, h2, h1)
    _layer_norm(sd, f"{prefix}.4", h2)
    _linear(sd, f"{prefix}.6", g, d_out, h2)


def pulid_state_dict(seed: int = 0) -> dict:
    """The flat fp16 state dict of a PuLID v1 SDXL file (scripts/ipadapter/image_proj_models.py:274-333:
    PuLIDEncoder(width=1280 = 512 antelopev2 + 768 EVA cls, context 2048, 5 tokens), 1024-wide MLPs)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    proj: dict = {}
    _mlp(proj, "body", g, (512 + 768, 1024, 1024, CONTEXT * 5))
    for i in range(5):
        _mlp(proj, f"mapping_{i}", g, (1024, 1024, 1024, CONTEXT))
        _mlp(proj, f"mapping_patch_{i}", g, (1024, 1024, 1024, CONTEXT))
    ip: dict = {}
    for n, width in enumerate(SDXL_ATTN2):
        for kv in ("k", "v"):
            ip[f"{2 * n + 1}.to_{kv}_ip.weight"] = (torch.randn(width, CONTEXT, generator=g) * CONTEXT ** -0.5).half()
    flat = {f"image_proj.{k}": v for k, v in proj.items()}
    flat.update({f"ip_adapter.{k}": v for k, v in ip.items()})
    return flat


def write_adapter(webui: str, seed: int = 0) -> str:
    from safetensors.torch import save_file
    out = os.path.join(webui, "models", "ControlNet", ADAPTER_NAME)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    sd = pulid_state_dict(seed)
    proj = [k for k in sd if k.startswith("image_proj.")]
    params = sum(v.numel() for v in sd.values())
    save_file(sd, out, metadata={"note": "FastFace test stand-in: random weights in PuLID v1 SDXL layout"})
    print(f"adapter: {out}: {len(proj)} image_proj + {len(sd) - len(proj)} ip_adapter keys, "
          f"{params / 1e6:.1f} M params, {os.path.getsize(out) / 2**30:.2f} GiB")
    return out


def write_antelopev2(webui: str) -> str:
    return write_antelopev2_pack(os.path.join(webui, "extensions", "sd-webui-controlnet", "annotator", "downloads",
                                              "insightface", "models", "antelopev2"))


def crafted_retinaface_state_dict(seed: int = 0) -> dict:
    """facexlib's RetinaFace('resnet50') with random weights, except the three heads: their 1×1 convs
    are zero, so every prior gets the bias alone. Level 2 (stride 32, priors 256 and 512 px): class
    logits (−10, +10) = a face, box offsets 0 = the prior itself, landmarks = FACE_TEMPLATE / 0.1
    (decode_landm's variance). Levels 0 and 1: class (+10, −10) = no face."""
    import torch
    from facexlib.detection.retinaface import RetinaFace
    torch.manual_seed(seed)
    net = RetinaFace(network_name="resnet50", half=False, device="cpu")
    marks = torch.tensor([((x - 56.0) / 112.0, (y - 56.0) / 112.0) for x, y in FACE_TEMPLATE]).reshape(-1) / 0.1
    with torch.no_grad():
        for level in range(3):
            face = level == 2
            for head, per_anchor in ((net.ClassHead[level], torch.tensor([-10.0, 10.0] if face else [10.0, -10.0])),
                                     (net.BboxHead[level], torch.zeros(4)),
                                     (net.LandmarkHead[level], marks)):
                conv = head.conv1x1
                conv.weight.zero_()
                conv.bias.copy_(per_anchor.repeat(conv.out_channels // per_anchor.numel()))
    return net.state_dict()


def write_facexlib(weights_dir: str, seed: int = 0) -> str:
    import torch
    from facexlib.parsing.bisenet import BiSeNet
    from facexlib.parsing.parsenet import ParseNet
    os.makedirs(weights_dir, exist_ok=True)
    torch.manual_seed(seed)
    files = {"detection_Resnet50_Final.pth": crafted_retinaface_state_dict(seed),
             "parsing_parsenet.pth": ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(),
             "parsing_bisenet.pth": BiSeNet(num_class=19).state_dict()}
    for name, sd in files.items():
        torch.save(sd, os.path.join(weights_dir, name), _use_new_zipfile_serialization=False)
    print(f"facexlib: {weights_dir}: " + ", ".join(f"{n} {os.path.getsize(os.path.join(weights_dir, n)) / 1e6:.1f} MB" for n in files))
    return weights_dir


def write_evaclip(webui: str, seed: int = 0) -> str:
    import torch
    ext = os.path.join(webui, "extensions", "sd-webui-controlnet-evaclip")
    if ext not in sys.path:
        sys.path.insert(0, ext)
    from eva_clip.factory import create_model   # the extension's vendored eva_clip
    torch.manual_seed(seed)
    model = create_model("EVA02-CLIP-L-14-336", pretrained=None, force_custom_clip=True, device="cpu")
    sd = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()
          if k.startswith("visual.") and "freqs_" not in k}   # rope tables: rebuilt, and dropped on load
    sd["logit_scale"] = model.state_dict()["logit_scale"]
    del model
    repo = os.path.join(ext, "models", "models--" + EVA_REPO.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", EVA_REV)
    os.makedirs(snap, exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(EVA_REV)
    out = os.path.join(snap, EVA_FILE)
    torch.save(sd, out, _use_new_zipfile_serialization=False)
    params = sum(v.numel() for k, v in sd.items() if k.startswith("visual."))
    print(f"evaclip: {out}: {len(sd) - 1} visual keys ({params / 1e6:.1f} M params, fp16) + logit_scale, "
          f"{os.path.getsize(out) / 2**30:.2f} GiB (needs HF_HUB_OFFLINE=1)")
    return out


PARTS = ("adapter", "antelopev2", "facexlib", "evaclip")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--webui", required=True, help="the A1111 webui/ folder (with extensions/sd-webui-controlnet)")
    ap.add_argument("--facexlib-weights", default=None,
                    help="where facexlib's weights go (default WEBUI/models/GFPGAN, where A1111 sends facexlib)")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    parts = [p.strip() for p in a.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {sorted(unknown)}")
    if not os.path.isdir(os.path.join(a.webui, "extensions", "sd-webui-controlnet")):
        ap.error(f"{a.webui} has no extensions/sd-webui-controlnet")
    for part in parts:
        t0 = time.time()
        if part == "adapter":
            write_adapter(a.webui, a.seed)
        elif part == "antelopev2":
            write_antelopev2(a.webui)
        elif part == "facexlib":
            write_facexlib(a.facexlib_weights or os.path.join(a.webui, "models", "GFPGAN"), a.seed)
        else:
            if not os.path.isdir(os.path.join(a.webui, "extensions", "sd-webui-controlnet-evaclip")):
                ap.error("install huchenlei/sd-webui-controlnet-evaclip into extensions/ first")
            write_evaclip(a.webui, a.seed)
        print(f"  {part}: {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
