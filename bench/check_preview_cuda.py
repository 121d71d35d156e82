"""On a CUDA machine: does "Show face attention" keep the face branch's output bit for bit?

Without recording, the hosts call `ip_attention(..., kernels=job.kernels)`, which takes the fused
Triton kernels on CUDA. A `recorder=` forces the torch path (the maps must be materialised), whose
rounding differs. `fastface.hosts.preview.face_attention` therefore keeps the kernel output and
records the maps beside it. This prints, per transform and SDXL-like shape:
  kernels-vs-torch   max |Δ| between the kernel output and the torch path (why the care is needed)
  preview-identical  face_attention(recorder) == ip_attention(kernels) bit for bit
  maps-equal         the recorded maps equal the torch path's own recorded maps (max |Δ|)

    python bench/check_preview_cuda.py
"""
from __future__ import annotations

import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

from fastface.hosts.recording import face_attention  # noqa: E402
from fastface.method.attention import KernelSwitch, ip_attention  # noqa: E402
from fastface.method.transforms import ScalePower, Softmask  # noqa: E402


def main():
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    from fastface.kernels import launch as fused_face

    dev = torch.device("cuda")
    print("device", torch.cuda.get_device_name(0), "| fused kernels available:", fused_face.available(dev))
    shapes = [(6, 10, 4096, 4, 64), (6, 20, 1024, 4, 64), (6, 10, 4096, 16, 64)]   # rows, heads, L, T, d
    transforms = {"none": None, "scale-power": ScalePower(s=1.55, p=1.3),
                  "softmask": Softmask(quantile=0.65, d=5.0, s=1.55, groups=2)}
    bad = 0
    for rows, heads, L, T, d in shapes:
        g = torch.Generator(device=dev).manual_seed(0)
        q = torch.randn(rows, heads, L, d, device=dev, dtype=torch.float16, generator=g)
        k = torch.randn(rows, heads, T, d, device=dev, dtype=torch.float16, generator=g)
        v = torch.randn(rows, heads, T, d, device=dev, dtype=torch.float16, generator=g)
        for name, transform in transforms.items():
            kern = ip_attention(q, k, v, transform, kernels=KernelSwitch())
            torch_maps, preview_maps = [], []
            torch_out = ip_attention(q, k, v, transform, recorder=lambda a, b: torch_maps.append((a.clone(), b)))
            t0 = time.perf_counter()
            prev = face_attention(q, k, v, transform, kernels=KernelSwitch(),
                                  recorder=lambda a, b: preview_maps.append((a.clone(), b)))
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) * 1e3
            same = torch.equal(prev, kern)
            bad += not same
            a0, b0 = torch_maps[0]
            a1, b1 = preview_maps[0]
            dmap = (a0 - a1).abs().max().item()
            dafter = 0.0 if b0 is None else (b0 - b1).abs().max().item()
            print(f"{(rows, heads, L, T, d)} {name:11s} kernels-vs-torch {(kern.float() - torch_out.float()).abs().max().item():.2e}"
                  f"  preview-identical {same}  maps-equal before {dmap:.1e} after {dafter:.1e}  ({dt:.2f} ms)")
    print("ALL IDENTICAL" if not bad else f"{bad} DIFFER")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
