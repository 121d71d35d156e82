"""What the random-weight stand-in builders (pulid_standins.py, instantid_standins.py) share: the SDXL
attn2 table of IP-Adapter files, the seeded fill rule, a safetensors writer that streams one tensor
at a time, and the fake antelopev2 pack. Importable by the WebUI's own Python (no pytest there).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import shutil
import struct
import sys
import types
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)

CONTEXT = 2048   # SDXL text context = IP-Adapter token width
# SDXL attn2 widths in the order IP-Adapter files number them (`ip_adapter.{2n+1}.to_{k,v}_ip.weight`):
# diffusers' unet.attn_processors order, down_blocks (1: 2 attentions × 2 blocks at 640, 2: 2 × 10 at
# 1280), up_blocks (0: 3 × 10 at 1280, 1: 3 × 2 at 640), mid_block (10 at 1280). sd-webui-controlnet
# (scripts/enums.py transformer_ids: input, output, middle) and the Forge family (set_model_patch_replace
# over input 4, 5, 7, 8, output 0-5, middle) walk the same order.
SDXL_ATTN2 = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10
ANTELOPE_FILES = ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx")


def ip_layer_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """The 140 `ip_adapter.*` keys of an SDXL IP-Adapter: to_k_ip / to_v_ip (width, 2048) per attn2."""
    return [(f"{2 * n + 1}.to_{kv}_ip.weight", (width, CONTEXT)) for n, width in enumerate(SDXL_ATTN2) for kv in "kv"]


def random_fp16(key: str, shape: tuple[int, ...], seed: int):
    """One stand-in tensor, the same for a (key, shape, seed) whatever order tensors are made in (so a
    streamed file equals a dict-built one). The random SDXL checkpoint's rule (the harness's
    make_random_ckpt.py: weights N(0, min(0.02, fan_in^-1/2)), 1-d weights = norms = 1, biases 0), so
    magnitudes match the UNet they are added to and fp16 stays finite; a Resampler's `latents` as its
    own init (randn / sqrt(dim))."""
    import torch

    leaf = key.rsplit(".", 1)[-1]
    if leaf == "bias":
        return torch.zeros(shape, dtype=torch.float16)
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.float16)
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    t = torch.randn(shape, generator=g)
    if leaf == "latents":
        return (t / shape[-1] ** 0.5).half()
    fan_in = math.prod(shape[1:])
    return (t * min(0.02, fan_in ** -0.5)).half()


def write_safetensors_streamed(path: str, shapes: list[tuple[str, tuple[int, ...]]], make, metadata: dict | None = None) -> int:
    """A safetensors file of fp16 tensors written one at a time (`make(key, shape)` → tensor), so the
    peak RAM is one tensor, not the file. The header follows the format (8-byte little-endian length,
    JSON with dtype / shape / data_offsets, padded to 8 bytes); `safetensors` loaders read it as
    their own. Written to PATH.part and renamed, so an interrupted run leaves no half file that a
    host would try to load. Returns the parameter count."""
    assert sys.byteorder == "little"   # the format's byte order is the tensor's memory order here
    header, offset = {}, 0
    for key, shape in shapes:
        size = 2 * math.prod(shape)
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    part = path + ".part"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(part, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key, shape in shapes:
            t = make(key, shape)
            assert t.dtype.is_floating_point and t.element_size() == 2 and tuple(t.shape) == tuple(shape), key
            f.write(t.contiguous().numpy().tobytes())
    os.replace(part, path)
    return sum(math.prod(s) for _, s in shapes)


def likeness_models():
    """tests/likeness_models.py, importable without pytest (it only uses `pytest.importorskip`)."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    if importlib.util.find_spec("pytest") is not None:
        import likeness_models as lm
        return lm
    # the WebUI's venv has no pytest: the one function it needs, only while likeness_models imports
    # (left in sys.modules, a spec-less "pytest" breaks importlib.util.find_spec in transformers)
    shim = types.ModuleType("pytest")
    shim.importorskip = lambda name, **_: importlib.import_module(name)
    sys.modules["pytest"] = shim
    try:
        import likeness_models as lm
    finally:
        del sys.modules["pytest"]
    return lm


def write_antelopev2(folder: str) -> str:
    """The five files insightface's antelopev2 pack has (the hosts download only a missing one): the
    project's synthetic SCRFD detector (tests/likeness_models.py: a square that is red in the order
    the detector's blob sees is a face; dynamic input, so every det size the hosts try works) as
    scrfd_10g_bnkps.onnx, its recogniser as glintr100.onnx and byte copies of the recogniser as
    1k3d68, 2d106det and genderage (insightface keeps one model per task, so the copies are dropped).
    The harness's fake_buffalo.py detector (a face in any image) has a static 640² input and lives
    outside the repository, so it is not used here."""
    lm = likeness_models()
    os.makedirs(folder, exist_ok=True)
    lm.build_detector(os.path.join(folder, "scrfd_10g_bnkps.onnx"))
    rec = lm.build_recognizer(os.path.join(folder, "glintr100.onnx"))
    for name in ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx"):
        shutil.copyfile(rec, os.path.join(folder, name))
    print(f"antelopev2: {folder}: " + ", ".join(f"{n} {os.path.getsize(os.path.join(folder, n))} B" for n in ANTELOPE_FILES))
    return folder
