"""Per-attn2-layer host overhead of FastFace's Forge wrapper next to Forge's own IP-Adapter patch.

CPU, one thread, tiny tensors (4 rows × 64 tokens × width 8, a FaceID adapter with 4 face
tokens): the time is almost all Python and kernel launches, i.e. what each of SDXL's 70 attn2
layers adds per UNet call. Forge's patch is the stand-in of tests/hosts/forge_standins.py (the same
call contract and per-layer work: text SDPA, face K/V projections, σ read, face SDPA). Prints
medians of interleaved repeats and the ratio to Forge's own patch.

    OMP_NUM_THREADS=1 python bench/bench_forge_layer.py
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "hosts"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import forge_standins as fs  # noqa: E402
from fastface.hosts.forge.attention import FaceAttn2Patch  # noqa: E402
from fastface.hosts.forge.state import ForgePass  # noqa: E402
from fastface.hosts.common import Job  # noqa: E402
from fastface.presets import PRESETS  # noqa: E402


def main(repeats: int = 7, calls: int = 200) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(4, 64, 8, generator=g), torch.randn(4, 4, 8, generator=g), torch.randn(4, 4, 8, generator=g)
    options = {"cond_or_uncond": [1, 0], "sigmas": torch.tensor([1.0, 1.0]), "n_heads": 2, "dim_head": 4,
               "block": ("input", 1), "block_index": 0, "original_shape": [2, 4, 8, 8]}
    patch = fs.CrossAttentionPatch(0.8, fs.Adapter(), 0, torch.randn(1, 4, 8, generator=g),
                                   torch.randn(1, 4, 8, generator=g), "original", None, 999999999.9, 0.0)
    print(f"{'preset':20s} {'Forge patch µs':>15s} {'FastFace µs':>12s} {'ratio':>6s}")
    with torch.no_grad():
        for preset in ("Stylistic", "Realistic", "Realistic portrait"):
            job = Job(args=PRESETS[preset], host="Forge")
            job.current_pass = ForgePass(index=0, step=1, total=4)
            wrapper = FaceAttn2Patch(patch, job)
            times = {"forge": [], "fastface": []}
            for fn in (patch, wrapper):
                for _ in range(50):
                    fn(q, k, v, options)
            for _ in range(repeats):
                for name, fn in (("forge", patch), ("fastface", wrapper)):
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        fn(q, k, v, options)
                    times[name].append((time.perf_counter() - t0) / calls * 1e6)
            med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
            print(f"{preset:20s} {med['forge']:15.1f} {med['fastface']:12.1f} {med['fastface'] / med['forge']:6.2f}")


if __name__ == "__main__":
    main()
